//! The client side of `flotilla-bench gateway`: streaming `POST /v1/messages`
//! calls (Anthropic's wire format) made by one reqwest client, the same for
//! every path, each timed from just before sending to: the first body byte
//! (TTFB), every server-sent event (its arrival is the arrival of the read
//! that completed it), and the end of the body. Closed loop: `concurrency`
//! workers, each making its calls one after another on its own keep-alive
//! connection; and a hold, `n` calls opened at once and kept open.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::body::Bytes;

use crate::percentile;

/// Where the calls go, and with which credentials.
#[derive(Clone)]
pub struct Target {
    /// `http://HOST:PORT/v1/messages`.
    pub url: String,
    /// `x-api-key` values; worker `i` uses `keys[i % keys.len()]` (the
    /// gateway admits 16 open calls per desktop, so 512 streams need 32).
    pub keys: Arc<Vec<String>>,
}

impl Target {
    fn key(&self, worker: usize) -> &str {
        &self.keys[worker % self.keys.len()]
    }
}

/// The streaming request body for `model`.
pub fn body(model: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "model": model,
            "max_tokens": 1024,
            "stream": true,
            "messages": [{"role": "user", "content": "Say something long."}],
        })
        .to_string(),
    )
}

/// The client every path is measured with: HTTP/1.1, Nagle off, a
/// connection per worker (the pool keeps them all).
pub fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(300))
        .timeout(Duration::from_secs(300))
        .build()
        .context("build the HTTP client")
}

/// One call as the client saw it.
struct Sample {
    ttfb: Duration,
    /// Between consecutive events.
    gaps: Vec<Duration>,
    /// Send → end of body.
    total: Duration,
}

/// What a complete answer ends with (the last word of the script's text and
/// the end event), checked so that a fast error is not a fast stream.
#[derive(Clone)]
pub struct Expect {
    pub last_word: String,
}

impl Expect {
    fn check(&self, body: &[u8]) -> anyhow::Result<()> {
        let text = String::from_utf8_lossy(body);
        if !text.contains(&self.last_word) || !text.contains("message_stop") {
            let tail: String = text
                .chars()
                .rev()
                .take(300)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            bail!(
                "incomplete answer ({} bytes, no {:?} or message_stop): …{tail}",
                body.len(),
                self.last_word
            );
        }
        Ok(())
    }
}

/// Counts event ends (`\n\n`, carriage returns ignored) across reads.
#[derive(Default)]
struct EventSplitter {
    newline: bool,
}

impl EventSplitter {
    fn ends_in(&mut self, chunk: &[u8]) -> usize {
        let mut ends = 0;
        for &byte in chunk {
            match byte {
                b'\r' => {}
                b'\n' if self.newline => {
                    ends += 1;
                    self.newline = false;
                }
                b'\n' => self.newline = true,
                _ => self.newline = false,
            }
        }
        ends
    }
}

/// An answer being read: timing every read.
struct Reading {
    began: Instant,
    first: Option<Instant>,
    last_event: Option<Instant>,
    gaps: Vec<Duration>,
    splitter: EventSplitter,
    body: Vec<u8>,
}

impl Reading {
    fn new(began: Instant) -> Reading {
        Reading {
            began,
            first: None,
            last_event: None,
            gaps: Vec::new(),
            splitter: EventSplitter::default(),
            body: Vec::new(),
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        for _ in 0..self.splitter.ends_in(chunk) {
            if let Some(previous) = self.last_event {
                self.gaps.push(now - previous);
            }
            self.last_event = Some(now);
        }
        self.body.extend_from_slice(chunk);
    }

    fn finish(self, expect: &Expect) -> anyhow::Result<Sample> {
        let end = Instant::now();
        expect.check(&self.body)?;
        let first = self.first.context("an empty answer")?;
        Ok(Sample {
            ttfb: first - self.began,
            gaps: self.gaps,
            total: end - self.began,
        })
    }
}

/// Sends one call; the answer once its headers are in (status checked).
async fn send(
    client: &reqwest::Client,
    target: &Target,
    worker: usize,
    body: Bytes,
) -> anyhow::Result<reqwest::Response> {
    let response = client
        .post(&target.url)
        .header("x-api-key", target.key(worker))
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        bail!(
            "HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        );
    }
    Ok(response)
}

async fn one(
    client: &reqwest::Client,
    target: &Target,
    worker: usize,
    body: Bytes,
    expect: &Expect,
) -> anyhow::Result<Sample> {
    let began = Instant::now();
    let mut response = send(client, target, worker, body).await?;
    let mut reading = Reading::new(began);
    while let Some(chunk) = response.chunk().await? {
        reading.feed(&chunk);
    }
    reading.finish(expect)
}

/// A point's figures, sorted.
#[derive(Default)]
pub struct Summary {
    pub ttfb: Vec<Duration>,
    pub gaps: Vec<Duration>,
    pub totals: Vec<Duration>,
    pub errors: usize,
    pub first_error: Option<String>,
    /// First call sent → last call ended.
    pub elapsed: Duration,
}

impl Summary {
    fn add(&mut self, result: anyhow::Result<Sample>) {
        match result {
            Ok(sample) => {
                self.ttfb.push(sample.ttfb);
                self.gaps.extend(sample.gaps);
                self.totals.push(sample.total);
            }
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }

    fn sort(&mut self) {
        self.ttfb.sort_unstable();
        self.gaps.sort_unstable();
        self.totals.sort_unstable();
    }

    pub fn streams(&self) -> usize {
        self.ttfb.len()
    }

    pub fn per_second(&self) -> f64 {
        self.streams() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn ttfb(&self, fraction: f64) -> Duration {
        percentile(&self.ttfb, fraction)
    }

    pub fn gap(&self, fraction: f64) -> Duration {
        percentile(&self.gaps, fraction)
    }

    pub fn total(&self, fraction: f64) -> Duration {
        percentile(&self.totals, fraction)
    }
}

/// A closed-loop load: `concurrency` workers, `per_worker` calls of `model`
/// each, back to back; worker `i` starts `spread * i / concurrency` after
/// the first, so that streams that all last alike do not stay in step.
pub struct Load<'a> {
    pub concurrency: usize,
    pub per_worker: usize,
    pub model: &'a str,
    pub spread: Duration,
}

/// Runs `load` through a fresh client (so every path starts with no
/// connection).
pub async fn closed_loop(
    target: &Target,
    load: &Load<'_>,
    expect: &Expect,
) -> anyhow::Result<Summary> {
    let client = client()?;
    let body = body(load.model);
    let began = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..load.concurrency {
        let (client, target, body, expect) =
            (client.clone(), target.clone(), body.clone(), expect.clone());
        let start = began + load.spread.mul_f64(worker as f64 / load.concurrency as f64);
        let per_worker = load.per_worker;
        workers.push(tokio::spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            let mut summary = Summary::default();
            for _ in 0..per_worker {
                summary.add(one(&client, &target, worker, body.clone(), &expect).await);
            }
            summary
        }));
    }
    let mut total = Summary::default();
    for worker in workers {
        let mut summary = worker.await.context("a load worker")?;
        total.ttfb.append(&mut summary.ttfb);
        total.gaps.append(&mut summary.gaps);
        total.totals.append(&mut summary.totals);
        total.errors += summary.errors;
        total.first_error = total.first_error.or(summary.first_error);
    }
    total.elapsed = began.elapsed();
    total.sort();
    Ok(total)
}

/// `n` calls opened at once and read to their end; `during` runs once every
/// call has had its first byte (or after `open_timeout`), while they are all
/// still open. Returns how many had opened, and the calls' summary.
pub async fn hold_open<T>(
    target: &Target,
    n: usize,
    model: &str,
    expect: &Expect,
    open_timeout: Duration,
    during: impl std::future::Future<Output = T>,
) -> anyhow::Result<(usize, T, Summary)> {
    let client = client()?;
    let body = body(model);
    let opened = Arc::new(AtomicUsize::new(0));
    let mut calls = Vec::new();
    for worker in 0..n {
        let (client, target, body, expect, opened) = (
            client.clone(),
            target.clone(),
            body.clone(),
            expect.clone(),
            opened.clone(),
        );
        calls.push(tokio::spawn(async move {
            let began = Instant::now();
            let mut response = send(&client, &target, worker, body).await?;
            let mut reading = Reading::new(began);
            let mut counted = false;
            while let Some(chunk) = response.chunk().await? {
                reading.feed(&chunk);
                if !counted {
                    opened.fetch_add(1, Ordering::SeqCst);
                    counted = true;
                }
            }
            reading.finish(&expect)
        }));
    }
    let deadline = Instant::now() + open_timeout;
    while opened.load(Ordering::SeqCst) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_count = opened.load(Ordering::SeqCst);
    let measured = during.await;
    let mut summary = Summary::default();
    for call in calls {
        summary.add(call.await.context("a held call")?);
    }
    summary.sort();
    Ok((open_count, measured, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_across_reads() {
        let mut splitter = EventSplitter::default();
        assert_eq!(splitter.ends_in(b"event: a\ndata: {}\n"), 0);
        assert_eq!(splitter.ends_in(b"\nevent: b\r\ndata: {}\r\n\r\n"), 2);
        assert_eq!(splitter.ends_in(b"data: x\n\ndata: y\n\n"), 2);
    }
}

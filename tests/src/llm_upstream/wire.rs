//! What the renderers hand the server: a [`Reply`] (status, headers, the body as
//! frames, the pause between them, whether the connection is cut after the
//! last), built from a script's frames and its [`Ending`]; and the small pieces
//! every provider's format shares (server-sent events, JSON bodies).

use std::time::Duration;

use axum::body::Bytes;
use serde_json::Value;

use super::scripts::{Ending, Script};

pub const SSE: &str = "text/event-stream; charset=utf-8";
pub const JSON: &str = "application/json";

/// A fixed `created` time (2026-01-01T00:00:00Z), so answers are the same each run.
pub const CREATED: u64 = 1_767_225_600;

/// The request being answered, as the renderers need it.
#[derive(Clone, Debug)]
pub struct Call {
    /// Its position in the upstream's record: ids are made from it.
    pub index: usize,
    pub model: String,
    pub stream: bool,
    /// OpenAI Chat Completions `stream_options.include_usage`.
    pub include_usage: bool,
}

impl Call {
    /// A deterministic id with `prefix`, e.g. `msg_scripted0003`.
    pub fn id(&self, prefix: &str) -> String {
        format!("{prefix}scripted{:04}", self.index)
    }
}

/// One frame of a stream; `delta` marks the content deltas an early
/// [`Ending`] counts.
pub struct Frame {
    pub bytes: Bytes,
    pub delta: bool,
}

impl Frame {
    pub fn event(bytes: Bytes) -> Frame {
        Frame {
            bytes,
            delta: false,
        }
    }

    pub fn delta(bytes: Bytes) -> Frame {
        Frame { bytes, delta: true }
    }
}

/// An answer as the server sends it.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub frames: Vec<Bytes>,
    pub delay: Duration,
    /// Cut the connection after the last frame instead of ending the body.
    pub abort: bool,
}

impl Reply {
    /// A whole JSON body.
    pub fn json(status: u16, body: &Value, mut headers: Vec<(&'static str, String)>) -> Reply {
        headers.push(("content-type", JSON.to_owned()));
        Reply {
            status,
            headers,
            frames: vec![Bytes::from(body.to_string())],
            delay: Duration::ZERO,
            abort: false,
        }
    }

    /// The non-streaming answer of `script`: `body`, or for an abrupt script
    /// half of it and the cut. (Scripts that fail mid-stream answer their
    /// status error before this is asked for.)
    pub fn whole(script: &Script, body: &Value, headers: Vec<(&'static str, String)>) -> Reply {
        let mut reply = Reply::json(200, body, headers);
        reply.delay = script.chunk_delay;
        if let Ending::AbruptAfter(_) = script.ending {
            let full = reply.frames.remove(0);
            reply.frames.push(full.slice(..full.len() / 2));
            reply.abort = true;
        }
        reply
    }

    /// A 200 event stream of `frames`, cut as `script` ends: after its error
    /// point `error_frame(frames kept)` is the last frame; after its abrupt
    /// point the connection is cut.
    pub fn stream(
        script: &Script,
        frames: Vec<Frame>,
        error_frame: impl FnOnce(usize) -> Bytes,
        mut headers: Vec<(&'static str, String)>,
    ) -> Reply {
        headers.push(("content-type", SSE.to_owned()));
        headers.push(("cache-control", "no-cache".to_owned()));
        let (cut_after, abort) = match script.ending {
            Ending::Complete => (None, false),
            Ending::ErrorAfter(deltas) => (Some(deltas), false),
            Ending::AbruptAfter(deltas) => (Some(deltas), true),
        };
        let mut kept = Vec::new();
        let mut deltas = 0;
        for frame in frames {
            if cut_after.is_some_and(|limit| deltas >= limit) {
                break;
            }
            deltas += usize::from(frame.delta);
            kept.push(frame.bytes);
        }
        if cut_after.is_some() && !abort {
            let error = error_frame(kept.len());
            kept.push(error);
        }
        Reply {
            status: 200,
            headers,
            frames: kept,
            delay: script.chunk_delay,
            abort,
        }
    }
}

/// A server-sent event: `event: NAME` (when named) and one `data:` line.
pub fn sse(event: Option<&str>, data: &Value) -> Bytes {
    match event {
        Some(name) => Bytes::from(format!("event: {name}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}

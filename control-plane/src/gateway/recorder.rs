//! Settled calls go to the log in batches: one `RecordUsage` entry carries up
//! to [`MAX_BATCH`] calls, written every [`FLUSH_EVERY`] while there are any.
//! A batch keeps its request id across retries, so a write that committed but
//! whose answer was lost is not counted twice; a batch is dropped only once
//! committed. When a batch commits and this server has applied it, the
//! ledger stops holding its usage.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::budget::{Held, Ledger};
use crate::control::ControlPlane;
use crate::types::{Command, UsageRecord};

pub const MAX_BATCH: usize = 1000;
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Where settled calls are sent.
#[derive(Debug, Clone)]
pub struct Recorder {
    sender: mpsc::UnboundedSender<UsageRecord>,
}

impl Recorder {
    /// Starts the writer; it ends when every `Recorder` is dropped and the
    /// last batch is committed (or the server stops).
    pub fn start(control: Arc<ControlPlane>, ledger: Arc<Ledger>) -> Recorder {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(control, ledger, receiver));
        Recorder { sender }
    }

    pub fn record(&self, record: UsageRecord) {
        if let Err(lost) = self.sender.send(record) {
            tracing::error!(record = ?lost.0, "usage recorder has stopped; a call's usage is lost");
        }
    }
}

async fn write_batches(
    control: Arc<ControlPlane>,
    ledger: Arc<Ledger>,
    mut receiver: mpsc::UnboundedReceiver<UsageRecord>,
) {
    let mut batch = Vec::new();
    loop {
        if batch.is_empty() {
            match receiver.recv().await {
                Some(record) => batch.push(record),
                None => return,
            }
        }
        tokio::time::sleep(FLUSH_EVERY).await;
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        let request = control.request(
            Command::RecordUsage {
                records: batch.clone(),
            },
            None,
        );
        let mut backoff = Duration::from_millis(100);
        loop {
            match control.write(request.clone()).await {
                Ok(response) => {
                    wait_applied(&control, response.revision).await;
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, calls = batch.len(), "recording usage failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = control.stopped() => {
                            tracing::error!(calls = batch.len(), "server stopping: usage of these calls is lost");
                            return;
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        for record in batch.drain(..) {
            ledger.committed(
                &record.task_id,
                record.project.as_deref(),
                Held::of(&record.usage),
            );
        }
    }
}

/// Until this server's state has applied `revision` (a follower lags the
/// leader's answer briefly), so budgets never see usage neither held nor
/// committed.
async fn wait_applied(control: &ControlPlane, revision: u64) {
    let mut delay = Duration::from_millis(1);
    for _ in 0..200 {
        if control.state.last_applied_index() >= revision {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

//! Group commit for client writes: concurrent writes on the leader are packed
//! into one log entry ([`Proposal`]).
//!
//! openraft 0.9 appends each client write as its own entry and waits for that
//! entry's fsync before taking the next, so one entry per write would cost
//! one fsync per write on every server. The proposer keeps at most
//! [`MAX_IN_FLIGHT`] proposals inside Raft; while they commit, new writes
//! queue up and leave together in the next proposal. Under light load a write
//! goes out alone at once; under heavy load a batch grows to absorb it.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::ApiError;
use crate::types::{ClientRequest, ClientResponse, NodeId, Proposal, Raft};

/// Proposals inside Raft at once. Two lets one batch fill while another
/// commits.
pub const MAX_IN_FLIGHT: usize = 2;
/// Weight of one proposal at most: requests, counting a batch command
/// (placements, reports) as one per item it carries. Keeps every entry small
/// enough to replicate within one AppendEntries timeout.
pub const MAX_BATCH: usize = 1024;

/// Why a proposal was not committed here.
#[derive(Debug, Clone)]
pub enum ProposeError {
    /// This server does not lead; the leader, if known.
    NotLeader(Option<(NodeId, BasicNode)>),
    Failed(ApiError),
}

struct Pending {
    request: ClientRequest,
    reply: oneshot::Sender<Result<ClientResponse, ProposeError>>,
}

#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the batching loop for `raft`; it ends when every handle is gone.
    pub fn start(raft: Raft) -> Proposer {
        let (queue, requests) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(run(raft, requests));
        Proposer { queue }
    }

    /// Commits `request` in some proposal and returns its answer.
    pub async fn propose(&self, request: ClientRequest) -> Result<ClientResponse, ProposeError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || ProposeError::Failed(ApiError::unavailable("the server is shutting down"));
        self.queue
            .send(Pending { request, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(raft: Raft, mut requests: mpsc::Receiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // A request that did not fit the previous batch opens the next one.
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(pending) => pending,
            None => match requests.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        // Wait for a slot first: writes arriving meanwhile join this batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut weight = first.request.command.weight();
        let mut batch = vec![first];
        while weight < MAX_BATCH {
            match requests.try_recv() {
                Ok(pending) => {
                    let next = pending.request.command.weight();
                    if weight + next > MAX_BATCH {
                        carried = Some(pending);
                        break;
                    }
                    weight += next;
                    batch.push(pending);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let (requests, replies): (Vec<ClientRequest>, Vec<_>) = batch
                .into_iter()
                .map(|pending| (pending.request, pending.reply))
                .unzip();
            let count = requests.len();
            let result = raft.client_write(Proposal { requests }).await;
            drop(permit);
            match result {
                Ok(written) if written.data.responses.len() == count => {
                    for (reply, response) in replies.into_iter().zip(written.data.responses) {
                        let _ = reply.send(Ok(response));
                    }
                }
                Ok(written) => {
                    let error = ProposeError::Failed(ApiError::internal(format!(
                        "state machine answered {} responses for {count} requests",
                        written.data.responses.len()
                    )));
                    send_all(replies, error);
                }
                Err(error) => send_all(replies, propose_error(error)),
            }
        });
    }
}

fn send_all(
    replies: Vec<oneshot::Sender<Result<ClientResponse, ProposeError>>>,
    error: ProposeError,
) {
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}

fn propose_error(
    error: RaftError<crate::types::NodeId, ClientWriteError<crate::types::NodeId, BasicNode>>,
) -> ProposeError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            ProposeError::NotLeader(forward.leader_id.zip(forward.leader_node))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(error)) => {
            ProposeError::Failed(ApiError::internal(error.to_string()))
        }
        RaftError::Fatal(fatal) => {
            ProposeError::Failed(ApiError::unavailable(format!("raft stopped: {fatal}")))
        }
    }
}

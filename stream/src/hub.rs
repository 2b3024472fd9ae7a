//! One desktop's fan-out: frames are published once and every viewer
//! gets them through its own small queue.
//!
//! - A viewer joins waiting for a keyframe (it cannot decode anything
//!   else first), and joining asks the encoder for one at once.
//! - A viewer whose queue is full (it reads slower than frames come) has
//!   its queue emptied and waits for the next keyframe, which is asked
//!   for: its latency never grows past [`QUEUE`] frames, and the others
//!   are never held up by it.
//! - Text events (who has control) go to every viewer, never dropped
//!   behind frames but bounded too.
//! - One viewer at a time may hold control (input); taking it is
//!   announced to everyone.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

/// Frames queued per viewer.
pub const QUEUE: usize = 4;
/// Text events queued per viewer.
const EVENTS: usize = 32;

/// What a viewer receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// One frame message ([`crate::frame`]).
    Frame { data: Arc<Vec<u8>>, keyframe: bool },
    /// A JSON event.
    Text(String),
}

#[derive(Default)]
struct QueueState {
    frames: VecDeque<Message>,
    events: VecDeque<Message>,
    waiting_keyframe: bool,
    dropped: u64,
    closed: bool,
}

struct Queue {
    state: Mutex<QueueState>,
    notify: Notify,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
struct Inner {
    viewers: HashMap<u64, (String, Arc<Queue>)>,
    next_id: u64,
    controller: Option<u64>,
    keyframe_wanted: bool,
    last_drop: Option<Instant>,
    closed: bool,
}

/// One desktop's hub.
#[derive(Default)]
pub struct Hub {
    inner: Mutex<Inner>,
    /// Wakes whoever feeds the hub: a keyframe is wanted, or the viewers
    /// changed.
    pub changed: Notify,
}

/// A viewer's end. Dropping it leaves the hub (and gives up control).
pub struct Viewer {
    hub: Arc<Hub>,
    id: u64,
    queue: Arc<Queue>,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new viewer called `name` (shown to others when it takes
    /// control); it waits for a keyframe, which is asked for.
    pub fn join(self: &Arc<Hub>, name: &str) -> Viewer {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                waiting_keyframe: true,
                ..QueueState::default()
            }),
            notify: Notify::new(),
        });
        let id = {
            let mut inner = self.lock();
            inner.next_id += 1;
            let id = inner.next_id;
            inner.viewers.insert(id, (name.to_owned(), queue.clone()));
            inner.keyframe_wanted = true;
            let event = control_event(&inner);
            push_event(&queue, event);
            id
        };
        self.changed.notify_one();
        Viewer {
            hub: self.clone(),
            id,
            queue,
        }
    }

    /// How many viewers there are.
    pub fn viewers(&self) -> usize {
        self.lock().viewers.len()
    }

    /// Whether a keyframe was asked for since the last call (and forgets
    /// the ask).
    pub fn take_keyframe_request(&self) -> bool {
        std::mem::take(&mut self.lock().keyframe_wanted)
    }

    /// Asks the feeder for a keyframe (a viewer's decoder failed).
    pub fn request_keyframe(&self) {
        self.lock().keyframe_wanted = true;
        self.changed.notify_one();
    }

    /// When a viewer last fell behind and lost frames.
    pub fn last_drop(&self) -> Option<Instant> {
        self.lock().last_drop
    }

    /// Sends a frame to every viewer that can use it.
    pub fn publish(&self, data: Arc<Vec<u8>>, keyframe: bool) {
        let mut inner = self.lock();
        let mut dropped = false;
        for (_, queue) in inner.viewers.values() {
            let mut state = queue.lock();
            if state.waiting_keyframe && !keyframe {
                continue;
            }
            if state.frames.len() >= QUEUE {
                // Behind: what it has is stale. Start again at a keyframe.
                state.dropped += state.frames.len() as u64;
                state.frames.clear();
                dropped = true;
                if !keyframe {
                    state.waiting_keyframe = true;
                    state.dropped += 1;
                    continue;
                }
            }
            state.waiting_keyframe = false;
            state.frames.push_back(Message::Frame {
                data: data.clone(),
                keyframe,
            });
            drop(state);
            queue.notify.notify_one();
        }
        if dropped {
            inner.keyframe_wanted = true;
            inner.last_drop = Some(Instant::now());
            drop(inner);
            self.changed.notify_one();
        }
    }

    /// Sends a text event to every viewer.
    pub fn broadcast(&self, event: &str) {
        let inner = self.lock();
        for (_, queue) in inner.viewers.values() {
            push_event(queue, event.to_owned());
        }
    }

    /// Ends the stream: every viewer's `next` returns None once its queue
    /// is read.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        for (_, queue) in inner.viewers.values() {
            queue.lock().closed = true;
            queue.notify.notify_one();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Who holds control: (viewer id, name).
    pub fn controller(&self) -> Option<(u64, String)> {
        let inner = self.lock();
        let id = inner.controller?;
        Some((id, inner.viewers.get(&id)?.0.clone()))
    }
}

fn control_event(inner: &Inner) -> String {
    let holder = inner
        .controller
        .and_then(|id| inner.viewers.get(&id))
        .map(|(name, _)| name.clone());
    serde_json::json!({
        "type": "control",
        "holder": holder,
        "viewers": inner.viewers.len(),
    })
    .to_string()
}

fn push_event(queue: &Queue, event: String) {
    let mut state = queue.lock();
    if state.events.len() >= EVENTS {
        state.events.pop_front();
    }
    state.events.push_back(Message::Text(event));
    drop(state);
    queue.notify.notify_one();
}

impl Viewer {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next message: events first, then frames in order; None once
    /// the hub closed and everything was read.
    pub async fn next(&self) -> Option<Message> {
        loop {
            {
                let mut state = self.queue.lock();
                if let Some(event) = state.events.pop_front() {
                    return Some(event);
                }
                if let Some(frame) = state.frames.pop_front() {
                    return Some(frame);
                }
                if state.closed {
                    return None;
                }
            }
            self.queue.notify.notified().await;
        }
    }

    /// Frames this viewer lost by falling behind.
    pub fn dropped(&self) -> u64 {
        self.queue.lock().dropped
    }

    /// Whether this viewer holds control.
    pub fn has_control(&self) -> bool {
        self.hub.lock().controller == Some(self.id)
    }

    /// Takes control (from whoever had it); everyone is told.
    pub fn take_control(&self) {
        let event = {
            let mut inner = self.hub.lock();
            inner.controller = Some(self.id);
            control_event(&inner)
        };
        self.hub.broadcast(&event);
    }

    /// Hands control back, if this viewer had it; everyone is told.
    /// Returns whether it had it (its held keys must then be released).
    pub fn release_control(&self) -> bool {
        let event = {
            let mut inner = self.hub.lock();
            if inner.controller != Some(self.id) {
                return false;
            }
            inner.controller = None;
            control_event(&inner)
        };
        self.hub.broadcast(&event);
        true
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let event = {
            let mut inner = self.hub.lock();
            inner.viewers.remove(&self.id);
            if inner.controller == Some(self.id) {
                inner.controller = None;
            }
            control_event(&inner)
        };
        self.hub.broadcast(&event);
        self.hub.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8, keyframe: bool) -> (Arc<Vec<u8>>, bool) {
        (Arc::new(vec![n]), keyframe)
    }

    async fn frames(viewer: &Viewer, count: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < count {
            match viewer.next().await {
                Some(Message::Frame { data, .. }) => out.push(data[0]),
                Some(Message::Text(_)) => {}
                None => break,
            }
        }
        out
    }

    #[tokio::test]
    async fn a_joining_viewer_starts_at_a_keyframe_and_a_slow_one_skips_to_the_next() {
        let hub = Hub::new();
        let fast = hub.join("fast");
        assert!(hub.take_keyframe_request(), "joining asks for a keyframe");
        let (d, k) = frame(1, false);
        hub.publish(d, k); // not decodable yet: skipped
        let (d, k) = frame(2, true);
        hub.publish(d, k);
        let (d, k) = frame(3, false);
        hub.publish(d, k);
        assert_eq!(frames(&fast, 2).await, vec![2, 3]);

        let slow = hub.join("slow");
        assert!(hub.take_keyframe_request());
        let (d, k) = frame(4, true);
        hub.publish(d, k);
        // The slow viewer reads nothing while frames 5..=12 come; the fast
        // one reads each.
        let mut fast_seen = frames(&fast, 1).await;
        for n in 5..=12 {
            let (d, k) = frame(n, false);
            hub.publish(d, k);
            fast_seen.extend(frames(&fast, 1).await);
        }
        assert_eq!(fast_seen, (4..=12).collect::<Vec<_>>());
        assert!(slow.dropped() > 0);
        assert!(hub.take_keyframe_request(), "a drop asks for a keyframe");
        assert!(hub.last_drop().is_some());
        // It never holds more than QUEUE frames, and resumes at a keyframe.
        let (d, k) = frame(13, true);
        hub.publish(d, k);
        let seen = frames(&slow, 1).await;
        assert_eq!(
            seen,
            vec![13],
            "after the drop the slow viewer resumes at the keyframe"
        );
    }

    #[tokio::test]
    async fn control_is_held_by_one_viewer_and_announced() {
        let hub = Hub::new();
        let a = hub.join("alice");
        let b = hub.join("bob");
        a.take_control();
        assert!(a.has_control() && !b.has_control());
        assert_eq!(hub.controller().map(|c| c.1), Some("alice".to_owned()));
        // bob sees the announcement.
        let mut last = None;
        while let Some(Message::Text(text)) =
            tokio::time::timeout(std::time::Duration::from_millis(50), b.next())
                .await
                .ok()
                .flatten()
        {
            last = Some(text);
        }
        let last: serde_json::Value = serde_json::from_str(&last.unwrap()).unwrap();
        assert_eq!(last["holder"], "alice");
        b.take_control();
        assert!(!a.has_control());
        assert!(!a.release_control());
        drop(b);
        assert_eq!(hub.controller(), None, "leaving gives control back");
        hub.close();
        while a.next().await.is_some() {}
    }
}

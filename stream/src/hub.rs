//! One desktop's fan-out: frames are published once and every viewer
//! gets them through its own small queue, paced by its acknowledgements.
//!
//! - A viewer joins waiting for a keyframe (it cannot decode anything
//!   else first), and joining asks the encoder for one at once.
//! - A viewer acknowledges the frames it received (by sequence); at most
//!   [`WINDOW`] frames are ever sent and not yet acknowledged. TCP's own
//!   buffers (megabytes on a fast link, seconds of video on a slow one)
//!   therefore never hold more than that window: a slow link cannot
//!   build up lag (Helix's 30-45 s).
//! - Behind the window each viewer has a queue of [`QUEUE`] frames. A
//!   viewer whose queue is full (it drains slower than frames come) has
//!   it emptied, is told how many frames it skipped, and waits for the
//!   next keyframe: its latency never grows past `WINDOW + QUEUE` frames,
//!   and the others are never held up by it.
//! - Keyframes cost every viewer bandwidth, so the asks are paced: a
//!   joining viewer's at most every [`JOIN_KEYFRAME_GAP`], a skipping or
//!   failing viewer's at most every [`DROP_KEYFRAME_GAP`].
//! - Text events (who has control, skipped frames, the stream's rate) go
//!   to every viewer, outside the window, never dropped behind frames but
//!   bounded too.
//! - One viewer at a time may hold control (input); taking it is
//!   announced to everyone.
//! - [`Hub::stats`] tells the feeder what each viewer drained and lost,
//!   so it can fit the encoder's rate to the slowest viewer that keeps up.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Frames queued per viewer, behind its window.
pub const QUEUE: usize = 4;
/// Frames sent to a viewer and not yet acknowledged, at most. Six frames
/// at 30 per second cover a 200 ms round trip at full rate.
pub const WINDOW: usize = 6;
/// Text events queued per viewer.
const EVENTS: usize = 32;
/// Shortest time between keyframes asked for by joining viewers.
pub const JOIN_KEYFRAME_GAP: Duration = Duration::from_millis(100);
/// Shortest time between keyframes asked for by viewers that skipped
/// frames or whose decoder failed.
pub const DROP_KEYFRAME_GAP: Duration = Duration::from_secs(1);

/// What a viewer receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// One frame message ([`crate::frame`]).
    Frame {
        data: Arc<Vec<u8>>,
        keyframe: bool,
        sequence: u64,
    },
    /// A JSON event.
    Text(String),
}

#[derive(Default)]
struct QueueState {
    frames: VecDeque<Message>,
    events: VecDeque<Message>,
    /// Sent, not yet acknowledged: (sequence, bytes).
    in_flight: VecDeque<(u64, usize)>,
    waiting_keyframe: bool,
    dropped: u64,
    acked_frames: u64,
    acked_bytes: u64,
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

/// A pending ask for a keyframe and who made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum KeyframeAsk {
    /// A viewer skipped frames or its decoder failed.
    Recover,
    /// A viewer joined.
    Join,
}

#[derive(Default)]
struct Inner {
    viewers: HashMap<u64, (String, Arc<Queue>)>,
    next_id: u64,
    controller: Option<u64>,
    keyframe_wanted: Option<KeyframeAsk>,
    /// When a keyframe was last asked of the encoder.
    keyframe_asked: Option<Instant>,
    /// Bytes of frames published so far.
    published_bytes: u64,
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

/// What one viewer has drained and lost since it joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewerStats {
    pub id: u64,
    pub acked_frames: u64,
    pub acked_bytes: u64,
    pub dropped: u64,
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
            inner.keyframe_wanted = inner.keyframe_wanted.max(Some(KeyframeAsk::Join));
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

    /// When the pending keyframe ask may go to the encoder (now or
    /// later, by the gaps above); None when nothing is asked.
    pub fn keyframe_due(&self) -> Option<Instant> {
        let inner = self.lock();
        let gap = match inner.keyframe_wanted? {
            KeyframeAsk::Join => JOIN_KEYFRAME_GAP,
            KeyframeAsk::Recover => DROP_KEYFRAME_GAP,
        };
        Some(
            inner
                .keyframe_asked
                .map_or_else(Instant::now, |at| at + gap),
        )
    }

    /// Whether a keyframe should be asked of the encoder now; if so the
    /// ask is taken (and the time noted).
    pub fn take_keyframe_request(&self) -> bool {
        let due = self.keyframe_due();
        let mut inner = self.lock();
        if due.is_none_or(|at| at > Instant::now()) {
            return false;
        }
        inner.keyframe_wanted = None;
        inner.keyframe_asked = Some(Instant::now());
        true
    }

    /// Asks the feeder for a keyframe (a viewer's decoder failed); paced
    /// by [`DROP_KEYFRAME_GAP`].
    pub fn request_keyframe(&self) {
        {
            let mut inner = self.lock();
            inner.keyframe_wanted = inner.keyframe_wanted.max(Some(KeyframeAsk::Recover));
        }
        self.changed.notify_one();
    }

    /// Bytes of frames published so far.
    pub fn published_bytes(&self) -> u64 {
        self.lock().published_bytes
    }

    /// Every viewer's counts.
    pub fn stats(&self) -> Vec<ViewerStats> {
        let inner = self.lock();
        inner
            .viewers
            .iter()
            .map(|(id, (_, queue))| {
                let state = queue.lock();
                ViewerStats {
                    id: *id,
                    acked_frames: state.acked_frames,
                    acked_bytes: state.acked_bytes,
                    dropped: state.dropped,
                }
            })
            .collect()
    }

    /// Sends a frame to every viewer that can use it.
    pub fn publish(&self, data: Arc<Vec<u8>>, keyframe: bool, sequence: u64) {
        let mut inner = self.lock();
        inner.published_bytes += data.len() as u64;
        let mut dropped = false;
        for (_, queue) in inner.viewers.values() {
            let mut state = queue.lock();
            if state.waiting_keyframe && !keyframe {
                continue;
            }
            if state.frames.len() >= QUEUE {
                // Behind: what it has is stale. Start again at a keyframe.
                let mut skipped = state.frames.len() as u64;
                state.frames.clear();
                dropped = true;
                if !keyframe {
                    state.waiting_keyframe = true;
                    skipped += 1;
                }
                state.dropped += skipped;
                if state.events.len() >= EVENTS {
                    state.events.pop_front();
                }
                state.events.push_back(Message::Text(
                    serde_json::json!({"type": "skipped", "frames": skipped}).to_string(),
                ));
                if !keyframe {
                    drop(state);
                    queue.notify.notify_one();
                    continue;
                }
            }
            state.waiting_keyframe = false;
            state.frames.push_back(Message::Frame {
                data: data.clone(),
                keyframe,
                sequence,
            });
            drop(state);
            queue.notify.notify_one();
        }
        if dropped {
            inner.keyframe_wanted = inner.keyframe_wanted.max(Some(KeyframeAsk::Recover));
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

    /// The next message: events first, then frames in order while fewer
    /// than [`WINDOW`] are unacknowledged; None once the hub closed and
    /// everything that may be sent was read.
    pub async fn next(&self) -> Option<Message> {
        loop {
            {
                let mut state = self.queue.lock();
                if let Some(event) = state.events.pop_front() {
                    return Some(event);
                }
                if state.in_flight.len() < WINDOW {
                    if let Some(frame) = state.frames.pop_front() {
                        if let Message::Frame { data, sequence, .. } = &frame {
                            let entry = (*sequence, data.len());
                            state.in_flight.push_back(entry);
                        }
                        return Some(frame);
                    }
                }
                if state.closed {
                    return None;
                }
            }
            self.queue.notify.notified().await;
        }
    }

    /// The viewer received every frame up to `sequence`: they leave its
    /// window. Sequences it was never sent change nothing.
    pub fn ack(&self, sequence: u64) {
        let mut state = self.queue.lock();
        let mut freed = false;
        while state.in_flight.front().is_some_and(|(s, _)| *s <= sequence) {
            let (_, bytes) = state.in_flight.pop_front().expect("checked");
            state.acked_frames += 1;
            state.acked_bytes += bytes as u64;
            freed = true;
        }
        drop(state);
        if freed {
            self.queue.notify.notify_one();
        }
    }

    /// Frames sent to this viewer and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.queue.lock().in_flight.len()
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
    use futures::FutureExt;

    fn publish(hub: &Hub, n: u8, keyframe: bool) {
        hub.publish(Arc::new(vec![n]), keyframe, u64::from(n));
    }

    /// The next `count` frames' first bytes, each acknowledged.
    async fn frames(viewer: &Viewer, count: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < count {
            match viewer.next().await {
                Some(Message::Frame { data, sequence, .. }) => {
                    out.push(data[0]);
                    viewer.ack(sequence);
                }
                Some(Message::Text(_)) => {}
                None => break,
            }
        }
        out
    }

    /// Whatever the viewer may be sent now (not acknowledged).
    fn ready(viewer: &Viewer) -> (Vec<u8>, Vec<serde_json::Value>) {
        let (mut frames, mut events) = (Vec::new(), Vec::new());
        while let Some(Some(message)) = viewer.next().now_or_never() {
            match message {
                Message::Frame { data, .. } => frames.push(data[0]),
                Message::Text(text) => events.push(serde_json::from_str(&text).unwrap()),
            }
        }
        (frames, events)
    }

    #[tokio::test]
    async fn a_joining_viewer_starts_at_a_keyframe_and_a_slow_one_skips_to_the_next() {
        let hub = Hub::new();
        let fast = hub.join("fast");
        assert!(hub.take_keyframe_request(), "joining asks for a keyframe");
        publish(&hub, 1, false); // not decodable yet: skipped
        publish(&hub, 2, true);
        publish(&hub, 3, false);
        assert_eq!(frames(&fast, 2).await, vec![2, 3]);

        let slow = hub.join("slow");
        assert!(hub.keyframe_due().is_some(), "joining asks for a keyframe");
        publish(&hub, 4, true);
        // The slow viewer reads nothing while frames 5..=12 come; the fast
        // one reads each.
        let mut fast_seen = frames(&fast, 1).await;
        for n in 5..=12 {
            publish(&hub, n, false);
            fast_seen.extend(frames(&fast, 1).await);
        }
        assert_eq!(fast_seen, (4..=12).collect::<Vec<_>>());
        assert!(slow.dropped() > 0);
        // It never holds more than QUEUE frames, was told what it
        // skipped, and resumes at a keyframe.
        publish(&hub, 13, true);
        let (seen, events) = ready(&slow);
        assert!(events.iter().any(|e| e["type"] == "skipped"), "{events:?}");
        assert_eq!(
            seen,
            vec![13],
            "after the drop the slow viewer resumes at the keyframe"
        );
        assert_eq!(fast.dropped(), 0);
    }

    #[tokio::test]
    async fn a_viewer_that_does_not_acknowledge_gets_a_window_of_frames_then_the_newest() {
        let hub = Hub::new();
        let viewer = hub.join("far away");
        publish(&hub, 1, true);
        let mut sent = ready(&viewer).0;
        for n in 2..=20 {
            publish(&hub, n, false);
            sent.extend(ready(&viewer).0);
        }
        // Only WINDOW frames are sent unacknowledged; the rest waited,
        // overflowed and were dropped.
        assert_eq!(sent, (1..=WINDOW as u8).collect::<Vec<_>>());
        assert_eq!(viewer.in_flight(), WINDOW);
        assert!(viewer.dropped() > 0);
        // Acknowledging an unknown (older) sequence frees nothing.
        viewer.ack(0);
        assert_eq!(ready(&viewer).0, Vec::<u8>::new());
        // It catches up: the next thing it gets is the next keyframe, not
        // the stale frames.
        viewer.ack(WINDOW as u64);
        assert_eq!(viewer.in_flight(), 0);
        publish(&hub, 21, false);
        publish(&hub, 22, true);
        publish(&hub, 23, false);
        assert_eq!(ready(&viewer).0, vec![22, 23]);
        let stats = hub.stats();
        assert_eq!(stats.len(), 1);
        assert_eq!(stats[0].acked_frames, WINDOW as u64);
        assert_eq!(stats[0].acked_bytes, WINDOW as u64);
        // A closed hub ends the viewer even with frames unacknowledged.
        hub.close();
        assert_eq!(ready(&viewer).0, Vec::<u8>::new());
        assert!(viewer.next().await.is_none());
    }

    #[tokio::test]
    async fn keyframe_asks_are_paced() {
        let hub = Hub::new();
        let _a = hub.join("a");
        assert!(hub.take_keyframe_request(), "the first join: at once");
        assert!(!hub.take_keyframe_request(), "asked once");
        let _b = hub.join("b");
        let due = hub.keyframe_due().expect("b's join is pending");
        assert!(due > Instant::now() && due <= Instant::now() + JOIN_KEYFRAME_GAP);
        // Until the moment the hub gave, and not a moment longer.
        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        assert!(hub.take_keyframe_request());
        // A decoder failure waits the longer gap.
        hub.request_keyframe();
        assert!(!hub.take_keyframe_request());
        let due = hub.keyframe_due().expect("pending");
        assert!(due > Instant::now() + DROP_KEYFRAME_GAP / 2);
    }

    #[tokio::test]
    async fn control_is_held_by_one_viewer_and_announced() {
        let hub = Hub::new();
        let a = hub.join("alice");
        let b = hub.join("bob");
        a.take_control();
        assert!(a.has_control() && !b.has_control());
        assert_eq!(hub.controller().map(|c| c.1), Some("alice".to_owned()));
        // bob sees the announcement: events up to one naming alice.
        loop {
            let message = tokio::time::timeout(std::time::Duration::from_secs(5), b.next())
                .await
                .expect("bob hears who holds control")
                .expect("the hub is open");
            let Message::Text(text) = message else {
                continue;
            };
            let event: serde_json::Value = serde_json::from_str(&text).unwrap();
            if event["type"] == "control" && event["holder"] == "alice" {
                break;
            }
        }
        b.take_control();
        assert!(!a.has_control());
        assert!(!a.release_control());
        drop(b);
        assert_eq!(hub.controller(), None, "leaving gives control back");
        hub.close();
        while a.next().await.is_some() {}
    }
}

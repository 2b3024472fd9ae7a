//! When the next frame may happen: on the output's refresh boundaries,
//! paced down while nobody watches an animation. Pure timing state, no
//! event loop: [`crate::output`] arms the loop's timer from it.

use std::time::{Duration, Instant};

/// Frames happen on the output's refresh boundaries, and only when
/// something asked for one (a commit, a window gone): an idle desktop
/// wakes nobody.
pub(crate) struct FrameClock {
    /// The output's refresh period.
    pub(crate) refresh: Duration,
    /// Someone watches the desktop's stream (the node agent says so):
    /// frames at the output's refresh; otherwise at most every
    /// [`UNWATCHED_PERIOD`].
    pub(crate) watched: bool,
    /// A frame's timer is in the loop already.
    pub(crate) armed: bool,
    pub(crate) last: Instant,
    /// When the present run of back-to-back frames began.
    busy_since: Instant,
}

/// The shortest time between frames while nobody watches, once frames
/// have come back to back for [`ANIMATION_AFTER`]: an animation nobody
/// sees is paced at 10 a second (the agent's screenshots and the board's
/// thumbnails need no more). Start-up, a window opening, a burst of
/// typing run at the output's refresh.
pub const UNWATCHED_PERIOD: Duration = Duration::from_millis(100);
pub const ANIMATION_AFTER: Duration = Duration::from_secs(1);

impl FrameClock {
    /// An unwatched output's clock at `refresh_mhz` millihertz.
    pub(crate) fn new(refresh_mhz: u32) -> FrameClock {
        FrameClock {
            refresh: Duration::from_micros(1_000_000_000 / u64::from(refresh_mhz.max(1000))),
            watched: false,
            armed: false,
            // Long ago: the first frame is never held back.
            last: Instant::now()
                .checked_sub(Duration::from_secs(1))
                .unwrap_or_else(Instant::now),
            busy_since: Instant::now(),
        }
    }

    pub(crate) fn period(&self) -> Duration {
        if self.watched || self.busy_since.elapsed() < ANIMATION_AFTER {
            self.refresh
        } else {
            self.refresh.max(UNWATCHED_PERIOD)
        }
    }

    /// A frame is being made now.
    pub(crate) fn frame_now(&mut self) {
        let now = Instant::now();
        // A pause longer than the slow pace ends a run of frames.
        if now.duration_since(self.last) > 2 * UNWATCHED_PERIOD {
            self.busy_since = now;
        }
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unwatched_animation_slows_down_after_a_second_and_a_watched_one_never() {
        let mut clock = FrameClock::new(60_000);
        assert_eq!(clock.refresh, Duration::from_micros(16_666));
        // Frames back to back for longer than ANIMATION_AFTER.
        clock.frame_now();
        clock.busy_since = Instant::now() - ANIMATION_AFTER;
        assert_eq!(clock.period(), UNWATCHED_PERIOD);
        clock.watched = true;
        assert_eq!(clock.period(), clock.refresh);
        // A pause ends the run: back at the refresh, watched or not.
        clock.watched = false;
        clock.last = Instant::now() - 3 * UNWATCHED_PERIOD;
        clock.frame_now();
        assert_eq!(clock.period(), clock.refresh);
    }
}

//! Write pacing: while the node is busy, a socket that just wrote waits a moment before
//! its next write, and sends everything that arrived meanwhile in one go.
//!
//! Each write is a system call and a TCP segment; a node queueing hundreds of thousands of
//! frames a second spends most of its time there, one frame per write, while queues grow
//! and latency climbs for everyone. Gathering a few milliseconds' worth per write carries
//! the same deliveries in several times fewer writes. A quiet node pays nothing: the gap
//! applies only while the node queues more frames a second than its busy rate, and only to
//! sockets that wrote within the gap (a socket that wrote long ago writes at once).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::metrics::LayerMetrics;

/// How often the rate is looked at.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

pub struct WritePacing {
    /// The gap kept between writes while busy; zero turns pacing off.
    gap: Duration,
    /// Above this many frames queued a second the node counts as busy; zero: always.
    busy_rate: u64,
    busy: AtomicBool,
    /// Frames queued in total when the rate was last looked at.
    last_total: AtomicU64,
}

impl WritePacing {
    /// The busy rate a node starts with unless configured otherwise
    /// (`WIRECHAT_BUSY_FRAMES_PER_SECOND`).
    pub const DEFAULT_BUSY_RATE: u64 = 100_000;

    pub fn new(gap: Duration, busy_rate: u64) -> WritePacing {
        WritePacing {
            gap,
            busy_rate,
            busy: AtomicBool::new(busy_rate == 0),
            last_total: AtomicU64::new(0),
        }
    }

    /// The gap a socket keeps after a write just now: zero unless the node is busy.
    pub fn gap(&self) -> Duration {
        if self.busy() && !self.gap.is_zero() {
            self.gap
        } else {
            Duration::ZERO
        }
    }

    /// Whether the node queued more frames in the last look than its busy rate.
    fn busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    /// Frames queued a second from which the node counts as busy; 0: pacing applies always.
    pub fn busy_rate(&self) -> u64 {
        self.busy_rate
    }

    /// Whether the rate is watched and was above the busy rate at the last look: false
    /// when pacing applies always (busy rate 0), as nothing is measured then.
    pub fn measured_busy(&self) -> bool {
        self.busy_rate != 0 && self.busy()
    }

    /// Takes the node's count of frames queued so far, `elapsed` after the previous look.
    pub fn observe(&self, frames_total: u64, elapsed: Duration) {
        if elapsed.is_zero() {
            return;
        }
        let before = self.last_total.swap(frames_total, Ordering::Relaxed);
        let frames = frames_total.saturating_sub(before);
        let busy_from = self.busy_rate as f64 * elapsed.as_secs_f64();
        self.busy
            .store(frames as f64 >= busy_from, Ordering::Relaxed);
    }

    /// Looks at the node's delivery rate every `SAMPLE_EVERY` until `stop`.
    pub async fn watch(&self, metrics: &LayerMetrics, stop: CancellationToken) {
        if self.busy_rate == 0 {
            return;
        }
        let mut ticks = tokio::time::interval(SAMPLE_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: it only marks where counting starts.
        let mut last = ticks.tick().await;
        self.last_total.store(
            metrics.frames_out.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                now = ticks.tick() => {
                    self.observe(metrics.frames_out.load(Ordering::Relaxed), now - last);
                    last = now;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(50);

    #[test]
    fn the_gap_applies_only_while_the_node_is_busy() {
        let pacing = WritePacing::new(Duration::from_millis(5), 100_000);
        assert_eq!(pacing.gap(), Duration::ZERO);
        // 200 clients × 100 messages/s: 20,000 frames a second, not busy.
        pacing.observe(1_000, TICK);
        assert_eq!(pacing.gap(), Duration::ZERO);
        // 500,000 frames a second.
        pacing.observe(1_000 + 25_000, TICK);
        assert_eq!(pacing.gap(), Duration::from_millis(5));
        // Quiet again.
        pacing.observe(1_000 + 25_000 + 10, TICK);
        assert_eq!(pacing.gap(), Duration::ZERO);
    }

    #[test]
    fn a_zero_gap_never_paces_and_a_zero_rate_always_does() {
        let never = WritePacing::new(Duration::ZERO, 100_000);
        never.observe(1_000_000, TICK);
        assert_eq!(never.gap(), Duration::ZERO);
        let always = WritePacing::new(Duration::from_millis(5), 0);
        assert_eq!(always.gap(), Duration::from_millis(5));
        always.observe(0, TICK);
        assert_eq!(always.gap(), Duration::from_millis(5));
        // Nothing is measured, so nothing reads as a measured burst (memory trims by it).
        assert!(!always.measured_busy());
    }
}

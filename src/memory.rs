//! Giving memory back to the system after a load peak.
//!
//! A reconnect storm makes every socket render and buffer its catch-up at once; glibc's
//! allocator keeps what is freed afterwards in its arenas and returns only the top of each
//! heap. Measured: 10,000 sockets resuming after a storm took the node to ~900 MB, and it
//! stayed there after every socket had closed, until `malloc_trim` brought it to 26 MB. So
//! while the node is not busy, it trims every little while: a walk over the arenas' free
//! lists, cheap when there is nothing to give back.
//!
//! Not busy means both: fewer frames queued a second since the last trim than the busy
//! rate of write pacing (`WIRECHAT_BUSY_FRAMES_PER_SECOND`), and, where pacing watches the
//! rate, not busy at this moment either. The first alone lets a node that paces always
//! (busy rate 0, so pacing never measures) still give memory back, judged by pacing's
//! default rate; the second keeps a trim out of a burst that has just begun.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::layer::WritePacing;
use crate::layer::metrics::LayerMetrics;

/// How often a node that is not busy gives freed memory back.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Until `stop`, returns the allocator's free pages to the system every `TRIM_EVERY`
/// while the node is not busy (a trim holds each arena's lock while it walks it).
pub async fn release_freed_memory(
    pacing: &WritePacing,
    metrics: &LayerMetrics,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(TRIM_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = ticks.tick().await;
    let mut last_total = metrics.frames_out.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            now = ticks.tick() => {
                let total = metrics.frames_out.load(Ordering::Relaxed);
                let frames = total.saturating_sub(last_total);
                let busy_rate = match pacing.busy_rate() {
                    // Pacing applies always and measures nothing: judge by its default.
                    0 => WritePacing::DEFAULT_BUSY_RATE,
                    rate => rate,
                };
                if quiet(frames, now - last, busy_rate, pacing.measured_busy()) {
                    trim();
                }
                (last, last_total) = (now, total);
            }
        }
    }
}

/// Whether a node that queued `frames` over `elapsed`, and is busy right now or not, may
/// spend a trim, when `busy_rate` frames a second count as busy.
fn quiet(frames: u64, elapsed: Duration, busy_rate: u64, busy_now: bool) -> bool {
    !busy_now && (frames as f64) < busy_rate as f64 * elapsed.as_secs_f64()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    let started = std::time::Instant::now();
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    let released = unsafe { libc::malloc_trim(0) } == 1;
    tracing::debug!(released, took = ?started.elapsed(), "trimmed the heap");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_trims_only_after_a_quiet_stretch_and_not_inside_a_burst() {
        let ten_seconds = Duration::from_secs(10);
        let busy_rate = 100_000;
        assert!(quiet(0, ten_seconds, busy_rate, false));
        // 20,000 frames a second: a chatty node, not a busy one.
        assert!(quiet(200_000, ten_seconds, busy_rate, false));
        // A peak just passed: 300,000 frames a second on average.
        assert!(!quiet(3_000_000, ten_seconds, busy_rate, false));
        // ...which a node configured busy only from 500,000 a second calls quiet.
        assert!(quiet(3_000_000, ten_seconds, 500_000, false));
        // Quiet on average, but pacing sees a burst right now.
        assert!(!quiet(1_000, ten_seconds, busy_rate, true));
    }
}

//! Giving memory back to the system after a load peak.
//!
//! A reconnect storm makes every socket render and buffer its catch-up at once; glibc's
//! allocator keeps what is freed afterwards in its arenas and returns only the top of each
//! heap. Measured: 10,000 sockets resuming after a storm took the node to ~900 MB, and it
//! stayed there after every socket had closed, until `malloc_trim` brought it to 26 MB. So
//! while the node is not busy, it trims every little while: a walk over the arenas' free
//! lists, cheap when there is nothing to give back.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::layer::WritePacing;

/// How often a node that is not busy gives freed memory back.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Until `stop`, returns the allocator's free pages to the system every `TRIM_EVERY`
/// while the node is not busy (a trim holds each arena's lock while it walks it).
pub async fn release_freed_memory(pacing: &WritePacing, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(TRIM_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {
                if !pacing.busy() {
                    trim();
                }
            }
        }
    }
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

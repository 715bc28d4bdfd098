//! Counters the channel layers keep, rendered as Prometheus text by `/metrics`.
//!
//! Plain atomics: they are bumped on the delivery path, so they must cost next to nothing,
//! and a handful of series does not justify a metrics framework.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
pub struct LayerMetrics {
    /// Messages accepted on this node and published.
    pub messages_in: AtomicU64,
    /// Events queued for local sockets.
    pub frames_out: AtomicU64,
    /// Writes to local sockets, each carrying one or more frames.
    pub socket_writes: AtomicU64,
    /// Publications that did not reach the other nodes.
    pub publish_failures: AtomicU64,
    /// Times the subscriber connection was re-established after losing it.
    pub reconnects: AtomicU64,
    /// Channels subscribed again after a reconnect.
    pub resubscriptions: AtomicU64,
    pub publish_latency: Histogram,
}

/// Upper bounds of the publish latency buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&upper| seconds <= upper) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (upper, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{upper}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Values read at scrape time rather than counted.
pub struct Gauges {
    pub open_sockets: usize,
    pub rooms_subscribed: usize,
    pub posts_waiting: usize,
    pub slow_consumer_closes: u64,
    pub presence_failures: u64,
}

impl LayerMetrics {
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(2048);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "wirechat_open_sockets",
            "Chat sockets open on this node.",
            gauges.open_sockets as u64,
        );
        gauge(
            &mut out,
            "wirechat_rooms_subscribed",
            "Groups this node receives events for (Redis channels it is subscribed to).",
            gauges.rooms_subscribed as u64,
        );
        gauge(
            &mut out,
            "wirechat_posts_waiting",
            "Posts queued on this node to be stored, or in a batch not yet committed.",
            gauges.posts_waiting as u64,
        );
        let counters = [
            (
                "wirechat_messages_in_total",
                "Messages accepted and published by this node.",
                load(&self.messages_in),
            ),
            (
                "wirechat_frames_out_total",
                "Events queued for delivery to this node's sockets.",
                load(&self.frames_out),
            ),
            (
                "wirechat_socket_writes_total",
                "Writes to this node's sockets; frames out per write shows how much pacing gathers.",
                load(&self.socket_writes),
            ),
            (
                "wirechat_publish_failures_total",
                "Publications that could not be sent to the other nodes.",
                load(&self.publish_failures),
            ),
            (
                "wirechat_redis_reconnects_total",
                "Times the pub/sub connection was re-established.",
                load(&self.reconnects),
            ),
            (
                "wirechat_redis_resubscriptions_total",
                "Channels subscribed again after a reconnect.",
                load(&self.resubscriptions),
            ),
            (
                "wirechat_presence_failures_total",
                "Presence reads and writes that failed.",
                gauges.presence_failures,
            ),
            (
                "wirechat_slow_consumer_closes_total",
                "Sockets closed for falling behind their queue.",
                gauges.slow_consumer_closes,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        self.publish_latency.render(
            &mut out,
            "wirechat_publish_latency_seconds",
            "Time to publish an event to the other nodes.",
        );
        out
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = LayerMetrics::default();
        m.publish_latency.observe(Duration::from_micros(200));
        m.publish_latency.observe(Duration::from_millis(3));
        m.publish_latency.observe(Duration::from_secs(5));
        let text = m.render(&Gauges {
            open_sockets: 2,
            rooms_subscribed: 1,
            posts_waiting: 0,
            slow_consumer_closes: 0,
            presence_failures: 0,
        });
        assert!(text.contains("wirechat_publish_latency_seconds_bucket{le=\"0.00025\"} 1\n"));
        assert!(text.contains("wirechat_publish_latency_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("wirechat_publish_latency_seconds_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("wirechat_publish_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("wirechat_publish_latency_seconds_count 3\n"));
        assert!(text.contains("wirechat_open_sockets 2\n"));
    }
}

//! Per-user message rate limiting with a token bucket.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct RateConfig {
    /// Tokens added per second: the rate a user may sustain.
    pub per_second: f64,
    /// Bucket size: how many messages may come at once.
    pub burst: f64,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// One bucket per user on this node, shared by all of the user's sockets here.
pub struct RateLimiter {
    config: RateConfig,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Past this many buckets, full ones (idle users) are dropped so the map cannot grow forever.
const PRUNE_ABOVE: usize = 10_000;

impl RateLimiter {
    pub fn new(config: RateConfig) -> RateLimiter {
        RateLimiter {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`; false when the bucket is empty.
    pub fn allow(&self, key: &str) -> bool {
        self.allow_at(key, Instant::now())
    }

    fn allow_at(&self, key: &str, now: Instant) -> bool {
        let RateConfig { per_second, burst } = self.config;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.refilled).as_secs_f64() * per_second < burst
            });
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: burst,
            refilled: now,
        });
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(RateConfig {
            per_second: 2.0,
            burst: 3.0,
        });
        let t0 = Instant::now();
        assert!((0..3).all(|_| limiter.allow_at("u", t0)));
        assert!(!limiter.allow_at("u", t0));
        assert!(limiter.allow_at("other", t0));
        assert!(limiter.allow_at("u", t0 + Duration::from_millis(500)));
        assert!(!limiter.allow_at("u", t0 + Duration::from_millis(500)));
    }
}

//! Token buckets by key (a user, an address, an account), in memory of a fixed size.
//!
//! A key is kept as a 64-bit keyed hash, never as the text it came from, so a key made of
//! a megabyte of attacker's text costs the same eight bytes as any other; and the map is
//! capped, so a flood of new keys cannot grow it either. When it is full, the buckets that
//! have refilled (they remember nothing) go first, then the ones touched longest ago.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::Instant;

use super::protocol::Action;

/// Messages read from history that cost one unit of a user's action budget...
pub const MESSAGES_PER_UNIT: f64 = 25.0;
/// ...or bytes of their text, whichever costs more.
pub const BYTES_PER_UNIT: f64 = 64.0 * 1024.0;

/// What an action costs from its user's budget before anything it reads from history (which
/// is charged afterwards, per `MESSAGES_PER_UNIT`): about one unit per store query or
/// broadcast it causes. Posting has a limit of its own and costs nothing here.
pub fn action_cost(action: &Action) -> f64 {
    match action {
        // Posts, edits, deletions and reactions are writes every member receives: they go
        // through the posting rate as well.
        Action::NewMessage { .. } => 0.0,
        Action::EditMessage { .. } | Action::DeleteMessage { .. } | Action::React { .. } => 1.0,
        Action::Typing => 1.0,
        Action::ChangeGroup { .. }
        | Action::LoadOlder { .. }
        | Action::CatchUp { .. }
        | Action::BrowseGroups { .. }
        | Action::LeaveGroup { .. }
        | Action::HideConversation { .. }
        | Action::BlockUser { .. }
        | Action::UnblockUser { .. }
        | Action::BlockedPeople => 2.0,
        // A search reads an index, and up to a page of messages with their rooms.
        Action::CreateGroup { .. } | Action::Search { .. } => 5.0,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RateConfig {
    /// Tokens added per second: the rate a key may sustain.
    pub per_second: f64,
    /// Bucket size: how much may be spent at once.
    pub burst: f64,
}

struct Bucket {
    /// May fall below zero: a cost known only after the work (a history read) is charged
    /// in full, and the key waits until it is paid back.
    tokens: f64,
    refilled: Instant,
}

/// One bucket per key on this node.
pub struct RateLimiter {
    config: RateConfig,
    hasher: RandomState,
    max_keys: usize,
    buckets: Mutex<HashMap<u64, Bucket>>,
}

/// Keys a limiter remembers at most (about 40 bytes each).
pub const DEFAULT_MAX_KEYS: usize = 100_000;

impl RateLimiter {
    pub fn new(config: RateConfig) -> RateLimiter {
        RateLimiter::with_max_keys(config, DEFAULT_MAX_KEYS)
    }

    pub fn with_max_keys(config: RateConfig, max_keys: usize) -> RateLimiter {
        RateLimiter {
            config,
            hasher: RandomState::new(),
            max_keys: max_keys.max(4),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`; false when the bucket is empty.
    pub fn allow(&self, key: &str) -> bool {
        self.spend(key, 1.0)
    }

    /// Takes `cost` tokens for `key` when the bucket holds them all; false (and nothing
    /// taken) otherwise.
    pub fn spend(&self, key: &str, cost: f64) -> bool {
        self.update(key, Instant::now(), |tokens| {
            (*tokens >= cost).then(|| *tokens -= cost).is_some()
        })
    }

    /// Takes `cost` tokens for `key` whatever the bucket holds, down to one burst below
    /// empty: for work already done, whose cost was known only afterwards.
    pub fn charge(&self, key: &str, cost: f64) {
        let floor = -self.config.burst;
        self.update(key, Instant::now(), |tokens| {
            *tokens = (*tokens - cost).max(floor);
        });
    }

    /// Whether `key` has at least `cost` tokens now, taking nothing.
    pub fn has(&self, key: &str, cost: f64) -> bool {
        self.update(key, Instant::now(), |tokens| *tokens >= cost)
    }

    /// How many keys are remembered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Bucket>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update<T>(&self, key: &str, now: Instant, f: impl FnOnce(&mut f64) -> T) -> T {
        let RateConfig { per_second, burst } = self.config;
        let hash = self.hasher.hash_one(key);
        let mut buckets = self.lock();
        if buckets.len() >= self.max_keys && !buckets.contains_key(&hash) {
            self.make_room(&mut buckets, now);
        }
        let bucket = buckets.entry(hash).or_insert(Bucket {
            tokens: burst,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.refilled = now;
        f(&mut bucket.tokens)
    }

    /// Frees a quarter of the map: refilled buckets first, then the longest untouched. The
    /// scan is paid once per quarter of the map's size in new keys.
    fn make_room(&self, buckets: &mut HashMap<u64, Bucket>, now: Instant) {
        let RateConfig { per_second, burst } = self.config;
        buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.refilled).as_secs_f64() * per_second < burst
        });
        let keep = self.max_keys - self.max_keys / 4;
        if buckets.len() > keep {
            let mut ages: Vec<Instant> = buckets.values().map(|b| b.refilled).collect();
            let cut = buckets.len() - keep;
            ages.select_nth_unstable(cut - 1);
            let oldest_kept = ages[cut - 1];
            let mut to_drop = cut;
            buckets.retain(|_, b| {
                if to_drop > 0 && b.refilled <= oldest_kept {
                    to_drop -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spend_at(limiter: &RateLimiter, key: &str, cost: f64, at: Instant) -> bool {
        limiter.update(key, at, |tokens| {
            (*tokens >= cost).then(|| *tokens -= cost).is_some()
        })
    }

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(RateConfig {
            per_second: 2.0,
            burst: 3.0,
        });
        let t0 = Instant::now();
        assert!((0..3).all(|_| spend_at(&limiter, "u", 1.0, t0)));
        assert!(!spend_at(&limiter, "u", 1.0, t0));
        assert!(spend_at(&limiter, "other", 1.0, t0));
        assert!(spend_at(
            &limiter,
            "u",
            1.0,
            t0 + Duration::from_millis(500)
        ));
        assert!(!spend_at(
            &limiter,
            "u",
            1.0,
            t0 + Duration::from_millis(500)
        ));
    }

    #[test]
    fn a_charge_runs_into_debt_that_must_be_paid_back() {
        let limiter = RateLimiter::new(RateConfig {
            per_second: 10.0,
            burst: 10.0,
        });
        limiter.charge("u", 25.0);
        // Down to one burst below empty, not further.
        assert!(!limiter.has("u", 0.0));
        let t0 = Instant::now();
        assert!(!spend_at(
            &limiter,
            "u",
            1.0,
            t0 + Duration::from_millis(1_000)
        ));
        assert!(spend_at(
            &limiter,
            "u",
            1.0,
            t0 + Duration::from_millis(1_200)
        ));
    }

    #[test]
    fn memory_is_bounded_whatever_the_keys() {
        let limiter = RateLimiter::with_max_keys(
            RateConfig {
                per_second: 1.0,
                burst: 5.0,
            },
            1_000,
        );
        let huge = "x".repeat(100_000);
        for i in 0..20_000 {
            limiter.allow(&format!("{huge}{i}"));
        }
        assert!(limiter.len() <= 1_000, "{} keys", limiter.len());
        // A key in debt survives a flood of new keys that each took one token, while it
        // is among the most recently used.
        limiter.charge("victim-of-nothing", 4.0);
        for i in 0..500 {
            limiter.allow(&format!("new{i}"));
        }
        assert!(!limiter.has("victim-of-nothing", 2.0));
    }
}

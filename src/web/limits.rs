//! Limits on who may knock how often: sign-in attempts per address and per account, and
//! open sockets per user.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;

use super::client::Proxies;
use crate::chat::rate::{RateConfig, RateLimiter};
use crate::config::AuthRateLimit;

pub struct AccessLimits {
    auth: Option<RateLimiter>,
    pub proxies: Proxies,
    max_sockets_per_user: usize,
    sockets: Mutex<HashMap<String, usize>>,
}

impl AccessLimits {
    pub fn new(auth: AuthRateLimit, proxies: Proxies, max_sockets_per_user: usize) -> Self {
        AccessLimits {
            auth: match auth {
                AuthRateLimit::Off => None,
                AuthRateLimit::PerMinute(n) => Some(RateLimiter::new(RateConfig {
                    per_second: f64::from(n) / 60.0,
                    burst: f64::from(n.max(1)),
                })),
            },
            proxies,
            max_sockets_per_user: max_sockets_per_user.max(1),
            sockets: Mutex::new(HashMap::new()),
        }
    }

    /// The client's address (see `Proxies::client_ip`).
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        self.proxies.client_ip(peer, headers)
    }

    /// Takes one sign-in attempt for each key (an address, an account); false if any is
    /// exhausted.
    pub fn allow_sign_in(&self, keys: &[&str]) -> bool {
        match &self.auth {
            None => true,
            Some(limiter) => keys.iter().all(|key| limiter.allow(key)),
        }
    }

    /// Reserves a socket for `user_id`, or None when the user already holds the maximum
    /// here. The slot is released when dropped.
    pub fn open_socket(self: &Arc<Self>, user_id: &str) -> Option<SocketSlot> {
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        let count = sockets.entry(user_id.to_owned()).or_insert(0);
        if *count >= self.max_sockets_per_user {
            return None;
        }
        *count += 1;
        Some(SocketSlot {
            limits: self.clone(),
            user_id: user_id.to_owned(),
        })
    }
}

pub struct SocketSlot {
    limits: Arc<AccessLimits>,
    user_id: String,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut sockets = self
            .limits
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = sockets.get_mut(&self.user_id) {
            *count -= 1;
            if *count == 0 {
                sockets.remove(&self.user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_per_user_are_capped_and_released() {
        let limits = Arc::new(AccessLimits::new(AuthRateLimit::Off, Proxies::default(), 2));
        let a = limits.open_socket("u");
        let b = limits.open_socket("u");
        assert!(a.is_some() && b.is_some());
        assert!(limits.open_socket("u").is_none());
        assert!(limits.open_socket("other").is_some());
        drop(a);
        assert!(limits.open_socket("u").is_some());
    }
}

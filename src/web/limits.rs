//! Limits on who may knock how often: sign-in attempts per address, failed log-ins per
//! account, and open sockets per user.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;

use super::client::{Proxies, network_of};
use crate::chat::rate::{RateConfig, RateLimiter};
use crate::config::AuthRateLimit;
use crate::store::LoginFailures;

pub struct AccessLimits {
    auth: Option<RateLimiter>,
    login: Option<LoginGuard>,
    pub proxies: Proxies,
    max_sockets_per_user: usize,
    sockets: Mutex<HashMap<String, usize>>,
}

impl AccessLimits {
    pub fn new(
        auth: AuthRateLimit,
        login: LoginGuard,
        proxies: Proxies,
        max_sockets_per_user: usize,
    ) -> Self {
        AccessLimits {
            login: (auth != AuthRateLimit::Off).then_some(login),
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

    /// The client's address as limits see it (see `Proxies::client_ip`, `network_of`).
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        network_of(self.proxies.client_ip(peer, headers))
    }

    /// Takes one sign-in attempt (log in, sign up, guest) from `ip`; false when its
    /// attempts for the minute are spent.
    pub fn allow_sign_in(&self, ip: IpAddr) -> bool {
        match &self.auth {
            None => true,
            Some(limiter) => limiter.allow(&ip.to_string()),
        }
    }

    /// The limits on failed log-ins, unless sign-in limits are off.
    pub fn login_guard(&self) -> Option<&LoginGuard> {
        self.login.as_ref()
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

/// Failed log-ins, limited as OWASP's authentication cheat sheet advises: per account and
/// address, a few attempts and then a delay that doubles with each failure; per account
/// across all addresses, a much larger ceiling, past which only browsers that logged in to
/// the account before may try. A stranger's failures never lock the owner out.
#[derive(Debug, Clone, Copy)]
pub struct LoginGuard {
    /// Failures from one address before each further attempt from there waits.
    pub free_per_address: i64,
    /// Failures from all addresses in `ACCOUNT_WINDOW` before new browsers must wait.
    pub per_account: i64,
}

/// Why, and how long, a log-in attempt must wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginWait {
    /// This address failed too often for this account.
    Address(Duration),
    /// The account failed too often from everywhere, and this browser is new to it.
    Account(Duration),
}

impl LoginGuard {
    /// The window of the per-account ceiling.
    pub const ACCOUNT_WINDOW: Duration = Duration::from_secs(3600);
    /// The longest delay between attempts from one address.
    const MAX_DELAY: Duration = Duration::from_secs(15 * 60);

    /// Whether an attempt now (`now_ms`) must wait, given the account's failures and
    /// whether the browser logged in to it before.
    pub fn wait(&self, failures: &LoginFailures, known: bool, now_ms: i64) -> Option<LoginWait> {
        if failures.here >= self.free_per_address {
            let doublings = (failures.here - self.free_per_address).min(20) as u32;
            let delay = (1_000_i64 << doublings).min(Self::MAX_DELAY.as_millis() as i64);
            let until = failures.last_here_ms.unwrap_or(0).saturating_add(delay);
            if now_ms < until {
                return Some(LoginWait::Address(Duration::from_millis(
                    (until - now_ms) as u64,
                )));
            }
        }
        if !known && failures.recent >= self.per_account {
            return Some(LoginWait::Account(Self::MAX_DELAY));
        }
        None
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

    const GUARD: LoginGuard = LoginGuard {
        free_per_address: 5,
        per_account: 100,
    };

    #[test]
    fn failed_log_ins_slow_an_address_and_cap_an_account_but_not_its_known_browsers() {
        let at = |here, recent| LoginFailures {
            recent,
            here,
            last_here_ms: Some(10_000),
        };
        assert_eq!(GUARD.wait(&at(4, 4), false, 10_000), None);
        assert_eq!(
            GUARD.wait(&at(5, 5), false, 10_000),
            Some(LoginWait::Address(Duration::from_secs(1)))
        );
        assert_eq!(GUARD.wait(&at(5, 5), false, 11_000), None);
        assert_eq!(
            GUARD.wait(&at(8, 8), false, 11_000),
            Some(LoginWait::Address(Duration::from_secs(7)))
        );
        assert_eq!(
            GUARD.wait(&at(60, 60), false, 10_000),
            Some(LoginWait::Address(Duration::from_secs(900)))
        );
        // Another address, after many failures from elsewhere.
        assert_eq!(GUARD.wait(&at(0, 99), false, 10_000), None);
        assert!(matches!(
            GUARD.wait(&at(0, 100), false, 10_000),
            Some(LoginWait::Account(_))
        ));
        assert_eq!(GUARD.wait(&at(0, 100), true, 10_000), None);
    }

    #[test]
    fn sockets_per_user_are_capped_and_released() {
        let limits = Arc::new(AccessLimits::new(
            AuthRateLimit::Off,
            GUARD,
            Proxies::default(),
            2,
        ));
        let a = limits.open_socket("u");
        let b = limits.open_socket("u");
        assert!(a.is_some() && b.is_some());
        assert!(limits.open_socket("u").is_none());
        assert!(limits.open_socket("other").is_some());
        drop(a);
        assert!(limits.open_socket("u").is_some());
    }
}

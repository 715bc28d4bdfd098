//! Who a request comes from: the client's address, and whether the page that sent it is
//! this site's own. Behind a proxy both come from headers the proxy sets, and those are
//! believed only when the proxy is trusted.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, header};

use crate::config::Net;

/// The proxies in front of this node, and how far their headers are believed.
#[derive(Debug, Clone, Default)]
pub struct Proxies {
    /// Requests come through a proxy that sets `X-Forwarded-For` and `X-Forwarded-Proto`.
    trust: bool,
    /// Further proxies (a CDN, a load balancer) whose entries in `X-Forwarded-For` are
    /// skipped on the way to the client's.
    further: Vec<Net>,
}

impl Proxies {
    pub fn new(trust: bool, further: Vec<Net>) -> Proxies {
        Proxies { trust, further }
    }

    /// The client's address: the peer's, or behind a trusted proxy the right-most entry of
    /// `X-Forwarded-For` that is not one of the further proxies. Entries to the left of it
    /// were written by the client and may say anything; an entry that is not an address
    /// (`ip`, `ip:port` or `[ip]:port`) ends the walk, and the peer's address is used.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trust {
            return peer.ip();
        }
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for entry in entries.iter().rev() {
            let Some(ip) = parse_forwarded(entry.trim()) else {
                break;
            };
            if !self.further.iter().any(|net| net.contains(ip)) {
                return ip;
            }
        }
        peer.ip()
    }

    /// The scheme the browser used: the trusted proxy's `X-Forwarded-Proto`, else `https`
    /// when cookies are marked secure (the site is served over HTTPS), else `http`.
    pub fn scheme(&self, headers: &HeaderMap, secure_cookies: bool) -> &'static str {
        let forwarded = self
            .trust
            .then(|| headers.get_all("x-forwarded-proto").iter().next_back())
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(|v| v.trim().to_ascii_lowercase());
        match forwarded.as_deref() {
            Some("https") => "https",
            Some("http") => "http",
            _ if secure_cookies => "https",
            _ => "http",
        }
    }
}

/// The address limits are kept by: an IPv4 address, or an IPv6 address's /64 (one
/// subscriber commonly has a whole /64 to pick addresses from).
pub fn network_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
        v4 => v4,
    }
}

fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// Whether a request was sent by a page of this site.
#[derive(Debug, PartialEq, Eq)]
pub enum Sender {
    /// Its `Origin` is this site, or it has none and the browser says it was sent from
    /// this site or typed by the user (`Sec-Fetch-Site`).
    ThisSite,
    /// Anything else: another site, an opaque origin (`null`: a sandboxed frame, a data
    /// URL), or no word either way.
    Elsewhere,
}

/// Tells a request sent by this site's pages from one another page started.
pub fn sender(headers: &HeaderMap, scheme: &str) -> Sender {
    let this_site = match headers.get(header::ORIGIN) {
        Some(_) => origin_is_this_site(headers, scheme),
        None => matches!(
            headers.get("sec-fetch-site").map(|v| v.as_bytes()),
            Some(b"same-origin" | b"none")
        ),
    };
    if this_site {
        Sender::ThisSite
    } else {
        Sender::Elsewhere
    }
}

/// True when the request's `Origin` is `scheme://host`, the host it was sent to.
pub fn origin_is_this_site(headers: &HeaderMap, scheme: &str) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    origin.zip(host).is_some_and(|(origin, host)| {
        origin
            .strip_prefix(scheme)
            .and_then(|rest| rest.strip_prefix("://"))
            .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn the_client_is_the_right_most_entry_no_trusted_proxy_wrote() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let forwarded = headers(&[("x-forwarded-for", "forged, 10.9.9.9:1234")]);
        assert_eq!(Proxies::default().client_ip(peer, &forwarded), peer.ip());
        let proxied = Proxies::new(true, Vec::new());
        assert_eq!(
            proxied.client_ip(peer, &forwarded),
            "10.9.9.9".parse::<IpAddr>().unwrap()
        );
        let v6 = headers(&[("x-forwarded-for", "1.2.3.4, [2001:db8::1]:443")]);
        assert_eq!(
            proxied.client_ip(peer, &v6),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        // A CDN in front of the proxy: its address is skipped, the client's is found.
        let cdn = Proxies::new(true, vec!["203.0.113.0/24".parse().unwrap()]);
        let chain = headers(&[
            ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(
            cdn.client_ip(peer, &chain),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // Garbage where the proxy's entry should be: the peer, not a guess.
        let garbage = headers(&[("x-forwarded-for", "1.2.3.4, garbage")]);
        assert_eq!(proxied.client_ip(peer, &garbage), peer.ip());
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(network_of(a), network_of(b));
        assert_ne!(
            network_of(a),
            network_of("2001:db8:1:3::1".parse().unwrap())
        );
        let v4: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(network_of(v4), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn only_this_sites_pages_are_senders() {
        let host = ("host", "chat.example:8080");
        for (pairs, scheme, expected) in [
            (
                vec![host, ("origin", "http://chat.example:8080")],
                "http",
                Sender::ThisSite,
            ),
            (
                vec![host, ("origin", "http://CHAT.example:8080")],
                "http",
                Sender::ThisSite,
            ),
            (
                vec![host, ("origin", "http://chat.example:8080")],
                "https",
                Sender::Elsewhere,
            ),
            (
                vec![host, ("origin", "https://evil.example")],
                "http",
                Sender::Elsewhere,
            ),
            (vec![host, ("origin", "null")], "http", Sender::Elsewhere),
            (
                vec![host, ("origin", "chat.example:8080")],
                "http",
                Sender::Elsewhere,
            ),
            (vec![host], "http", Sender::Elsewhere),
            (
                vec![host, ("sec-fetch-site", "same-origin")],
                "http",
                Sender::ThisSite,
            ),
            (
                vec![host, ("sec-fetch-site", "none")],
                "http",
                Sender::ThisSite,
            ),
            (
                vec![host, ("sec-fetch-site", "cross-site")],
                "http",
                Sender::Elsewhere,
            ),
            (
                vec![host, ("sec-fetch-site", "same-site")],
                "http",
                Sender::Elsewhere,
            ),
        ] {
            assert_eq!(
                sender(&headers(&pairs), scheme),
                expected,
                "{pairs:?} {scheme}"
            );
        }
    }

    #[test]
    fn the_scheme_comes_from_a_trusted_proxy_only() {
        let https = headers(&[("x-forwarded-proto", "https")]);
        assert_eq!(Proxies::default().scheme(&https, false), "http");
        assert_eq!(Proxies::default().scheme(&https, true), "https");
        assert_eq!(
            Proxies::new(true, Vec::new()).scheme(&https, false),
            "https"
        );
        let http = headers(&[("x-forwarded-proto", "http")]);
        assert_eq!(Proxies::new(true, Vec::new()).scheme(&http, true), "http");
    }
}

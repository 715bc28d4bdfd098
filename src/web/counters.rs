//! What the HTTP side counts for `/metrics`: responses by status class, chat socket
//! handshakes by outcome (refusals by reason), and connections refused at accept.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;

/// How a chat socket's handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Accepted,
    /// The `Origin` was not this site's.
    WrongOrigin,
    /// No session, or one that expired or was logged out.
    SignedOut,
    /// The user's action budget was spent (reconnecting over and over).
    ReconnectingTooOften,
    /// The user already holds `WIRECHAT_MAX_SOCKETS_PER_USER` sockets on this node.
    TooManySockets,
    /// The session could not be read (the database failed).
    Failed,
}

impl Handshake {
    const ALL: [Handshake; 6] = [
        Handshake::Accepted,
        Handshake::WrongOrigin,
        Handshake::SignedOut,
        Handshake::ReconnectingTooOften,
        Handshake::TooManySockets,
        Handshake::Failed,
    ];

    /// The series' labels: `outcome`, and for a refusal its `reason`.
    fn labels(self) -> &'static str {
        match self {
            Handshake::Accepted => r#"outcome="accepted",reason="""#,
            Handshake::WrongOrigin => r#"outcome="refused",reason="origin""#,
            Handshake::SignedOut => r#"outcome="refused",reason="signed_out""#,
            Handshake::ReconnectingTooOften => r#"outcome="refused",reason="action_budget""#,
            Handshake::TooManySockets => r#"outcome="refused",reason="sockets_per_user""#,
            Handshake::Failed => r#"outcome="failed",reason="error""#,
        }
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Default)]
pub struct HttpCounters {
    responses: [AtomicU64; CLASSES.len()],
    handshakes: [AtomicU64; Handshake::ALL.len()],
    refused_per_address: AtomicU64,
}

impl HttpCounters {
    pub fn response(&self, status: StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, CLASSES.len()) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    pub fn handshake(&self, outcome: Handshake) {
        if let Some(i) = Handshake::ALL.iter().position(|&o| o == outcome) {
            self.handshakes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A connection closed at accept: its address already holds as many as it may.
    pub fn refused_per_address(&self) {
        self.refused_per_address.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let name = "wirechat_http_responses_total";
        let _ = writeln!(
            out,
            "# HELP {name} HTTP responses on the public address, by status class (101: a socket opened).\n# TYPE {name} counter"
        );
        for (class, count) in CLASSES.iter().zip(&self.responses) {
            let _ = writeln!(out, "{name}{{class=\"{class}\"}} {}", load(count));
        }
        let name = "wirechat_ws_handshakes_total";
        let _ = writeln!(
            out,
            "# HELP {name} Chat socket handshakes, by outcome and, when refused, the reason.\n# TYPE {name} counter"
        );
        for (outcome, count) in Handshake::ALL.iter().zip(&self.handshakes) {
            let _ = writeln!(out, "{name}{{{}}} {}", outcome.labels(), load(count));
        }
        let name = "wirechat_connections_refused_total";
        let _ = writeln!(
            out,
            "# HELP {name} Connections closed at accept, by reason.\n# TYPE {name} counter\n{name}{{reason=\"per_address\"}} {}",
            load(&self.refused_per_address)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_count_by_class_and_handshakes_by_reason() {
        let counters = HttpCounters::default();
        counters.response(StatusCode::SWITCHING_PROTOCOLS);
        counters.response(StatusCode::OK);
        counters.response(StatusCode::NOT_FOUND);
        counters.response(StatusCode::FORBIDDEN);
        counters.handshake(Handshake::TooManySockets);
        let mut out = String::new();
        counters.render(&mut out);
        assert!(out.contains("wirechat_http_responses_total{class=\"1xx\"} 1\n"));
        assert!(out.contains("wirechat_http_responses_total{class=\"4xx\"} 2\n"));
        assert!(out.contains("wirechat_http_responses_total{class=\"5xx\"} 0\n"));
        assert!(out.contains(
            "wirechat_ws_handshakes_total{outcome=\"refused\",reason=\"sockets_per_user\"} 1\n"
        ));
        assert!(out.contains("wirechat_ws_handshakes_total{outcome=\"accepted\",reason=\"\"} 0\n"));
    }
}

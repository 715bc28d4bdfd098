//! wirechat: a real-time chat service that renders on the server and pushes HTML fragments
//! over WebSockets.
//!
//! # Layout
//!
//! - [`app`]: start-up and graceful shutdown (a drain, not ready but serving, then every
//!   socket told to reconnect); `Application::build` binds (port 0 in tests) and
//!   `run_until_stopped` serves.
//! - [`config`]: flags with environment fallbacks, and the subcommands; settings as logs
//!   may show them, passwords redacted.
//! - [`web`]: accepting connections (header deadline, connections per address), HTTP routes
//!   — pages, sign-in forms and sessions, the WebSocket handshake, static assets, health
//!   checks — the security headers and the same-site check on every request, who a
//!   request comes from behind proxies, and the access limits (sign-in attempts, failed
//!   log-ins, sockets per user), and what the HTTP side counts for `/metrics` (responses,
//!   socket handshakes by outcome).
//! - [`socket`]: one chat socket — a reader turning actions into stores and publications
//!   (posts queued while the ones before are stored, in `posting`; edits, deletions and
//!   reactions in `changes`; the rooms a person chooses: joining, leaving, hiding,
//!   blocking, browsing, in `membership`; searching, in `search`), a writer draining a bounded queue onto the wire through the
//!   socket's view (`view`: which room is shown, what of it is on screen, what waits), and
//!   the connection under both (`connection`: frames read through tungstenite, written
//!   straight onto the TCP stream).
//! - [`hub`]: what every socket on a node shares (store, layer, presence, limits, room
//!   member lists already rendered), and the node's announcements of who came and went.
//! - [`chat`]: the rules, free of I/O: valid names (and when two are the same),
//!   messages and reactions, the wire protocol, rate limits and the cost of each action.
//! - [`presence`]: who is online and in which room, with capped lists (the Online list,
//!   room member lists), kept in memory for one node or in Redis for several.
//! - [`views`]: maud components; the page and the live fragments come from the same ones;
//!   message text's formatting (`format`) and web addresses (`links`).
//! - [`layer`]: the `ChannelLayer` trait (publish to a group, deliver to local sockets)
//!   with its in-process backend and its Redis pub/sub backend for several nodes (one
//!   Redis, the master Redis Sentinel names, or sharded over a Redis Cluster, in
//!   `redis::connection`), each
//!   socket's queue (its outbox) and what goes in it, and the counters behind `/metrics`.
//! - [`store`]: sqlx over SQLite (embedded default) or PostgreSQL: users, sessions, failed
//!   log-ins, rooms, memberships, blocks, messages; on SQLite the session a connect reads,
//!   and whether a socket leaving a room has anything to mark read, are read on the
//!   calling thread (`inline`), and the write-ahead log is folded into the
//!   database file by a task of its own (`checkpoint`); posts are stored in batches by per-node
//!   writers (group commit; on a SQLite file, each batch in one hand-off to a thread and
//!   connection of the writer's own, through rusqlite), once per client id; every change to a room (a post, an edit,
//!   a deletion, a reaction) takes its next seq; message text is searched on a trigram
//!   index; what nobody can use any more is purged.
//! - [`model`]: the domain types (people, rooms, messages) that storage, views, presence
//!   and the channel layer share.
//! - [`memory`]: giving freed memory back to the system after a load peak.
//! - [`process_stats`]: the process's memory, descriptors and CPU time from `/proc`, for
//!   `/metrics`.
//! - [`accounts`]: password hashing, generated names, `seed-users`.
//! - [`error`]: the HTTP error type.

pub mod accounts;
pub mod app;
pub mod chat;
pub mod config;
pub mod error;
pub mod hub;
pub mod layer;
pub mod memory;
pub mod model;
pub mod presence;
pub mod process_stats;
pub mod socket;
pub mod store;
pub mod views;
pub mod web;

/// The layering the module map describes, checked on the source: a module that may not
/// depend on another names nothing of it, and no two top-level modules depend on each
/// other, directly or through others.
#[cfg(test)]
mod layering {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Each top-level module and the other top-level modules its files name as `crate::…`.
    fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
        fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).expect("src is readable") {
                let path = entry.expect("src is readable").path();
                if path.is_dir() {
                    files(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut paths = Vec::new();
        files(&src, &mut paths);
        let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for path in paths {
            let relative = path.strip_prefix(&src).expect("under src");
            let first = relative.components().next().expect("a file");
            let module = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            if ["lib", "main"].contains(&module.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a source file");
            let named = deps.entry(module.clone()).or_default();
            for (at, _) in text.match_indices("crate::") {
                let rest = &text[at + "crate::".len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                let other = &rest[..end];
                if !other.is_empty() && other != module {
                    named.insert(other.to_owned());
                }
            }
        }
        deps
    }

    #[test]
    fn transport_rendering_and_rules_do_not_reach_into_storage_or_sockets() {
        let deps = dependencies();
        for (module, forbidden) in [
            ("layer", ["socket", "store", "views", "web"].as_slice()),
            ("views", ["store", "socket", "layer", "web"].as_slice()),
            ("chat", ["store", "socket", "layer", "web"].as_slice()),
            ("presence", ["store", "socket", "web"].as_slice()),
            (
                "model",
                ["store", "socket", "layer", "views", "web"].as_slice(),
            ),
        ] {
            let named = &deps[module];
            for other in forbidden {
                assert!(!named.contains(*other), "{module} names {other}");
            }
        }
    }

    #[test]
    fn no_two_modules_depend_on_each_other() {
        let deps = dependencies();
        for start in deps.keys() {
            let mut seen = BTreeSet::new();
            let mut next: Vec<&String> = deps[start].iter().collect();
            while let Some(module) = next.pop() {
                assert_ne!(module, start, "{start} depends on itself through others");
                if seen.insert(module.clone()) {
                    next.extend(deps.get(module).into_iter().flatten());
                }
            }
        }
    }
}

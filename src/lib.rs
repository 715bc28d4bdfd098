//! wirechat: a real-time chat service that renders on the server and pushes HTML fragments
//! over WebSockets.
//!
//! # Layout
//!
//! - [`app`]: start-up and graceful shutdown; `Application::build` binds (port 0 in tests)
//!   and `run_until_stopped` serves.
//! - [`config`]: flags with environment fallbacks, and the subcommands.
//! - [`web`]: accepting connections (header deadline, connections per address), HTTP routes
//!   — pages, sign-in forms and sessions, the WebSocket handshake, static assets, health
//!   checks — the security headers and the same-site check on every request, who a
//!   request comes from behind proxies, and the access limits (sign-in attempts, failed
//!   log-ins, sockets per user).
//! - [`socket`]: one chat socket — a reader turning actions into stores and publications
//!   (the rooms a person chooses: joining, leaving, hiding, blocking, browsing, in
//!   `membership`), a writer draining a bounded queue onto the wire through the socket's
//!   view (`view`: which room is shown, what of it is on screen, what waits).
//! - [`hub`]: what every socket on a node shares (store, layer, presence, limits, room
//!   member lists already rendered), and the node's announcements of who came and went.
//! - [`chat`]: the rules, free of I/O: valid names (and when two are the same) and
//!   messages, the wire protocol, rate limits and the cost of each action.
//! - [`presence`]: who is online and in which room, with capped lists (the Online list,
//!   room member lists), kept in memory for one node or in Redis for several.
//! - [`views`]: maud components; the page and the live fragments come from the same ones.
//! - [`layer`]: the `ChannelLayer` trait (publish to a group, deliver to local sockets)
//!   with its in-process backend and its Redis pub/sub backend for several nodes, each
//!   socket's queue (its outbox) and what goes in it, and the counters behind `/metrics`.
//! - [`store`]: sqlx over SQLite (embedded default) or PostgreSQL: users, sessions, failed
//!   log-ins, rooms, memberships, blocks, messages; posts are stored in batches by per-node
//!   writers (group commit), once per client id; what nobody can use any more is purged.
//! - [`model`]: the domain types (people, rooms, messages) that storage, views, presence
//!   and the channel layer share.
//! - [`memory`]: giving freed memory back to the system after a load peak.
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
pub mod socket;
pub mod store;
pub mod views;
pub mod web;

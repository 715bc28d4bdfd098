//! wirechat: a real-time chat service that renders on the server and pushes HTML fragments
//! over WebSockets.
//!
//! # Layout
//!
//! - [`app`]: start-up and graceful shutdown; `Application::build` binds (port 0 in tests)
//!   and `run_until_stopped` serves.
//! - [`config`]: flags with environment fallbacks, and the subcommands.
//! - [`web`]: HTTP routes — pages, sign-in forms and sessions, the WebSocket handshake,
//!   static assets, health checks — the security headers on every response, and the
//!   access limits (sign-in attempts, sockets per user).
//! - [`session`]: one chat socket — a reader turning actions into stores and publications,
//!   a writer draining a bounded queue onto the wire.
//! - [`hub`]: what every socket on a node shares (store, layer, presence, limits, room
//!   member lists already rendered), and the node's announcements of who came and went.
//! - [`chat`]: the rules, free of I/O: valid names and messages, the wire protocol, rate
//!   limiting, presence with its capped room member lists, and the capped Online list
//!   (roster).
//! - [`views`]: maud components; the page and the live fragments come from the same ones.
//! - [`layer`]: the `ChannelLayer` trait (publish to a group, deliver to local sockets)
//!   with its in-process backend and its Redis pub/sub backend for several nodes, each
//!   socket's queue (its outbox), the Redis-backed presence that spans nodes, and the
//!   counters behind `/metrics`.
//! - [`store`]: sqlx over SQLite (embedded default) or PostgreSQL: users, sessions, rooms,
//!   memberships, messages; posts are stored in batches by per-node writers (group commit).
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
pub mod session;
pub mod store;
pub mod views;
pub mod web;

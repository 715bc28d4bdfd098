//! Integration tests: the real app on port 0, over HTTP and WebSocket, against a fresh
//! SQLite file and a fresh PostgreSQL database.

mod abuse;
mod auth;
mod browser;
mod chat;
mod cluster;
mod deploy;
mod editing;
mod faults;
mod helpers;
mod input;
mod limits;
mod mentions;
mod metrics;
mod operations;
mod pages;
mod posting;
mod process;
mod reactions;
mod replies;
mod search;
mod sentinel;
mod sharded;
mod startup;
mod tls;

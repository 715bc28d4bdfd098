//! Presence shared by every node through Redis.
//!
//! Each socket has its own entry, named by its node; liveness is the node's, not each
//! socket's. A node's heartbeat renews one expiry, whatever number of sockets it holds, so
//! when a node dies (even by SIGKILL) its expiry lapses after the TTL, and the next sweep by
//! any surviving node removes that node's entries and reports who went away. A node that
//! finds itself forgotten (Redis restarted, or it was too slow and was swept) writes its
//! entries back.
//!
//! Keys, under the configured prefix, for each scope (`online`, or `room:<id>`):
//!
//! - `presence:<scope>`: sorted set, user id → when the user arrived (ms);
//! - `presence:<scope>:<user id>`: sorted set, socket (`<node>:<n>`) → when it arrived;
//! - `presence:alive`: sorted set, node → when it is taken for dead (ms);
//! - `presence:node:<node>`: present while the node's entries are known to be in place;
//! - `presence:entries:<node>`: set of the node's entries (`<scope>\n<user id>\n<socket>`),
//!   so that removing a dead node's entries costs what it held, not what everyone holds;
//! - `presence:names`: hash, user id → username;
//! - `presence:listed:room:<id>`: hash, user id → username, of the (at most `SHOWN`) people
//!   the room's "who is here" list shows; when a listed person goes, the same script lists
//!   someone else in their place.
//!
//! Every change is one Lua script, so "first socket in" and "last socket out" are decided
//! atomically however many nodes race, and expiry is judged by the Redis clock alone, so
//! nodes' clocks need not agree. A removal that fails (Redis unreachable) is retried by the
//! next heartbeat.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use deadpool_redis::redis::{FromRedisValue, Script};
use futures_util::future::BoxFuture;

mod scripts;

use super::{Change, Listing, Members, Presence, SHOWN, sort_by_name};
use crate::layer::redis::Commands;
use crate::model::{SocketId, User};
use scripts::SCRIPTS;

/// A user from an id, name pair of a script's reply.
fn pair_user(pair: &[String]) -> User {
    User {
        id: pair[0].clone(),
        username: pair[1].clone(),
    }
}

/// Who is in a room, from a `MEMBERS` reply: the count present, then id, name pairs.
fn members_of(reply: &[String]) -> Members {
    let present: usize = reply.first().and_then(|n| n.parse().ok()).unwrap_or(0);
    let mut listed: Vec<User> = reply
        .get(1..)
        .unwrap_or_default()
        .chunks_exact(2)
        .map(pair_user)
        .collect();
    sort_by_name(&mut listed);
    Members {
        more: present.saturating_sub(listed.len()),
        listed: listed.into(),
    }
}

/// A list change from a script's reply: a code, then the promoted user's id and name ('' for
/// none) after `unlisted`.
fn listing(reply: &[String]) -> Listing {
    match reply {
        [code, ..] if code == "listed" => Listing::Listed,
        [code, ..] if code == "counted" => Listing::Counted,
        [code, id, name, ..] if code == "unlisted" && !id.is_empty() => Listing::Unlisted {
            promoted: Some(User {
                id: id.clone(),
                username: name.clone(),
            }),
        },
        [code, ..] if code == "unlisted" => Listing::Unlisted { promoted: None },
        _ => Listing::Unchanged,
    }
}

/// Entries per restore script, so one call never holds Redis up for long...
const RESTORE_CHUNK: usize = 500;
/// ...and per sweep script.
const SWEEP_CHUNK: usize = 1000;

const ONLINE: &str = "online";

fn room_scope(room: &str) -> String {
    format!("room:{room}")
}

/// The change no socket reported when `user` left `scope`.
fn departure(scope: &str, user: User, listing: Listing) -> Change {
    match scope.strip_prefix("room:") {
        Some(room) => Change::Left {
            room: room.to_owned(),
            user,
            listing,
        },
        None => Change::Offline(user),
    }
}

/// This node's sockets, as presence knows them: what a restore writes back.
#[derive(Default)]
struct Local {
    sockets: HashMap<SocketId, (User, Option<String>)>,
    /// Entries whose removal failed (socket, scope, user), for the next heartbeat.
    unremoved: Vec<(SocketId, String, User)>,
    /// A restore failed partway and must run again.
    restore_pending: bool,
    /// Changes made where no one announces them, for the next heartbeat to report.
    unannounced: Vec<Change>,
}

pub struct RedisPresence {
    commands: Commands,
    prefix: String,
    /// The key every script names, so a cluster runs it on the shard holding presence.
    routing_key: String,
    /// Makes socket ids (unique per process) unique across nodes.
    instance: String,
    /// How long a node's entries outlive its last heartbeat, in milliseconds, as the
    /// scripts take it.
    ttl_ms: String,
    local: Mutex<Local>,
    /// Presence writes and reads that failed, since start.
    failures: AtomicU64,
}

impl RedisPresence {
    /// Presence under `prefix`. On a Redis Cluster the prefix must be a hash tag
    /// (`{wirechat:}`), so every key is in one slot, as the scripts (which read and write
    /// many keys at once) need.
    pub fn new(commands: Commands, prefix: &str, instance: &str, ttl: Duration) -> RedisPresence {
        RedisPresence {
            commands,
            prefix: prefix.to_owned(),
            routing_key: format!("{prefix}presence:alive"),
            instance: instance.to_owned(),
            ttl_ms: ttl.as_millis().to_string(),
            local: Mutex::default(),
            failures: AtomicU64::new(0),
        }
    }

    fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn socket_key(&self, socket: SocketId) -> String {
        format!("{}:{socket}", self.instance)
    }

    async fn eval<T: FromRedisValue>(&self, script: &Script, args: &[&str]) -> Result<T, String> {
        self.commands
            .run_script(script, &self.routing_key, args)
            .await
    }

    fn failed(&self, what: &str, error: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error, "presence {what} failed");
    }

    /// Runs `script` (`ADD` or `ENTER`) for the socket's entry in `scope`.
    async fn add_with(
        &self,
        script: &Script,
        socket: SocketId,
        scope: &str,
        user: &User,
    ) -> Result<Vec<String>, String> {
        let sock = self.socket_key(socket);
        let args = [
            self.prefix.as_str(),
            &self.instance,
            &self.ttl_ms,
            scope,
            &user.id,
            &sock,
            &user.username,
        ];
        // On failure the next restore writes the entry once Redis is back, and reports the
        // change.
        self.eval::<Vec<String>>(script, &args)
            .await
            .inspect_err(|e| {
                self.failed("update", e);
                self.local().restore_pending = true;
            })
    }

    async fn add(&self, socket: SocketId, scope: &str, user: &User) -> Listing {
        match self.add_with(&SCRIPTS.add, socket, scope, user).await {
            Ok(reply) => listing(&reply),
            Err(_) => Listing::Unchanged,
        }
    }

    async fn enter_room(&self, socket: SocketId, room: &str, user: &User) -> (Listing, Members) {
        let scope = room_scope(room);
        match self.add_with(&SCRIPTS.enter, socket, &scope, user).await {
            Ok(reply) => (
                listing(&reply),
                members_of(reply.get(1..).unwrap_or_default()),
            ),
            Err(_) => (Listing::Unchanged, self.local_members(&scope)),
        }
    }

    async fn remove(&self, socket: SocketId, scope: &str, user: &User) -> Listing {
        let sock = self.socket_key(socket);
        let args = [self.prefix.as_str(), scope, &user.id, &sock];
        match self.eval::<Vec<String>>(&SCRIPTS.remove, &args).await {
            Ok(reply) => listing(&reply),
            // The next heartbeat tries again, and reports the change.
            Err(e) => {
                self.failed("update", &e);
                let entry = (socket, scope.to_owned(), user.clone());
                self.local().unremoved.push(entry);
                Listing::Unchanged
            }
        }
    }

    /// Who is in `room`; from this node's own sockets when Redis cannot be asked.
    async fn members(&self, room: &str) -> Members {
        let scope = room_scope(room);
        match self.shared_members(&scope).await {
            Some(members) => members,
            None => self.local_members(&scope),
        }
    }

    /// Who is in `scope` as Redis has it, or None when Redis cannot be asked.
    async fn shared_members(&self, scope: &str) -> Option<Members> {
        match self
            .eval::<Vec<String>>(&SCRIPTS.members, &[self.prefix.as_str(), scope])
            .await
        {
            Ok(reply) => Some(members_of(&reply)),
            Err(e) => {
                self.failed("read", &e);
                None
            }
        }
    }

    /// Who is in a room by this node's own sockets, for when Redis cannot be asked.
    fn local_members(&self, scope: &str) -> Members {
        let mut everyone = self.local_users(scope);
        sort_by_name(&mut everyone);
        let more = everyone.len().saturating_sub(SHOWN);
        everyone.truncate(SHOWN);
        Members {
            listed: everyone.into(),
            more,
        }
    }

    /// The users of this node's sockets in `scope`.
    fn local_users(&self, scope: &str) -> Vec<User> {
        let local = self.local();
        let mut seen = HashMap::new();
        for (user, room) in local.sockets.values() {
            let listed =
                scope == ONLINE || room.as_deref().map(room_scope).as_deref() == Some(scope);
            if listed {
                seen.insert(user.id.clone(), user.clone());
            }
        }
        seen.into_values().collect()
    }

    /// Which of `ids` are present in `scope`, or None when Redis cannot be asked.
    async fn present_among(&self, scope: &str, ids: &[String]) -> Option<Vec<String>> {
        if ids.is_empty() {
            return Some(Vec::new());
        }
        let mut args = vec![self.prefix.as_str(), scope];
        args.extend(ids.iter().map(String::as_str));
        match self.eval::<Vec<String>>(&SCRIPTS.present, &args).await {
            Ok(present) => Some(present),
            Err(e) => {
                self.failed("read", &e);
                None
            }
        }
    }

    /// Retries failed removals, renews this node's expiry, and writes its entries back if
    /// Redis forgot them; returns the changes no socket reported.
    async fn heartbeat(&self) -> Vec<Change> {
        let mut changes = std::mem::take(&mut self.local().unannounced);
        changes.extend(self.retry_removals().await);
        let args = [self.prefix.as_str(), &self.instance, &self.ttl_ms];
        let known = match self.eval::<i64>(&SCRIPTS.heartbeat, &args).await {
            Ok(known) => known == 1,
            Err(e) => {
                self.failed("heartbeat", &e);
                return changes;
            }
        };
        let pending = std::mem::take(&mut self.local().restore_pending);
        if !known || pending {
            changes.extend(self.restore().await);
        }
        changes
    }

    async fn retry_removals(&self) -> Vec<Change> {
        let unremoved = std::mem::take(&mut self.local().unremoved);
        let mut changes = Vec::new();
        for (socket, scope, user) in unremoved {
            // The socket came back to the scope meanwhile: its entry stays.
            if self.still_in(socket, &scope) {
                continue;
            }
            let listing = self.remove(socket, &scope, &user).await;
            if listing != Listing::Unchanged {
                changes.push(departure(&scope, user, listing));
            }
        }
        changes
    }

    /// Writes every entry of this node back; returns those Redis did not have.
    async fn restore(&self) -> Vec<Change> {
        let entries: Vec<(String, User, SocketId)> = {
            let local = self.local();
            local
                .sockets
                .iter()
                .flat_map(|(&socket, (user, room))| {
                    let online = (ONLINE.to_owned(), user.clone(), socket);
                    let room = room
                        .as_deref()
                        .map(|room| (room_scope(room), user.clone(), socket));
                    std::iter::once(online).chain(room)
                })
                .collect()
        };
        let mut changes = Vec::new();
        for chunk in entries.chunks(RESTORE_CHUNK) {
            let socks: Vec<String> = chunk.iter().map(|e| self.socket_key(e.2)).collect();
            let mut args = vec![self.prefix.as_str(), &self.instance, &self.ttl_ms];
            for ((scope, user, _), sock) in chunk.iter().zip(&socks) {
                args.extend([scope.as_str(), &user.id, sock, &user.username]);
            }
            let relisted = match self.eval::<Vec<String>>(&SCRIPTS.restore, &args).await {
                Ok(relisted) => relisted,
                Err(e) => {
                    self.failed("restore", &e);
                    self.local().restore_pending = true;
                    return changes;
                }
            };
            for triple in relisted.chunks_exact(3) {
                let (scope, uid) = (&triple[0], &triple[1]);
                let Some((_, user, socket)) =
                    chunk.iter().find(|(s, u, _)| s == scope && &u.id == uid)
                else {
                    continue;
                };
                // The socket may have closed while the restore was on its way; then its
                // entry was just written back, and must go again.
                if !self.still_in(*socket, scope) {
                    let _ = self.remove(*socket, scope, user).await;
                    continue;
                }
                changes.push(match scope.strip_prefix("room:") {
                    Some(room) => Change::Entered {
                        room: room.to_owned(),
                        user: user.clone(),
                        listing: listing(&triple[2..]),
                    },
                    None => Change::Online(user.clone()),
                });
            }
        }
        changes
    }

    fn still_in(&self, socket: SocketId, scope: &str) -> bool {
        let local = self.local();
        match local.sockets.get(&socket) {
            Some((_, room)) => {
                scope == ONLINE || room.as_deref().map(room_scope).as_deref() == Some(scope)
            }
            None => false,
        }
    }

    /// Removes the entries of nodes taken for dead, a bounded number per script so that
    /// Redis is never held up for long, and reports who went away.
    async fn sweep(&self) -> Vec<Change> {
        let most = SWEEP_CHUNK.to_string();
        let mut changes = Vec::new();
        loop {
            let reply = match self
                .eval::<Vec<String>>(&SCRIPTS.sweep, &[self.prefix.as_str(), &most])
                .await
            {
                Ok(reply) => reply,
                Err(e) => {
                    self.failed("sweep", &e);
                    return changes;
                }
            };
            let Some((state, gone)) = reply.split_first() else {
                return changes;
            };
            changes.extend(
                gone.chunks_exact(6).map(|entry| {
                    departure(&entry[0], pair_user(&entry[1..3]), listing(&entry[3..]))
                }),
            );
            if state != "more" {
                return changes;
            }
        }
    }
}

impl Presence for RedisPresence {
    fn connect<'a>(&'a self, socket: SocketId, user: &'a User) -> BoxFuture<'a, bool> {
        self.local().sockets.insert(socket, (user.clone(), None));
        Box::pin(async move { self.add(socket, ONLINE, user).await != Listing::Unchanged })
    }

    fn disconnect<'a>(&'a self, socket: SocketId, user: &'a User) -> BoxFuture<'a, bool> {
        let room = self
            .local()
            .sockets
            .remove(&socket)
            .and_then(|(_, room)| room);
        Box::pin(async move {
            // A socket normally leaves its room first; if it did not (it closed while
            // entering one), its room entry must not outlive it.
            if let Some(room) = room {
                let listing = self.remove(socket, &room_scope(&room), user).await;
                if listing != Listing::Unchanged {
                    let change = Change::Left {
                        room,
                        user: user.clone(),
                        listing,
                    };
                    self.local().unannounced.push(change);
                }
            }
            self.remove(socket, ONLINE, user).await != Listing::Unchanged
        })
    }

    fn enter<'a>(
        &'a self,
        socket: SocketId,
        room: &'a str,
        user: &'a User,
    ) -> BoxFuture<'a, (Listing, Members)> {
        if let Some(entry) = self.local().sockets.get_mut(&socket) {
            entry.1 = Some(room.to_owned());
        }
        Box::pin(self.enter_room(socket, room, user))
    }

    fn leave<'a>(
        &'a self,
        socket: SocketId,
        room: &'a str,
        user: &'a User,
    ) -> BoxFuture<'a, Listing> {
        if let Some(entry) = self.local().sockets.get_mut(&socket)
            && entry.1.as_deref() == Some(room)
        {
            entry.1 = None;
        }
        Box::pin(async move { self.remove(socket, &room_scope(room), user).await })
    }

    fn online_members(&self) -> BoxFuture<'_, Option<Members>> {
        Box::pin(self.shared_members(ONLINE))
    }

    fn online_among<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Option<Vec<String>>> {
        Box::pin(self.present_among(ONLINE, ids))
    }

    fn in_room<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Members> {
        Box::pin(self.members(room))
    }

    fn in_room_if_known<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Option<Members>> {
        Box::pin(async move { self.shared_members(&room_scope(room)).await })
    }

    fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn maintain(&self) -> BoxFuture<'_, Vec<Change>> {
        Box::pin(async move {
            let mut changes = self.heartbeat().await;
            changes.extend(self.sweep().await);
            changes
        })
    }
}

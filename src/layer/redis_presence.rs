//! Presence shared by every node through Redis.
//!
//! Each socket has its own entry with an expiry; a node refreshes its sockets' entries
//! every heartbeat, so entries of a node that died (even by SIGKILL) lapse after the TTL,
//! and the next sweep by any surviving node removes them and reports who went away.
//!
//! Keys, under the configured prefix, for each scope (`online`, or `room:<id>`):
//!
//! - `presence:<scope>`: sorted set, user id → when the user's newest entry expires (ms);
//! - `presence:<scope>:<user id>`: sorted set, socket → when its entry expires (ms);
//! - `presence:scopes`: the scopes that have entries, for the sweep;
//! - `presence:names`: hash, user id → username.
//!
//! Every change is one Lua script, so "first socket in" and "last socket out" are decided
//! atomically however many nodes race, and expiry is judged by the Redis clock alone, so
//! nodes' clocks need not agree.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use deadpool_redis::Pool;
use deadpool_redis::redis::{self, FromRedisValue};
use futures_util::future::BoxFuture;

use super::SocketId;
use crate::chat::presence::{Change, Presence};
use crate::store::User;

/// `now` in milliseconds, from the Redis server's clock.
const NOW: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// ARGV: prefix, scope, user id, socket, username, ttl ms. Returns 1 when the user was
/// not present in the scope before.
const ADD: &str = "
local p, scope, uid, sock, name, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local users = p .. 'presence:' .. scope
local sockets = users .. ':' .. uid
redis.call('ZADD', sockets, now + ttl, sock)
redis.call('PEXPIRE', sockets, ttl * 2)
redis.call('SADD', p .. 'presence:scopes', scope)
redis.call('HSET', p .. 'presence:names', uid, name)
return redis.call('ZADD', users, now + ttl, uid)
";

/// ARGV: prefix, scope, user id, socket. Returns 1 when no live socket of the user is left
/// in the scope (and the user was listed there).
const REMOVE: &str = "
local p, scope, uid, sock = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local users = p .. 'presence:' .. scope
local sockets = users .. ':' .. uid
redis.call('ZREM', sockets, sock)
redis.call('ZREMRANGEBYSCORE', sockets, '-inf', now)
if redis.call('ZCARD', sockets) > 0 then return 0 end
redis.call('DEL', sockets)
return redis.call('ZREM', users, uid)
";

/// ARGV: prefix, ttl ms, then (scope, user id, socket, username) per entry. Refreshes every
/// entry; returns scope, user id pairs for users who had lapsed and are listed again.
const HEARTBEAT: &str = "
local p, ttl = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 4 do
  local scope, uid, sock, name = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local users = p .. 'presence:' .. scope
  local sockets = users .. ':' .. uid
  redis.call('ZADD', sockets, now + ttl, sock)
  redis.call('PEXPIRE', sockets, ttl * 2)
  if redis.call('ZADD', users, now + ttl, uid) == 1 then
    redis.call('SADD', p .. 'presence:scopes', scope)
    redis.call('HSET', p .. 'presence:names', uid, name)
    table.insert(out, scope)
    table.insert(out, uid)
  end
end
return out
";

/// ARGV: prefix. Removes users whose every entry lapsed; returns scope, user id, username
/// triples for them.
const SWEEP: &str = "
local p = ARGV[1]
local out = {}
for _, scope in ipairs(redis.call('SMEMBERS', p .. 'presence:scopes')) do
  local users = p .. 'presence:' .. scope
  for _, uid in ipairs(redis.call('ZRANGEBYSCORE', users, '-inf', now)) do
    local sockets = users .. ':' .. uid
    redis.call('ZREMRANGEBYSCORE', sockets, '-inf', now)
    local newest = redis.call('ZRANGE', sockets, -1, -1, 'WITHSCORES')
    if #newest > 0 then
      redis.call('ZADD', users, newest[2], uid)
    else
      redis.call('DEL', sockets)
      redis.call('ZREM', users, uid)
      table.insert(out, scope)
      table.insert(out, uid)
      table.insert(out, redis.call('HGET', p .. 'presence:names', uid) or '')
    end
  end
  if redis.call('EXISTS', users) == 0 then
    redis.call('SREM', p .. 'presence:scopes', scope)
  end
end
return out
";

/// ARGV: prefix, scope. Returns user id, username pairs of the users listed and not lapsed.
const LIST: &str = "
local p = ARGV[1]
local out = {}
for _, uid in ipairs(redis.call('ZRANGEBYSCORE', p .. 'presence:' .. ARGV[2], now, '+inf')) do
  table.insert(out, uid)
  table.insert(out, redis.call('HGET', p .. 'presence:names', uid) or '')
end
return out
";

/// Entries per heartbeat script, so one call never holds Redis up for long.
const HEARTBEAT_CHUNK: usize = 500;

const ONLINE: &str = "online";

fn room_scope(room: &str) -> String {
    format!("room:{room}")
}

/// This node's sockets, as presence knows them: what the heartbeat refreshes.
#[derive(Default)]
struct Local {
    sockets: HashMap<SocketId, (User, Option<String>)>,
}

pub struct RedisPresence {
    pool: Pool,
    prefix: String,
    /// Makes socket ids (unique per process) unique across nodes.
    instance: String,
    ttl: Duration,
    local: Mutex<Local>,
    /// Presence writes and reads that failed, since start.
    failures: AtomicU64,
}

impl RedisPresence {
    pub fn new(pool: Pool, prefix: &str, instance: &str, ttl: Duration) -> RedisPresence {
        RedisPresence {
            pool,
            prefix: prefix.to_owned(),
            instance: instance.to_owned(),
            ttl,
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

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    async fn eval<T: FromRedisValue>(&self, script: &str, args: &[&str]) -> Result<T, String> {
        let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(format!("{NOW}{script}")).arg(0);
        for arg in args {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut conn).await.map_err(|e| e.to_string())
    }

    fn failed(&self, what: &str, error: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error, "presence {what} failed");
    }

    async fn add(&self, socket: SocketId, scope: &str, user: &User) -> bool {
        let sock = self.socket_key(socket);
        let ttl = self.ttl_ms().to_string();
        let args = [
            self.prefix.as_str(),
            scope,
            &user.id,
            &sock,
            &user.username,
            &ttl,
        ];
        match self.eval::<i64>(ADD, &args).await {
            Ok(added) => added == 1,
            // The heartbeat writes the entry once Redis is back, and reports the change.
            Err(e) => {
                self.failed("update", &e);
                false
            }
        }
    }

    async fn remove(&self, socket: SocketId, scope: &str, user: &User) -> bool {
        let sock = self.socket_key(socket);
        let args = [self.prefix.as_str(), scope, &user.id, &sock];
        match self.eval::<i64>(REMOVE, &args).await {
            Ok(removed) => removed == 1,
            // The entry lapses on its own, and a sweep reports the change.
            Err(e) => {
                self.failed("update", &e);
                false
            }
        }
    }

    /// Users listed in `scope`, by name; this node's own when Redis cannot be asked.
    async fn list(&self, scope: &str) -> Vec<User> {
        let mut users: Vec<User> = match self
            .eval::<Vec<String>>(LIST, &[self.prefix.as_str(), scope])
            .await
        {
            Ok(flat) => flat
                .chunks_exact(2)
                .map(|pair| User {
                    id: pair[0].clone(),
                    username: pair[1].clone(),
                })
                .collect(),
            Err(e) => {
                self.failed("read", &e);
                let local = self.local();
                let mut seen = HashMap::new();
                for (user, room) in local.sockets.values() {
                    let listed = scope == ONLINE
                        || room.as_deref().map(room_scope).as_deref() == Some(scope);
                    if listed {
                        seen.insert(user.id.clone(), user.clone());
                    }
                }
                seen.into_values().collect()
            }
        };
        users.sort_by(|a, b| a.username.cmp(&b.username));
        users
    }

    async fn heartbeat(&self) -> Vec<Change> {
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
        let ttl = self.ttl_ms().to_string();
        let mut changes = Vec::new();
        for chunk in entries.chunks(HEARTBEAT_CHUNK) {
            let socks: Vec<String> = chunk.iter().map(|e| self.socket_key(e.2)).collect();
            let mut args = vec![self.prefix.as_str(), ttl.as_str()];
            for ((scope, user, _), sock) in chunk.iter().zip(&socks) {
                args.extend([scope.as_str(), &user.id, sock, &user.username]);
            }
            let relisted = match self.eval::<Vec<String>>(HEARTBEAT, &args).await {
                Ok(relisted) => relisted,
                Err(e) => {
                    self.failed("heartbeat", &e);
                    return changes;
                }
            };
            for pair in relisted.chunks_exact(2) {
                let (scope, uid) = (&pair[0], &pair[1]);
                let Some((_, user, socket)) =
                    chunk.iter().find(|(s, u, _)| s == scope && &u.id == uid)
                else {
                    continue;
                };
                // The socket may have closed while the heartbeat was on its way; then its
                // entry was just written back, and must go again.
                if !self.still_in(*socket, scope) {
                    let _ = self.remove(*socket, scope, user).await;
                    continue;
                }
                changes.push(match scope.strip_prefix("room:") {
                    Some(room) => Change::Entered {
                        room: room.to_owned(),
                        user: user.clone(),
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

    async fn sweep(&self) -> Vec<Change> {
        let expired = match self
            .eval::<Vec<String>>(SWEEP, &[self.prefix.as_str()])
            .await
        {
            Ok(expired) => expired,
            Err(e) => {
                self.failed("sweep", &e);
                return Vec::new();
            }
        };
        expired
            .chunks_exact(3)
            .map(|triple| {
                let user = User {
                    id: triple[1].clone(),
                    username: triple[2].clone(),
                };
                match triple[0].strip_prefix("room:") {
                    Some(room) => Change::Left {
                        room: room.to_owned(),
                        user,
                    },
                    None => Change::Offline(user),
                }
            })
            .collect()
    }
}

impl Presence for RedisPresence {
    fn connect<'a>(&'a self, socket: SocketId, user: &'a User) -> BoxFuture<'a, bool> {
        self.local().sockets.insert(socket, (user.clone(), None));
        Box::pin(self.add(socket, ONLINE, user))
    }

    fn disconnect<'a>(&'a self, socket: SocketId, user: &'a User) -> BoxFuture<'a, bool> {
        self.local().sockets.remove(&socket);
        Box::pin(self.remove(socket, ONLINE, user))
    }

    fn enter<'a>(&'a self, socket: SocketId, room: &'a str, user: &'a User) -> BoxFuture<'a, bool> {
        if let Some(entry) = self.local().sockets.get_mut(&socket) {
            entry.1 = Some(room.to_owned());
        }
        Box::pin(async move { self.add(socket, &room_scope(room), user).await })
    }

    fn leave<'a>(&'a self, socket: SocketId, room: &'a str, user: &'a User) -> BoxFuture<'a, bool> {
        if let Some(entry) = self.local().sockets.get_mut(&socket)
            && entry.1.as_deref() == Some(room)
        {
            entry.1 = None;
        }
        Box::pin(async move { self.remove(socket, &room_scope(room), user).await })
    }

    fn online(&self) -> BoxFuture<'_, Vec<User>> {
        Box::pin(self.list(ONLINE))
    }

    fn in_room<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Vec<User>> {
        Box::pin(async move { self.list(&room_scope(room)).await })
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

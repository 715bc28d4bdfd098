//! The Lua scripts that change presence in Redis, each atomic however many nodes race (see
//! the parent module for the keys they keep).

use std::sync::LazyLock;

use deadpool_redis::redis::Script;

use crate::presence::SHOWN;

/// What every script starts with: `now` in milliseconds, from the Redis server's clock,
/// and the rules of the capped lists (each room's, and the Online list). A list change is
/// reported as a code, then the promoted user's id and name when someone was: `listed`,
/// `counted` or `unlisted`.
fn prelude() -> String {
    format!(
        "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local SHOWN = {SHOWN}
local function listed_key(p, scope) return p .. 'presence:listed:' .. scope end
-- A user new to the scope is listed while the list has room.
local function list_new(p, scope, uid, name)
  local listed = listed_key(p, scope)
  if redis.call('HLEN', listed) >= SHOWN then return 'counted' end
  redis.call('HSET', listed, uid, name)
  return 'listed'
end
-- Lists the user who arrived first of those present and not listed, on a list with room;
-- returns their id and name, or nothing when everyone present is listed.
local function list_first_waiting(p, scope)
  local listed = listed_key(p, scope)
  for _, other in ipairs(redis.call('ZRANGE', p .. 'presence:' .. scope, 0, SHOWN)) do
    if redis.call('HEXISTS', listed, other) == 0 then
      local name = redis.call('HGET', p .. 'presence:names', other) or ''
      redis.call('HSET', listed, other, name)
      return other, name
    end
  end
end
-- A user gone from the scope (already removed from it): a listed one makes room for the
-- user who arrived first of those not listed.
local function unlist(p, scope, uid)
  if redis.call('HDEL', listed_key(p, scope), uid) == 0 then return {{'counted'}} end
  local other, name = list_first_waiting(p, scope)
  if other then return {{'unlisted', other, name}} end
  return {{'unlisted'}}
end
-- A socket's entry: `unchanged` when the user was present in the scope before, else how
-- the list changed. A node that has not had its first heartbeat yet is given an expiry,
-- so that its entries are swept should it die before.
local function entry(scope, uid, sock) return scope .. '\\n' .. uid .. '\\n' .. sock end
local function node_of(sock) return string.match(sock, '^(.*):[^:]*$') or '' end
local function add(p, node, ttl, scope, uid, sock, name)
  local users = p .. 'presence:' .. scope
  redis.call('ZADD', p .. 'presence:alive', 'NX', now + ttl, node)
  redis.call('SADD', p .. 'presence:entries:' .. node, entry(scope, uid, sock))
  redis.call('ZADD', users .. ':' .. uid, now, sock)
  redis.call('HSET', p .. 'presence:names', uid, name)
  if redis.call('ZADD', users, 'NX', now, uid) == 0 then return 'unchanged' end
  return list_new(p, scope, uid, name)
end
-- Appends to `out` how many users are present, then user id, username
-- pairs of those the list shows.
local function members(p, scope, out)
  table.insert(out, tostring(redis.call('ZCARD', p .. 'presence:' .. scope)))
  for _, field in ipairs(redis.call('HGETALL', listed_key(p, scope))) do
    table.insert(out, field)
  end
  return out
end
"
    )
}

/// The scripts, each sent to Redis once and then invoked by its hash.
pub(super) struct Scripts {
    pub(super) add: Script,
    pub(super) enter: Script,
    pub(super) remove: Script,
    pub(super) heartbeat: Script,
    pub(super) restore: Script,
    pub(super) sweep: Script,
    pub(super) members: Script,
    pub(super) present: Script,
}

pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let prelude = prelude();
    let script = |body: &str| Script::new(&format!("{prelude}{body}"));
    Scripts {
        add: script(ADD),
        enter: script(ENTER),
        remove: script(REMOVE),
        heartbeat: script(HEARTBEAT),
        restore: script(RESTORE),
        sweep: script(SWEEP),
        members: script(MEMBERS),
        present: script(PRESENT),
    }
});

/// ARGV: prefix, node, ttl ms, scope, user id, socket, username. Returns `unchanged` when
/// the user was present in the scope before, else how the list changed.
const ADD: &str = "
return {add(ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6], ARGV[7])}
";

/// As `ADD`, for a room's scope, followed by who is in the room then (as `MEMBERS`): one
/// round trip for a socket entering a room.
const ENTER: &str = "
local p, scope = ARGV[1], ARGV[4]
return members(p, scope, {add(p, ARGV[2], tonumber(ARGV[3]), scope, ARGV[5], ARGV[6], ARGV[7])})
";

/// ARGV: prefix, scope, user id, socket. Returns `unchanged` while a socket of the user is
/// left in the scope, else how the list changed. A user who was not there at all (Redis
/// lost its data while the socket was leaving, or a sweep came first) is `unlisted` with
/// no one promoted: no place was freed, but viewers may still list them from before.
const REMOVE: &str = "
local p, scope, uid, sock = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local users = p .. 'presence:' .. scope
local sockets = users .. ':' .. uid
redis.call('SREM', p .. 'presence:entries:' .. node_of(sock), entry(scope, uid, sock))
redis.call('ZREM', sockets, sock)
if redis.call('ZCARD', sockets) > 0 then return {'unchanged'} end
redis.call('DEL', sockets)
if redis.call('ZREM', users, uid) == 0 then return {'unlisted'} end
return unlist(p, scope, uid)
";

/// ARGV: prefix, node, ttl ms. Renews the node's expiry; returns 1 when its entries are
/// known to be in place, 0 when the node must write them back (first heartbeat, Redis
/// restarted, or the node was taken for dead and swept). Also fills the Online list where
/// it has room and people online are not on it: nodes of versions that kept no such list
/// left it empty, and it would otherwise fill only as people come and go. Two reads when
/// there is nothing to fill.
const HEARTBEAT: &str = "
local p, node, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
redis.call('ZADD', p .. 'presence:alive', now + ttl, node)
local known = redis.call('EXISTS', p .. 'presence:node:' .. node)
redis.call('SET', p .. 'presence:node:' .. node, '1')
local have = redis.call('HLEN', listed_key(p, 'online'))
local present = redis.call('ZCARD', p .. 'presence:online')
while have < SHOWN and have < present do
  list_first_waiting(p, 'online')
  have = have + 1
end
return known
";

/// ARGV: prefix, node, ttl ms, then (scope, user id, socket, username) per entry. Writes
/// the entries back; returns scope, user id, list change triples for users who were not
/// present and are again.
const RESTORE: &str = "
local p, node, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV, 4 do
  local scope, uid = ARGV[i], ARGV[i + 1]
  local change = add(p, node, ttl, scope, uid, ARGV[i + 2], ARGV[i + 3])
  if change ~= 'unchanged' then
    table.insert(out, scope)
    table.insert(out, uid)
    table.insert(out, change)
  end
end
return out
";

/// ARGV: prefix, most entries to remove. Removes up to that many entries of one node taken
/// for dead, and forgets the node once it has none left. Returns `done` when no node was
/// dead, else `more`, then scope, user id, username, list change, promoted user's id and
/// name ('' for none) for each user who has no socket left in a scope. Everyone gone leaves
/// before anyone is promoted, so only the living take a freed place.
const SWEEP: &str = "
local p, most = ARGV[1], tonumber(ARGV[2])
local alive = p .. 'presence:alive'
local dead = redis.call('ZRANGEBYSCORE', alive, '-inf', now, 'LIMIT', 0, 1)[1]
if not dead then return {'done'} end
local index = p .. 'presence:entries:' .. dead
local gone = {}
for _, e in ipairs(redis.call('SPOP', index, most)) do
  local scope, uid, sock = string.match(e, '^([^\\n]*)\\n([^\\n]*)\\n(.*)$')
  if scope then
    local users = p .. 'presence:' .. scope
    local sockets = users .. ':' .. uid
    redis.call('ZREM', sockets, sock)
    if redis.call('ZCARD', sockets) == 0 and redis.call('ZREM', users, uid) == 1 then
      table.insert(gone, {scope, uid})
    end
  end
end
if redis.call('EXISTS', index) == 0 then
  redis.call('ZREM', alive, dead)
  redis.call('DEL', p .. 'presence:node:' .. dead)
end
local out = {'more'}
for _, g in ipairs(gone) do
  local scope, uid = g[1], g[2]
  local change = unlist(p, scope, uid)
  table.insert(out, scope)
  table.insert(out, uid)
  table.insert(out, redis.call('HGET', p .. 'presence:names', uid) or '')
  table.insert(out, change[1])
  table.insert(out, change[2] or '')
  table.insert(out, change[3] or '')
end
return out
";

/// ARGV: prefix, scope of a room. Returns how many users are present, then
/// user id, username pairs of those the list shows.
const MEMBERS: &str = "
return members(ARGV[1], ARGV[2], {})
";

/// ARGV: prefix, scope, then user ids. Returns those of the ids present in the scope.
const PRESENT: &str = "
local users = ARGV[1] .. 'presence:' .. ARGV[2]
local out = {}
for i = 3, #ARGV do
  if redis.call('ZSCORE', users, ARGV[i]) then table.insert(out, ARGV[i]) end
end
return out
";

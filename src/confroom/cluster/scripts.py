"""The cluster's Redis keys and the Lua scripts that change them atomically.

Keys (prefix `confroom:`), for conference `K` = "<account_sid>:<name>":

- `c:K`  hash: `sid`, `started` (unix time), `owner` (node delivering its events), `meta`
         (JSON: statusHook, statusEvents, maxParticipants, app);
- `m:K`  hash: call_sid -> "<node>|<call fields JSON>" (the admitted members, cluster-wide);
- `n:K`  hash: node -> number of its members;
- `l:K`  hash: "<from>><to>" -> RTP port on <from> of its leg to <to>;
- `nc:<node>` set of the K a node has members in (what survivors clean up after it);
- `node:<node>` string: the node's advertised address (TTL: it is alive);
- `nodes` sorted set: node -> time of its last heartbeat (ms).

Every key has a TTL that the heartbeat of a node with members renews, so nothing of a
cluster outlives its nodes. Channels: `confroom:bcast` (start, end, nodes, legs changes, for
every node) and `confroom:node:<node>` (status events for the node that delivers them).
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "confroom:"
BCAST: Final = PREFIX + "bcast"


def conf_keys(key: str) -> list[str]:
    """c, m, n, l keys of conference key K."""
    return [f"{PREFIX}{k}:{key}" for k in ("c", "m", "n", "l")]


def node_channel(node: str) -> str:
    return f"{PREFIX}node:{node}"


def node_key(node: str) -> str:
    return f"{PREFIX}node:{node}"


def node_confs(node: str) -> str:
    return f"{PREFIX}nc:{node}"


NODES: Final = PREFIX + "nodes"

# KEYS: c m n l nc(node)
# ARGV: new sid, now, node, call_sid, start(0/1), limit(0: none), meta, fields, ttl, conf key,
# channel prefix, start event ('' = none: published to this node, the owner, on a start)
# -> {outcome, sid, started, owner, meta}
ENTER: Final = """
local c, m, n, l, nc = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local sid = redis.call('HGET', c, 'sid')
local outcome = 'join'
if not sid then
  if ARGV[5] == '0' then return {'wait'} end
  sid = ARGV[1]
  redis.call('DEL', m, n, l)
  redis.call('HSET', c, 'sid', sid, 'started', ARGV[2], 'owner', ARGV[3], 'meta', ARGV[7])
  outcome = 'start'
else
  local cap = tonumber(ARGV[6]) or 0
  if cap <= 0 then
    local ok, meta = pcall(cjson.decode, redis.call('HGET', c, 'meta') or '{}')
    if ok and type(meta) == 'table' and type(meta['maxParticipants']) == 'number' then
      cap = meta['maxParticipants']
    end
  end
  if cap > 0 and redis.call('HLEN', m) >= cap then outcome = 'full' end
end
local started = redis.call('HGET', c, 'started') or '0'
local owner = redis.call('HGET', c, 'owner') or ''
local meta = redis.call('HGET', c, 'meta') or '{}'
if outcome == 'full' then return {outcome, sid, started, owner, meta} end
redis.call('HSET', m, ARGV[4], ARGV[3] .. '|' .. ARGV[8])
local here = redis.call('HINCRBY', n, ARGV[3], 1)
redis.call('SADD', nc, ARGV[10])
local ttl = tonumber(ARGV[9])
for _, k in ipairs({c, m, n, nc}) do redis.call('EXPIRE', k, ttl) end
local msg = cjson.encode({t = 'nodes', k = ARGV[10], sid = sid})
if outcome == 'start' then
  if ARGV[12] ~= '' then redis.call('PUBLISH', ARGV[11] .. ARGV[3], '1|' .. ARGV[12]) end
  redis.call('PUBLISH', KEYS[6], cjson.encode({t = 'start', k = ARGV[10], sid = sid}))
end
if here == 1 then redis.call('PUBLISH', KEYS[6], msg) end
return {outcome, sid, started, owner, meta}
"""

# KEYS: c m n l bcast ; ARGV: sid, call_sid, node, conf key, channel prefix, fallback owner,
# leave event ('' = none) -> {members left (-2: not this sid), owner}
LEAVE: Final = """
local c, m, n, l = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('HGET', c, 'sid') ~= ARGV[1] then
  if ARGV[7] ~= '' then redis.call('PUBLISH', ARGV[5] .. ARGV[6], '0|' .. ARGV[7]) end
  return {-2, ARGV[6]}
end
local owner = redis.call('HGET', c, 'owner') or ARGV[6]
if redis.call('HDEL', m, ARGV[2]) == 1 then
  if redis.call('HINCRBY', n, ARGV[3], -1) <= 0 then
    redis.call('HDEL', n, ARGV[3])
    local node = ARGV[3]
    for _, f in ipairs(redis.call('HKEYS', l)) do
      if string.sub(f, 1, #node + 1) == node .. '>' or string.sub(f, -(#node + 1)) == '>' .. node
      then redis.call('HDEL', l, f) end
    end
    redis.call('PUBLISH', KEYS[5], cjson.encode({t = 'nodes', k = ARGV[4], sid = ARGV[1]}))
  end
end
local left = redis.call('HLEN', m)
if ARGV[7] ~= '' then redis.call('PUBLISH', ARGV[5] .. owner, left .. '|' .. ARGV[7]) end
if left == 0 then redis.call('DEL', c, m, n, l) end
return {left, owner}
"""

# KEYS: c m n l bcast ; ARGV: sid, conf key, node -> the members' values, or nil (not this sid)
END: Final = """
local c, m, n, l = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('HGET', c, 'sid') ~= ARGV[1] then return false end
local values = redis.call('HVALS', m)
redis.call('DEL', c, m, n, l)
redis.call('PUBLISH', KEYS[5], cjson.encode({t = 'end', k = ARGV[2], sid = ARGV[1],
                                             by = ARGV[3]}))
return values
"""

# KEYS: c m ; ARGV: sid, fallback owner, members override ('' = count), channel prefix,
# payload
# -> the owner it went to
EMIT: Final = """
local owner = ARGV[2]
local count = tonumber(ARGV[3])
if redis.call('HGET', KEYS[1], 'sid') == ARGV[1] then
  owner = redis.call('HGET', KEYS[1], 'owner') or owner
  if not count then count = redis.call('HLEN', KEYS[2]) end
end
if not count then count = 0 end
redis.call('PUBLISH', ARGV[4] .. owner, count .. '|' .. ARGV[5])
return owner
"""

# KEYS: c m n l bcast ; ARGV: dead node, this node, conf key
# -> {sid or '', members left, started, meta, removed member values...}
REAP: Final = """
local c, m, n, l = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local sid = redis.call('HGET', c, 'sid')
if not sid then return {'', 0} end
local out = {sid, 0, redis.call('HGET', c, 'started') or '0', redis.call('HGET', c, 'meta') or '{}'}
local prefix = ARGV[1] .. '|'
local all = redis.call('HGETALL', m)
for i = 1, #all, 2 do
  if string.sub(all[i + 1], 1, #prefix) == prefix then
    redis.call('HDEL', m, all[i])
    table.insert(out, all[i + 1])
  end
end
redis.call('HDEL', n, ARGV[1])
local legs = redis.call('HKEYS', l)
for _, f in ipairs(legs) do
  if string.sub(f, 1, #ARGV[1] + 1) == ARGV[1] .. '>' or
     string.sub(f, -(#ARGV[1] + 1)) == '>' .. ARGV[1] then
    redis.call('HDEL', l, f)
  end
end
if redis.call('HGET', c, 'owner') == ARGV[1] then redis.call('HSET', c, 'owner', ARGV[2]) end
local left = redis.call('HLEN', m)
out[2] = left
if left == 0 then
  redis.call('DEL', c, m, n, l)
  redis.call('PUBLISH', KEYS[5], cjson.encode({t = 'end', k = ARGV[3], sid = sid, by = ARGV[2]}))
else
  redis.call('PUBLISH', KEYS[5], cjson.encode({t = 'nodes', k = ARGV[3], sid = sid}))
end
return out
"""

# KEYS: c m n l nc bcast ; ARGV: sid, started, node, meta, conf key, ttl, members JSON
# (call_sid -> member value) -> 1 restored, 0 renewed, -1 another lifetime is live
RESTORE: Final = """
local c, m, n, l, nc = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local sid = redis.call('HGET', c, 'sid')
local ttl = tonumber(ARGV[6])
local result = 0
if not sid then
  redis.call('DEL', m, n, l)
  redis.call('HSET', c, 'sid', ARGV[1], 'started', ARGV[2], 'owner', ARGV[3], 'meta', ARGV[4])
  result = 1
elseif sid ~= ARGV[1] then
  return -1
end
if result == 1 or redis.call('HEXISTS', n, ARGV[3]) == 0 then
  local ok, members = pcall(cjson.decode, ARGV[7])
  local count = 0
  if ok and type(members) == 'table' then
    for call_sid, value in pairs(members) do
      redis.call('HSET', m, call_sid, value)
      count = count + 1
    end
  end
  if count > 0 then
    redis.call('HSET', n, ARGV[3], count)
    redis.call('PUBLISH', KEYS[6], cjson.encode({t = 'nodes', k = ARGV[5], sid = ARGV[1]}))
  end
end
redis.call('SADD', nc, ARGV[5])
for _, k in ipairs({c, m, n, l, nc}) do redis.call('EXPIRE', k, ttl) end
return result
"""

# KEYS: c n ; ARGV: this node -> the new owner ('' = none left / not ours)
HANDOVER: Final = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return '' end
local counts = redis.call('HGETALL', KEYS[2])
for i = 1, #counts, 2 do
  if counts[i] ~= ARGV[1] and (tonumber(counts[i + 1]) or 0) > 0 then
    redis.call('HSET', KEYS[1], 'owner', counts[i])
    return counts[i]
  end
end
return ''
"""

"""The Lua scripts behind `RedisRegistry`: each mutation of the registry is exactly one of them.

Every script takes the key prefix as ARGV[1] and builds key names from it, so one Redis can hold many
registries (one per test). Keys are not passed in KEYS, which is fine on one Redis but not on Redis Cluster.

Invariant kept by all scripts: `free:{model}` holds a worker with score `capacity - active_sessions` when it is
registered, `ready` and its liveness key exists. A worker whose liveness lapsed may linger there until an
acquire meets it (then it is dropped) or the reaper removes it; acquire checks liveness itself.
"""

_PRELUDE = """
local prefix = ARGV[1]
local function worker_key(id) return prefix .. 'worker:' .. id end
local function alive_key(id) return prefix .. 'worker:' .. id .. ':alive' end
local function sessions_key(id) return prefix .. 'worker:' .. id .. ':sessions' end
local function session_key(id) return prefix .. 'session:' .. id end
local function free_key(model) return prefix .. 'free:' .. model end

local function models_of(id)
  local raw = redis.call('HGET', worker_key(id), 'models_loaded')
  if not raw then return {} end
  return cjson.decode(raw)
end

-- Bring the worker's entries in free:{model} in line with its hash and liveness.
local function sync_free(id)
  local h = redis.call('HMGET', worker_key(id), 'status', 'capacity', 'active_sessions', 'models_loaded')
  if not h[4] then return end
  local listed = h[1] == 'ready' and redis.call('EXISTS', alive_key(id)) == 1
  local free = tonumber(h[2]) - tonumber(h[3])
  for _, model in ipairs(cjson.decode(h[4])) do
    if listed then
      redis.call('ZADD', free_key(model), free, id)
    else
      redis.call('ZREM', free_key(model), id)
    end
  end
end

local function end_sessions(id, now, ended_ttl_ms)
  for _, sid in ipairs(redis.call('SMEMBERS', sessions_key(id))) do
    local key = session_key(sid)
    if redis.call('HGET', key, 'status') == 'active' then
      redis.call('HSET', key, 'status', 'ended', 'ended_at', now)
      redis.call('PEXPIRE', key, ended_ttl_ms)
    end
  end
  redis.call('DEL', sessions_key(id))
end

local function drop_worker(id, now, ended_ttl_ms)
  end_sessions(id, now, ended_ttl_ms)
  for _, model in ipairs(models_of(id)) do redis.call('ZREM', free_key(model), id) end
  redis.call('DEL', worker_key(id), alive_key(id))
  return redis.call('SREM', prefix .. 'workers', id)
end
"""

# ARGV: prefix, worker_id, endpoint, capacity, models_json, now, liveness_ttl_ms, ended_ttl_ms
REGISTER = (
    _PRELUDE
    + """
local id, now = ARGV[2], ARGV[6]
drop_worker(id, now, ARGV[8])
redis.call('HSET', worker_key(id), 'endpoint', ARGV[3], 'status', 'ready', 'capacity', ARGV[4],
  'active_sessions', 0, 'models_loaded', ARGV[5], 'started_at', now, 'last_heartbeat', now)
redis.call('SET', alive_key(id), now, 'PX', ARGV[7])
redis.call('SADD', prefix .. 'workers', id)
sync_free(id)
return 1
"""
)

# ARGV: prefix, worker_id, now, liveness_ttl_ms. Never touches active_sessions.
HEARTBEAT = (
    _PRELUDE
    + """
local id = ARGV[2]
if redis.call('EXISTS', worker_key(id)) == 0 then return 0 end
redis.call('SET', alive_key(id), ARGV[3], 'PX', ARGV[4])
redis.call('HSET', worker_key(id), 'last_heartbeat', ARGV[3])
sync_free(id)
return 1
"""
)

# ARGV: prefix, worker_id, status
SET_STATUS = (
    _PRELUDE
    + """
local id = ARGV[2]
if redis.call('EXISTS', worker_key(id)) == 0 then return 0 end
redis.call('HSET', worker_key(id), 'status', ARGV[3])
sync_free(id)
return 1
"""
)

# ARGV: prefix, worker_id, now, ended_ttl_ms
DEREGISTER = (
    _PRELUDE
    + """
return drop_worker(ARGV[2], ARGV[3], ARGV[4])
"""
)

# ARGV: prefix, session_id, model, language, client_ip, now, excluded worker ids...
# Returns {worker_id, endpoint}, nil when no worker fits, or -1 when the session is already active.
ACQUIRE = (
    _PRELUDE
    + """
local sid, model, now = ARGV[2], ARGV[3], ARGV[6]
if redis.call('HGET', session_key(sid), 'status') == 'active' then return -1 end
local excluded, n_excluded = {}, 0
for i = 7, #ARGV do excluded[ARGV[i]] = true; n_excluded = n_excluded + 1 end

local function reserve(id)
  redis.call('HINCRBY', worker_key(id), 'active_sessions', 1)
  sync_free(id)
  redis.call('DEL', session_key(sid))
  redis.call('HSET', session_key(sid), 'worker_id', id, 'status', 'active', 'model', model,
    'language', ARGV[4], 'client_ip', ARGV[5], 'started_at', now, 'ended_at', '')
  redis.call('SADD', sessions_key(id), sid)
  return {id, redis.call('HGET', worker_key(id), 'endpoint')}
end

-- Best first. Excluded entries stay and are stepped over; every other entry visited is either chosen or
-- leaves the range (dead or not ready: removed; full: rescored to 0), so the loop ends.
local index, offset = free_key(model), 0
while true do
  local ids = redis.call('ZREVRANGEBYSCORE', index, '+inf', 1, 'LIMIT', offset, n_excluded + 8)
  if #ids == 0 then return nil end
  for _, id in ipairs(ids) do
    if excluded[id] then
      offset = offset + 1
    else
      local h = redis.call('HMGET', worker_key(id), 'status', 'capacity', 'active_sessions')
      local live = redis.call('EXISTS', alive_key(id)) == 1
      if live and h[1] == 'ready' and tonumber(h[3]) < tonumber(h[2]) then return reserve(id) end
      if h[1] then sync_free(id) end
      local score = redis.call('ZSCORE', index, id)
      if score and tonumber(score) >= 1 then redis.call('ZREM', index, id) end
    end
  end
end
"""
)

# ARGV: prefix, session_id, now, ended_ttl_ms. Returns 1 for the call that ended the session, else 0.
RELEASE = (
    _PRELUDE
    + """
local key = session_key(ARGV[2])
local h = redis.call('HMGET', key, 'status', 'worker_id')
if h[1] ~= 'active' then return 0 end
redis.call('HSET', key, 'status', 'ended', 'ended_at', ARGV[3])
redis.call('PEXPIRE', key, ARGV[4])
local id = h[2]
-- Only a session still listed under its worker holds a slot there (a re-registered worker starts at 0).
if redis.call('SREM', sessions_key(id), ARGV[2]) == 1 and redis.call('EXISTS', worker_key(id)) == 1 then
  if redis.call('HINCRBY', worker_key(id), 'active_sessions', -1) < 0 then
    redis.call('HSET', worker_key(id), 'active_sessions', 0)
  end
  sync_free(id)
end
return 1
"""
)

# ARGV: prefix, now, ended_ttl_ms. Returns the ids of the workers removed.
REAP = (
    _PRELUDE
    + """
local reaped = {}
for _, id in ipairs(redis.call('SMEMBERS', prefix .. 'workers')) do
  if redis.call('EXISTS', alive_key(id)) == 0 then
    drop_worker(id, ARGV[2], ARGV[3])
    table.insert(reaped, id)
  end
end
return reaped
"""
)

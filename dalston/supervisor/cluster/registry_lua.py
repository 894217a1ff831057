"""The Lua scripts behind `RedisRegistry`: each mutation of the registry is exactly one of them.

Every key a script touches is declared in KEYS, and every key shares one hash tag (the prefix in braces), so
the scripts run on Redis Cluster. For that, no script may build a key name from data it reads: per-worker and
per-session keys would need exactly that (acquire picks the worker inside the script; reaping finds the
sessions inside it), so workers and sessions live in a few fixed keys instead. Keys, with T = `{prefix}`:

- `T workers`   hash: worker id -> JSON {endpoint, status, capacity, active, models, instance, started_at,
                 last_heartbeat}
- `T alive`     sorted set: worker id -> liveness deadline (ms, Redis TIME); lapsed entries wait for the reaper
- `T sessions`  hash: session id -> JSON {worker_id, status, model, language, client_ip, started_at, ended_at,
                 ended_by}; ended ones are dropped once their expiry in `T ended` passes
- `T leases`    sorted set: active session id -> lease deadline (ms)
- `T by_worker` sorted set, all scores 0: `worker id NUL session id` for every active session (a lex range
                 gives one worker's sessions)
- `T ended`     sorted set: ended session id -> when its record is dropped (ms); every script drops a few
- `T suspect`   sorted set: worker id -> until when acquire skips it (ms)
- `T models`    set: every model a worker ever registered with
- `T free:{model}` sorted set per model: worker id -> free slots (`capacity - active`)

The per-model keys are declared too: the caller passes the models it knows (ARGV[1] = how many, then the
names, matching KEYS[9..]). A script that meets a model it was not given changes nothing of that model and
returns {'missing', model...}; the caller adds them and calls again.

Every script returns a table whose first element is a status string.

Invariant kept by all scripts: `free:{model}` holds a worker with score `capacity - active` when it is
registered, `ready` and alive. A worker whose liveness lapsed may linger there until an acquire meets it (then
it is dropped) or the reaper removes it; acquire checks liveness itself.
"""

FIXED_KEYS = ("workers", "alive", "sessions", "leases", "by_worker", "ended", "suspect", "models")

_PRELUDE = """
local rcall = redis.call
local K_WORKERS, K_ALIVE, K_SESSIONS, K_LEASES = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_BY_WORKER, K_ENDED, K_SUSPECT, K_MODELS = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local n_models = tonumber(ARGV[1])
local free_keys = {}
for i = 1, n_models do free_keys[ARGV[1 + i]] = KEYS[8 + i] end
local A = {}
for i = n_models + 2, #ARGV do A[#A + 1] = ARGV[i] end
local t = rcall('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function missing(models, out)
  out = out or {}
  for _, m in ipairs(models) do
    if not free_keys[m] then out[#out + 1] = m end
  end
  return out
end

local function load_worker(id)
  local raw = rcall('HGET', K_WORKERS, id)
  if raw then return cjson.decode(raw) end
  return nil
end

local function save_worker(id, w) rcall('HSET', K_WORKERS, id, cjson.encode(w)) end

local function load_session(sid)
  local raw = rcall('HGET', K_SESSIONS, sid)
  if raw then return cjson.decode(raw) end
  return nil
end

local function is_alive(id)
  local deadline = rcall('ZSCORE', K_ALIVE, id)
  return deadline ~= false and tonumber(deadline) > now_ms
end

local function is_suspect(id)
  local till = rcall('ZSCORE', K_SUSPECT, id)
  return till ~= false and tonumber(till) > now_ms
end

-- Bring the worker's entries in free:{model} in line with its record and liveness.
local function sync_free(id, w)
  local listed = w.status == 'ready' and is_alive(id)
  for _, m in ipairs(w.models) do
    if listed then
      rcall('ZADD', free_keys[m], w.capacity - w.active, id)
    else
      rcall('ZREM', free_keys[m], id)
    end
  end
end

local function sessions_of(id)
  local members = rcall('ZRANGEBYLEX', K_BY_WORKER, '[' .. id .. '\\0', '(' .. id .. '\\1')
  local out = {}
  for i, member in ipairs(members) do out[i] = string.sub(member, #id + 2) end
  return out
end

local function end_session(sid, s, stamp, ended_ms, by)
  s.status, s.ended_at, s.ended_by = 'ended', stamp, by
  rcall('HSET', K_SESSIONS, sid, cjson.encode(s))
  rcall('ZADD', K_ENDED, now_ms + tonumber(ended_ms), sid)
  rcall('ZREM', K_LEASES, sid)
  rcall('ZREM', K_BY_WORKER, s.worker_id .. '\\0' .. sid)
end

local function start_session(sid, id, s, lease_ms)
  s.worker_id, s.status, s.ended_at, s.ended_by = id, 'active', '', ''
  rcall('HSET', K_SESSIONS, sid, cjson.encode(s))
  rcall('ZREM', K_ENDED, sid)
  rcall('ZADD', K_LEASES, now_ms + tonumber(lease_ms), sid)
  rcall('ZADD', K_BY_WORKER, 0, id .. '\\0' .. sid)
end

-- Ended records whose time is up: a few per call keeps `sessions` bounded without a sweep.
local function prune_ended()
  for _, sid in ipairs(rcall('ZRANGEBYSCORE', K_ENDED, '-inf', now_ms, 'LIMIT', 0, 16)) do
    rcall('HDEL', K_SESSIONS, sid)
    rcall('ZREM', K_ENDED, sid)
  end
end

local function drop_worker(id, w, stamp, ended_ms, by)
  for _, sid in ipairs(sessions_of(id)) do
    local s = load_session(sid)
    if s and s.status == 'active' then end_session(sid, s, stamp, ended_ms, by) end
  end
  for _, m in ipairs(w.models) do rcall('ZREM', free_keys[m], id) end
  rcall('HDEL', K_WORKERS, id)
  rcall('ZREM', K_ALIVE, id)
  rcall('ZREM', K_SUSPECT, id)
end

-- A session the worker says it runs: renew its lease, or adopt it (unknown, or ended by the registry's own
-- inference: reaped, replaced, lease lapsed). Not one a gateway released, nor one active on another worker.
local function adopt(id, w, sid, stamp, lease_ms)
  local s = load_session(sid)
  if s and s.status == 'active' then
    if s.worker_id == id then rcall('ZADD', K_LEASES, now_ms + tonumber(lease_ms), sid) end
    return
  end
  if s and s.ended_by == 'release' then return end
  s = s or {model = '', language = '', client_ip = '', started_at = stamp}
  start_session(sid, id, s, lease_ms)
  w.active = w.active + 1
end

local function reconcile(id, w, live, stamp, lease_ms, ended_ms)
  local listed = {}
  for _, sid in ipairs(live) do
    listed[sid] = true
    adopt(id, w, sid, stamp, lease_ms)
  end
  for _, sid in ipairs(sessions_of(id)) do
    if not listed[sid] then
      local lease = rcall('ZSCORE', K_LEASES, sid)
      if lease == false or tonumber(lease) <= now_ms then
        end_session(sid, load_session(sid) or {worker_id = id}, stamp, ended_ms, 'lease')
        w.active = math.max(0, w.active - 1)
      end
    end
  end
end
"""


def _script(body: str) -> str:
    return _PRELUDE + body


# A: worker_id, endpoint, capacity, models_json, instance, stamp, liveness_ms, ended_ms, lease_ms, live ids...
REGISTER = _script("""
local id, instance, stamp, ended_ms, lease_ms = A[1], A[5], A[6], A[8], A[9]
local models = cjson.decode(A[4])
local old = load_worker(id)
local old_instance = old and old.instance or ''
if old_instance ~= '' and old_instance ~= instance and is_alive(id) then return {'taken'} end
local miss = missing(models, old and missing(old.models) or {})
if #miss > 0 then return {'missing', unpack(miss)} end
local live = {}
for i = 10, #A do live[#live + 1] = A[i] end
if old then
  local listed = {}
  for _, sid in ipairs(live) do listed[sid] = true end
  for _, sid in ipairs(sessions_of(id)) do
    if not listed[sid] then end_session(sid, load_session(sid) or {worker_id = id}, stamp, ended_ms, 'replaced') end
  end
  for _, m in ipairs(old.models) do rcall('ZREM', free_keys[m], id) end
end
local w = {endpoint = A[2], status = 'ready', capacity = tonumber(A[3]), active = #sessions_of(id),
  models = models, instance = instance, started_at = stamp, last_heartbeat = stamp}
rcall('ZADD', K_ALIVE, now_ms + tonumber(A[7]), id)
for _, sid in ipairs(live) do adopt(id, w, sid, stamp, lease_ms) end
for _, m in ipairs(models) do rcall('SADD', K_MODELS, m) end
save_worker(id, w)
sync_free(id, w)
prune_ended()
return {'ok'}
""")

# A: worker_id, stamp, liveness_ms, instance, lease_ms, ended_ms, live ids...
HEARTBEAT = _script("""
local id, stamp = A[1], A[2]
local w = load_worker(id)
if not w or (A[4] ~= '' and w.instance ~= A[4]) then return {'unknown'} end
local miss = missing(w.models)
if #miss > 0 then return {'missing', unpack(miss)} end
local live = {}
for i = 7, #A do live[#live + 1] = A[i] end
rcall('ZADD', K_ALIVE, now_ms + tonumber(A[3]), id)
w.last_heartbeat = stamp
reconcile(id, w, live, stamp, A[5], A[6])
save_worker(id, w)
sync_free(id, w)
prune_ended()
return {'ok'}
""")

# A: worker_id, status
SET_STATUS = _script("""
local w = load_worker(A[1])
if not w then return {'unknown'} end
local miss = missing(w.models)
if #miss > 0 then return {'missing', unpack(miss)} end
w.status = A[2]
save_worker(A[1], w)
sync_free(A[1], w)
return {'ok'}
""")

# A: worker_id, stamp, ended_ms
DEREGISTER = _script("""
local w = load_worker(A[1])
if not w then return {'unknown'} end
local miss = missing(w.models)
if #miss > 0 then return {'missing', unpack(miss)} end
drop_worker(A[1], w, A[2], A[3], 'deregistered')
prune_ended()
return {'ok'}
""")

# A: session_id, model, language, client_ip, stamp, lease_ms, excluded worker ids...
# Returns {'ok', worker_id, endpoint}, {'none'}, or {'exists'} when the session is already active.
ACQUIRE = _script("""
local sid, model = A[1], A[2]
local s = load_session(sid)
if s and s.status == 'active' then return {'exists'} end
local index = free_keys[model]
if not index then
  if rcall('SISMEMBER', K_MODELS, model) == 1 then return {'missing', model} end
  return {'none'}
end
local excluded, n_excluded = {}, 0
for i = 7, #A do excluded[A[i]] = true; n_excluded = n_excluded + 1 end

-- Best first. Excluded and suspect entries stay and are stepped over; every other entry visited is either
-- chosen or leaves the range (dead or not ready: removed; full: rescored to 0), so the loop ends.
local offset = 0
while true do
  local ids = rcall('ZREVRANGEBYSCORE', index, '+inf', 1, 'LIMIT', offset, n_excluded + 8)
  if #ids == 0 then prune_ended(); return {'none'} end
  for _, id in ipairs(ids) do
    if excluded[id] or is_suspect(id) then
      offset = offset + 1
    else
      local w = load_worker(id)
      if w then
        local miss = missing(w.models)
        if #miss > 0 then return {'missing', unpack(miss)} end
        if is_alive(id) and w.status == 'ready' and w.active < w.capacity then
          w.active = w.active + 1
          save_worker(id, w)
          sync_free(id, w)
          start_session(sid, id, {model = model, language = A[3], client_ip = A[4], started_at = A[5]}, A[6])
          prune_ended()
          return {'ok', id, w.endpoint}
        end
        sync_free(id, w)
      end
      local score = rcall('ZSCORE', index, id)
      if score and tonumber(score) >= 1 then rcall('ZREM', index, id) end
    end
  end
end
""")

# A: session_id, worker_id, model, language, client_ip, stamp, lease_ms. A move that found no other worker: the
# call goes on where it was, and so does its record. Returns {'ok', 1} when the session is active there.
REINSTATE = _script("""
local sid, id = A[1], A[2]
local w = load_worker(id)
if not w then return {'ok', 0} end
local miss = missing(w.models)
if #miss > 0 then return {'missing', unpack(miss)} end
local s = load_session(sid)
if s and s.status == 'active' then
  if s.worker_id == id then return {'ok', 1} end
  return {'ok', 0}
end
start_session(sid, id, s or {model = A[3], language = A[4], client_ip = A[5], started_at = A[6]}, A[7])
w.active = w.active + 1
save_worker(id, w)
sync_free(id, w)
return {'ok', 1}
""")

# A: session_id, stamp, ended_ms, worker_id ('' for any). Returns {'ok', 1} for the call that ended the session,
# else {'ok', 0}. With a worker id, a session active on another worker (it moved there) is left alone.
RELEASE = _script("""
local sid = A[1]
local s = load_session(sid)
if not s or s.status ~= 'active' then return {'ok', 0} end
if A[4] ~= '' and s.worker_id ~= A[4] then return {'ok', 0} end
local w = load_worker(s.worker_id)
if w then
  local miss = missing(w.models)
  if #miss > 0 then return {'missing', unpack(miss)} end
end
end_session(sid, s, A[2], A[3], 'release')
if w then
  w.active = math.max(0, w.active - 1)
  save_worker(s.worker_id, w)
  sync_free(s.worker_id, w)
end
prune_ended()
return {'ok', 1}
""")

# A: worker_id, for_ms. A longer suspicion already recorded is kept.
MARK_SUSPECT = _script("""
rcall('ZREMRANGEBYSCORE', K_SUSPECT, '-inf', now_ms)
rcall('ZADD', K_SUSPECT, 'GT', now_ms + tonumber(A[2]), A[1])
return {'ok'}
""")

# A: stamp, ended_ms. Returns {'ok', removed worker ids...}.
REAP = _script("""
local dead = rcall('ZRANGEBYSCORE', K_ALIVE, '-inf', now_ms)
local records, miss = {}, {}
for i, id in ipairs(dead) do
  records[i] = load_worker(id)
  if records[i] then missing(records[i].models, miss) end
end
if #miss > 0 then return {'missing', unpack(miss)} end
for i, id in ipairs(dead) do
  if records[i] then
    drop_worker(id, records[i], A[1], A[2], 'reaped')
  else
    rcall('ZREM', K_ALIVE, id)
  end
end
rcall('ZREMRANGEBYSCORE', K_SUSPECT, '-inf', now_ms)
prune_ended()
return {'ok', unpack(dead)}
""")

# No A. Returns {'ok', known_json, ready_json}: known models, and those whose index has a live worker.
# Dead entries met on the way are dropped from the index, so the walk is amortised O(1) per model.
MODELS = _script("""
local known = rcall('SMEMBERS', K_MODELS)
local miss = missing(known)
if #miss > 0 then return {'missing', unpack(miss)} end
local ready = {}
for _, m in ipairs(known) do
  while true do
    local top = rcall('ZREVRANGE', free_keys[m], 0, 0)
    if #top == 0 then break end
    if is_alive(top[1]) then ready[#ready + 1] = m; break end
    rcall('ZREM', free_keys[m], top[1])
  end
end
return {'ok', cjson.encode(known), cjson.encode(ready)}
""")

# Tests only: the same scripts with every redis.call checked against KEYS (an undeclared key is an error).
_KEY_CHECK = """
local declared = {}
for _, k in ipairs(KEYS) do declared[k] = true end
local rcall = function(cmd, key, ...)
  if key == nil then return redis.call(cmd) end
  if not declared[key] then error('undeclared key ' .. tostring(key) .. ' in ' .. cmd) end
  return redis.call(cmd, key, ...)
end
"""


def key_checked(source: str) -> str:
    """`source` with every call checked against KEYS: an undeclared key makes the script fail loudly."""
    return source.replace("local rcall = redis.call\n", _KEY_CHECK, 1)

"""Concurrent-session bounds counted across every gateway (DESIGN §6, §11): who holds how many sessions.

A holder is an API key or, with no keys configured, a client address. Each session it runs is a hold that lapses
after a TTL unless its gateway holds it again in time, so a gateway that dies gives its holds back within one
TTL. `HoldTable` is the in-process form (pure: `now` is passed in); `HOLD` and `UNHOLD` are the Redis scripts,
each touching only the one key it declares. Redis key names carry a digest of the holder, never an API key.
"""

from __future__ import annotations

import hashlib


def holder_key(prefix: str, holder: str) -> str:
    return f"{prefix}holds:{hashlib.sha256(holder.encode('utf-8', 'surrogateescape')).hexdigest()[:32]}"


class HoldTable:
    def __init__(self) -> None:
        self._holds: dict[str, dict[str, float]] = {}  # holder -> session id -> lapses at

    def hold(self, holder: str, session_id: str, limit: int, ttl_s: float, now: float) -> bool:
        live = {s: until for s, until in self._holds.get(holder, {}).items() if until > now}
        if session_id not in live and len(live) >= limit:
            self._holds[holder] = live
            return False
        live[session_id] = now + ttl_s
        self._holds[holder] = live
        return True

    def unhold(self, holder: str, session_id: str) -> None:
        held = self._holds.get(holder)
        if held is not None:
            held.pop(session_id, None)
            if not held:
                del self._holds[holder]

    def holders(self) -> int:
        return len(self._holds)


# KEYS: the holder's key; ARGV: session id, limit, ttl ms. 1 if held (again), 0 if at the limit.
HOLD = """
local key, session, limit, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if not redis.call('ZSCORE', key, session) and redis.call('ZCARD', key) >= limit then return 0 end
redis.call('ZADD', key, now + ttl, session)
redis.call('PEXPIRE', key, ttl)
return 1
"""

# KEYS: the holder's key; ARGV: session id.
UNHOLD = """
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

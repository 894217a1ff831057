"""Connecting to Redis from a URL: a plain server, or a primary found through Redis Sentinel.

- `redis://[user:password@]host:port/db` (and `rediss://`, `unix://`): redis-py's own URL handling;
- `redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]`: the Sentinels at those
  addresses name the current primary of `service_name`; redis-py's `redis.asyncio.sentinel` asks them again
  whenever a connection is (re)made, so after a failover the next command reaches the promoted replica.
  The credentials are the data nodes'; `?sentinel_password=` gives the Sentinels' own when they need one.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

SENTINEL_SCHEME = "redis+sentinel"
_SENTINEL_SOCKET_TIMEOUT_S = 1.0
_DEFAULT_SENTINEL_PORT = 26379
DEFAULT_SOCKET_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SentinelAddress:
    """Where the Sentinels are and which primary to ask them for."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None


def _host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else _DEFAULT_SENTINEL_PORT
    host, sep, port = text.rpartition(":")
    return (host, int(port)) if sep else (text, _DEFAULT_SENTINEL_PORT)


def parse_sentinel_url(url: str) -> SentinelAddress:
    """Read a `redis+sentinel://` URL; ValueError when it does not name at least one Sentinel and a service."""
    scheme, sep, rest = url.partition("://")
    if scheme != SENTINEL_SCHEME or not sep:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL: {url!r}")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) if colon else None)
    parts = [p for p in path.split("/") if p]
    if not hosts or not parts:
        raise ValueError(f"{SENTINEL_SCHEME} URL needs host:port[,host:port]/service_name: {url!r}")
    try:
        sentinels = tuple(_host_port(h) for h in hosts.split(",") if h)
        db = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise ValueError(f"bad port or db in {url!r}") from None
    sentinel_password = parse_qs(query).get("sentinel_password", [None])[0]
    return SentinelAddress(sentinels, unquote(parts[0]), db, username, password, sentinel_password)


@dataclass(frozen=True)
class RedisConnection:
    """A client, and the Sentinel clients behind it if any; `aclose()` closes all of them."""

    client: aioredis.Redis
    sentinel: Sentinel | None = None

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.sentinel is not None:
            for sentinel_client in self.sentinel.sentinels:
                await sentinel_client.aclose()


def _no_retry() -> Retry:
    # Never re-send a command whose reply was lost: a script that ran would run twice (an acquire would then
    # report its own session as taken). The registry's leases and the callers' retries handle lost replies.
    return Retry(NoBackoff(), 0)


def connect(url: str, *, socket_timeout_s: float | None = DEFAULT_SOCKET_TIMEOUT_S) -> RedisConnection:
    """A client (decode_responses=True) for `url`, plain or through Sentinel. Connects lazily.

    `socket_timeout_s` bounds every connect and every reply: a Redis that hangs (paused, partitioned) makes
    calls fail instead of waiting for ever.
    """
    if not url.startswith(SENTINEL_SCHEME + "://"):
        client = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=socket_timeout_s,
                                         socket_connect_timeout=socket_timeout_s, retry=_no_retry())
        return RedisConnection(client)
    address = parse_sentinel_url(url)
    sentinel_kwargs: dict[str, object] = {"socket_timeout": _SENTINEL_SOCKET_TIMEOUT_S}
    if address.sentinel_password is not None:
        sentinel_kwargs["password"] = address.sentinel_password
    sentinel = Sentinel(
        list(address.sentinels),
        sentinel_kwargs=sentinel_kwargs,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        retry=_no_retry(),
        decode_responses=True,
        username=address.username,
        password=address.password,
        db=address.db,
    )
    return RedisConnection(sentinel.master_for(address.service_name, redis_class=aioredis.Redis), sentinel)

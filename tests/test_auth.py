"""API keys on the gateway: where a key may come from, and the bound on concurrent sessions per key (or per
client address with no keys), counted across every gateway through the registry."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import make_mocked_request
from redis_server import RedisServer

from dalston.supervisor.cluster.memory_registry import MemoryRegistry
from dalston.supervisor.cluster.redis_registry import RedisRegistry
from dalston.web.auth import ANONYMOUS, ApiKeys


def request(path: str = "/", **headers: str):  # type: ignore[no-untyped-def]
    return make_mocked_request("GET", path, headers={k.replace("_", "-"): v for k, v in headers.items()})


def test_a_key_is_read_from_the_bearer_header_the_api_key_header_the_query_or_the_subprotocol() -> None:
    keys = ApiKeys(("k1",), max_sessions_per_key=2, registry=MemoryRegistry())
    assert keys.key_of(request(Authorization="Bearer k1")) == "k1"
    assert keys.key_of(request(X_API_Key="k1")) == "k1"
    assert keys.key_of(request("/?api_key=k1")) == "k1"
    assert keys.key_of(request(Sec_WebSocket_Protocol="json, dalston.key.k1")) == "k1"
    assert keys.key_of(request()) is None


def test_only_configured_keys_are_authorized_and_without_keys_everyone_is() -> None:
    keys = ApiKeys(("k1",), max_sessions_per_key=2, registry=MemoryRegistry())
    assert keys.authorized("k1") and not keys.authorized("k2") and not keys.authorized(None)
    open_door = ApiKeys((), max_sessions_per_key=2, registry=MemoryRegistry())
    assert open_door.key_of(request()) == ANONYMOUS and open_door.authorized(ANONYMOUS)


async def test_a_key_gets_at_most_its_bound_of_concurrent_sessions_and_releasing_frees_one() -> None:
    keys = ApiKeys(("k1", "k2"), max_sessions_per_key=2, registry=MemoryRegistry())
    assert await keys.acquire("k1", "s1") and await keys.acquire("k1", "s2")
    assert not await keys.acquire("k1", "s3")
    assert await keys.acquire("k2", "s4")  # another key has its own bound
    await keys.release("k1", "s1")
    assert await keys.acquire("k1", "s5")
    await keys.release("k1", "never-acquired")  # releasing what was never held changes nothing
    assert not await keys.acquire("k1", "s6")
    await keys.close()


async def test_with_no_keys_configured_sessions_count_per_client_ip_and_made_up_keys_are_no_bucket() -> None:
    keys = ApiKeys((), max_sessions_per_key=16, registry=MemoryRegistry(), max_sessions_per_client_ip=2)
    made_up = [keys.holder(keys.key_of(request(f"/?api_key=k{n}")), "10.0.0.7") for n in range(3)]
    assert made_up == ["ip:10.0.0.7"] * 3
    assert await keys.acquire(made_up[0], "s0") and await keys.acquire(made_up[1], "s1")
    assert not await keys.acquire(made_up[2], "s2")
    assert await keys.acquire(keys.holder(None, "10.0.0.8"), "s3")  # another address has its own bound
    await keys.close()


async def test_the_hold_table_keeps_only_those_with_sessions_now() -> None:
    registry = MemoryRegistry()
    keys = ApiKeys((), max_sessions_per_key=16, registry=registry)
    for n in range(100):
        holder = keys.holder(None, f"10.0.0.{n}")
        assert await keys.acquire(holder, f"s{n}")
        await keys.release(holder, f"s{n}")
    assert keys.holders() == 0 and registry._holds.holders() == 0
    await keys.close()


def test_a_key_with_bytes_that_are_not_utf8_is_refused_not_an_error() -> None:
    keys = ApiKeys(("k1",), max_sessions_per_key=2, registry=MemoryRegistry())
    assert not keys.authorized("k1\udcc3")  # how aiohttp hands over an undecodable header byte


def test_the_key_subprotocol_is_found_for_the_handshake_to_echo() -> None:
    keys = ApiKeys(("k1",), max_sessions_per_key=2, registry=MemoryRegistry())
    assert keys.subprotocol(request(Sec_WebSocket_Protocol="json, dalston.key.k1")) == "dalston.key.k1"
    assert keys.subprotocol(request()) is None


async def test_a_keys_bound_is_shared_by_every_gateway_on_one_redis(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    registries = [RedisRegistry.from_url(redis_server.url, prefix=redis_prefix) for _ in range(2)]
    first, second = (ApiKeys(("k1",), max_sessions_per_key=3, registry=r) for r in registries)
    try:
        assert await first.acquire("k1", "a1") and await first.acquire("k1", "a2")
        assert await second.acquire("k1", "b1")
        assert not await second.acquire("k1", "b2") and not await first.acquire("k1", "a3")  # 3 in all
        await first.release("k1", "a1")
        assert await second.acquire("k1", "b2")
    finally:
        for keys, registry in zip((first, second), registries, strict=True):
            await keys.close()
            await registry.close()


async def test_the_holds_of_a_gateway_that_died_lapse_and_a_living_gateway_keeps_its_own(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    registries = [RedisRegistry.from_url(redis_server.url, prefix=redis_prefix) for _ in range(2)]
    living = ApiKeys(("k1",), max_sessions_per_key=2, registry=registries[0], hold_ttl_s=0.6)
    dead = ApiKeys(("k1",), max_sessions_per_key=2, registry=registries[1], hold_ttl_s=0.6)
    try:
        assert await living.acquire("k1", "kept") and await dead.acquire("k1", "lost")
        await dead.close()  # the gateway is gone: nobody renews its hold any more
        assert not await living.acquire("k1", "new")
        await asyncio.sleep(1.5)  # past the TTL; the living gateway renewed "kept" meanwhile
        assert await living.acquire("k1", "new")
        assert not await living.acquire("k1", "one too many")  # "kept" still counts
    finally:
        await living.close()
        for registry in registries:
            await registry.close()

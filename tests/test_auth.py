"""API keys on the gateway: where a key may come from, and the per-key bound on concurrent sessions."""

from aiohttp.test_utils import make_mocked_request

from dalston.web.auth import ANONYMOUS, ApiKeys


def request(path: str = "/", **headers: str):  # type: ignore[no-untyped-def]
    return make_mocked_request("GET", path, headers={k.replace("_", "-"): v for k, v in headers.items()})


def test_a_key_is_read_from_the_bearer_header_the_api_key_header_the_query_or_the_subprotocol() -> None:
    keys = ApiKeys(("k1",), max_sessions_per_key=2)
    assert keys.key_of(request(Authorization="Bearer k1")) == "k1"
    assert keys.key_of(request(X_API_Key="k1")) == "k1"
    assert keys.key_of(request("/?api_key=k1")) == "k1"
    assert keys.key_of(request(Sec_WebSocket_Protocol="json, dalston.key.k1")) == "k1"
    assert keys.key_of(request()) is None


def test_only_configured_keys_are_authorized_and_without_keys_everyone_is() -> None:
    keys = ApiKeys(("k1",), max_sessions_per_key=2)
    assert keys.authorized("k1") and not keys.authorized("k2") and not keys.authorized(None)
    open_door = ApiKeys((), max_sessions_per_key=2)
    assert open_door.key_of(request()) == ANONYMOUS and open_door.authorized(ANONYMOUS)


def test_a_key_gets_at_most_its_bound_of_concurrent_sessions_and_releasing_frees_one() -> None:
    keys = ApiKeys(("k1", "k2"), max_sessions_per_key=2)
    assert keys.acquire("k1") and keys.acquire("k1")
    assert not keys.acquire("k1")
    assert keys.acquire("k2")  # another key has its own bound
    keys.release("k1")
    assert keys.acquire("k1")
    keys.release("never-acquired")  # releasing what was never held changes nothing
    assert not keys.acquire("k1")

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


def test_with_no_keys_configured_sessions_count_per_client_ip_and_made_up_keys_are_no_bucket() -> None:
    keys = ApiKeys((), max_sessions_per_key=16, max_sessions_per_client_ip=2)
    made_up = [keys.holder(keys.key_of(request(f"/?api_key=k{n}")), "10.0.0.7") for n in range(3)]
    assert made_up == ["ip:10.0.0.7"] * 3
    assert keys.acquire(made_up[0]) and keys.acquire(made_up[1]) and not keys.acquire(made_up[2])
    assert keys.acquire(keys.holder(None, "10.0.0.8"))  # another address has its own bound


def test_the_count_table_holds_only_those_with_sessions_now() -> None:
    keys = ApiKeys((), max_sessions_per_key=16)
    for n in range(100):
        holder = keys.holder(None, f"10.0.0.{n}")
        assert keys.acquire(holder)
        keys.release(holder)
    assert keys.holders() == 0


def test_a_key_with_bytes_that_are_not_utf8_is_refused_not_an_error() -> None:
    keys = ApiKeys(("k1",), max_sessions_per_key=2)
    assert not keys.authorized("k1\udcc3")  # how aiohttp hands over an undecodable header byte


def test_the_key_subprotocol_is_found_for_the_handshake_to_echo() -> None:
    keys = ApiKeys(("k1",), max_sessions_per_key=2)
    assert keys.subprotocol(request(Sec_WebSocket_Protocol="json, dalston.key.k1")) == "dalston.key.k1"
    assert keys.subprotocol(request()) is None

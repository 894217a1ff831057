"""The wire protocol's parsers accept exactly the documented messages and reject the rest with a code."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dalston.actors.protocol import (
    End,
    ErrorCode,
    Flush,
    ProtocolError,
    StreamParams,
    parse_client_message,
    parse_stream_params,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def test_flush_and_end_are_the_client_messages() -> None:
    assert parse_client_message('{"type": "flush"}') == Flush()
    assert parse_client_message('{"type": "end", "extra": 1}') == End()


@given(st.text(max_size=200))
def test_any_text_either_parses_or_fails_with_invalid_message(text: str) -> None:
    try:
        message = parse_client_message(text)
    except ProtocolError as error:
        assert error.code is ErrorCode.INVALID_MESSAGE and error.message
    else:
        assert message in (Flush(), End())


@given(json_values)
def test_any_json_value_that_is_not_a_known_message_is_invalid_message(value: object) -> None:
    text = json.dumps(value)
    is_known = isinstance(value, dict) and value.get("type") in ("flush", "end")
    if is_known:
        assert parse_client_message(text) in (Flush(), End())
    else:
        with pytest.raises(ProtocolError) as caught:
            parse_client_message(text)
        assert caught.value.code is ErrorCode.INVALID_MESSAGE


def test_default_stream_params_follow_the_design() -> None:
    assert parse_stream_params({}) == StreamParams("auto", "fast", False, True, 16000, "pcm_s16le")


@pytest.mark.parametrize(
    "query",
    [
        {"sample_rate": "7999"},
        {"sample_rate": "48001"},
        {"sample_rate": "16k"},
        {"language": "klingon"},
        {"word_timestamps": "maybe"},
        {"encoding": "opus"},
        {"model": "../../etc/passwd"},
        {"unknown": "1"},
    ],
)
def test_bad_query_parameters_are_invalid_request_naming_the_parameter(query: dict[str, str]) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_stream_params(query)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert next(iter(query)) in caught.value.message


@given(st.dictionaries(st.sampled_from(["language", "model", "word_timestamps", "interim_results",
                                        "sample_rate", "encoding"]), st.text(max_size=12)))
def test_any_query_either_parses_to_valid_params_or_is_invalid_request(query: dict[str, str]) -> None:
    try:
        params = parse_stream_params(query)
    except ProtocolError as error:
        assert error.code is ErrorCode.INVALID_REQUEST
    else:
        assert 8000 <= params.sample_rate <= 48000
        assert StreamParams.from_json(params.to_json()) == params


def test_every_error_code_that_ends_a_session_has_a_close_code() -> None:
    assert ErrorCode.NO_CAPACITY.close_code == 1013
    assert ErrorCode.INVALID_AUDIO.close_code == 1007
    assert ErrorCode.INVALID_MESSAGE.close_code is None
    assert all(code.close_code is None or 1000 <= code.close_code < 5000 for code in ErrorCode)

"""The wire protocol's parsers accept exactly the documented messages and reject the rest with a code."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dalston.actors.speech.protocol import (
    Configure,
    End,
    ErrorCode,
    Flush,
    Keepalive,
    ProtocolError,
    SessionBounds,
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
        assert isinstance(message, Flush | End | Keepalive | Configure)


@given(json_values)
def test_any_json_value_that_is_not_a_known_message_is_invalid_message(value: object) -> None:
    text = json.dumps(value)
    is_known = isinstance(value, dict) and value.get("type") in ("flush", "end", "keepalive")
    if is_known:
        assert parse_client_message(text) in (Flush(), End(), Keepalive())
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
        {"encoding": "mp3"},
        {"channels": "0"},
        {"channels": "9"},
        {"min_silence_ms": "20"},
        {"min_silence_ms": "1.5"},
        {"max_segment_s": "45"},
        {"max_segment_s": "nan"},
        {"vad_threshold": "1.5"},
        {"keyterms": ",".join(f"t{i}" for i in range(51))},
        {"keyterms": "x" * 51},
        {"prompt": "word " * 101},
        {"language_detection": "always"},
    ],
)
def test_bad_query_parameters_are_invalid_request_naming_the_parameter(query: dict[str, str]) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_stream_params(query, SessionBounds())
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert next(iter(query)) in caught.value.message


@given(st.dictionaries(st.sampled_from(["language", "model", "word_timestamps", "interim_results", "sample_rate",
                                        "encoding", "channels", "min_silence_ms", "max_segment_s",
                                        "vad_threshold", "keyterms", "prompt", "language_detection"]),
                       st.text(max_size=12) | st.sampled_from(["1", "2", "500", "0.5", "20.0", "pcm_mulaw"])))
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


def test_tuning_parameters_within_bounds_are_parsed_and_round_trip_through_the_link() -> None:
    params = parse_stream_params({"encoding": "pcm_mulaw", "sample_rate": "8000", "channels": "2",
                                  "min_silence_ms": "800", "max_segment_s": "12.5", "vad_threshold": "0.6",
                                  "keyterms": "Dalston, Xanthe ,, Kubernetes", "prompt": "A  call about   billing.",
                                  "language_detection": "utterance"}, SessionBounds())
    assert params.keyterms == ("Dalston", "Xanthe", "Kubernetes")
    assert params.prompt == "A call about billing."
    assert (params.min_silence_ms, params.max_segment_s, params.vad_threshold) == (800, 12.5, 0.6)
    assert (params.channels, params.encoding, params.language_detection) == (2, "pcm_mulaw", "utterance")
    assert StreamParams.from_json(params.to_json()) == params


def test_configured_bounds_are_what_the_gateway_applies() -> None:
    narrow = SessionBounds(min_silence_ms=(400, 800))
    parse_stream_params({"min_silence_ms": "1000"})  # within the hard limits a worker re-checks
    with pytest.raises(ProtocolError, match=r"min_silence_ms: 1000 is outside the allowed range 400\.\.800"):
        parse_stream_params({"min_silence_ms": "1000"}, narrow)


def test_keepalive_and_configure_are_client_messages() -> None:
    assert parse_client_message('{"type": "keepalive"}') == Keepalive()
    message = parse_client_message(json.dumps({"type": "configure", "keyterms": ["Dalston", " Xanthe "],
                                               "min_silence_ms": 700, "prompt": "Support call."}))
    assert message == Configure(keyterms=("Dalston", "Xanthe"), prompt="Support call.", min_silence_ms=700)
    assert parse_client_message(json.dumps(message.to_json())) == message


@pytest.mark.parametrize(("fields", "named"), [
    ({"colour": "red"}, "colour"),
    ({"keyterms": "Dalston"}, "keyterms"),
    ({"keyterms": [1, 2]}, "keyterms"),
    ({"min_silence_ms": "500"}, "min_silence_ms"),
    ({"min_silence_ms": 10}, "min_silence_ms"),
    ({"vad_threshold": True}, "vad_threshold"),
    ({"prompt": ["a"]}, "prompt"),
])
def test_a_bad_configure_is_invalid_message_naming_the_field(fields: dict[str, object], named: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(json.dumps({"type": "configure", **fields}))
    assert caught.value.code is ErrorCode.INVALID_MESSAGE and named in caught.value.message


@given(st.dictionaries(st.sampled_from(["keyterms", "prompt", "min_silence_ms", "max_segment_s", "vad_threshold",
                                        "other"]), json_values, max_size=4))
def test_any_configure_either_parses_or_is_invalid_message(fields: dict[str, object]) -> None:
    try:
        message = parse_client_message(json.dumps({"type": "configure", **fields}))
    except ProtocolError as error:
        assert error.code is ErrorCode.INVALID_MESSAGE
    else:
        assert isinstance(message, Configure)
        assert parse_client_message(json.dumps(message.to_json())) == message

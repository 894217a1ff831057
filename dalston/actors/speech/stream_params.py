"""A stream's query parameters (DESIGN §7): parsing and validation, and the bounds a client may ask within (pure).

The gateway parses with the configured [session] bounds; a worker re-parses what the gateway sent with the hard
limits (`HARD_BOUNDS`), inside which a session can work at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

from dalston.actors.speech.error_codes import ErrorCode, ProtocolError

# Whisper's language codes (the tokenizer's list); "auto" lets the model detect.
_WHISPER_LANGUAGE_CODES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt la "
    "mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc ka be "
    "tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue"
)
WHISPER_LANGUAGES = frozenset(_WHISPER_LANGUAGE_CODES.split())
SAMPLE_RATE_MIN, SAMPLE_RATE_MAX = 8000, 48000
# The encodings `dalston.actors.speech.audio` decodes (kept here as data: protocol parsing imports no decoders).
ENCODINGS = ("pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw", "ogg_opus", "webm_opus")
MAX_CHANNELS = 8
LANGUAGE_DETECTION = ("session", "utterance")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


@dataclass(frozen=True)
class SessionBounds:
    """What a client may ask of one session: endpointing ranges and vocabulary sizes (from [session] config)."""

    min_silence_ms: tuple[int, int] = (100, 5000)
    max_segment_s: tuple[float, float] = (6.0, 30.0)  # 6 s: room for the longest min_silence_ms
    vad_threshold: tuple[float, float] = (0.1, 0.95)
    max_keyterms: int = 50
    max_keyterm_chars: int = 50
    max_prompt_chars: int = 500


# Where a session can work at all; a worker re-checks spawned params against these (the gateway applied the
# configured, usually narrower, bounds). 30 s is Whisper's window.
HARD_BOUNDS = SessionBounds((32, 10000), (1.0, 30.0), (0.01, 0.99), 200, 100, 2000)


@dataclass(frozen=True)
class StreamParams:
    """The effective configuration of one stream, from the query string.

    Endpointing values left None take the node's [vad] configuration.
    """

    language: str = "auto"
    model: str = "fast"
    word_timestamps: bool = False
    interim_results: bool = True
    sample_rate: int = 16000
    encoding: str = "pcm_s16le"
    channels: int = 1
    min_silence_ms: int | None = None
    max_segment_s: float | None = None
    vad_threshold: float | None = None
    keyterms: tuple[str, ...] = ()
    prompt: str = ""
    language_detection: str = "session"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["keyterms"] = list(self.keyterms)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], bounds: SessionBounds = HARD_BOUNDS) -> StreamParams:
        query = {k: _query_value(v) for k, v in data.items() if v is not None}
        return parse_stream_params(query, bounds)


def _query_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


_KNOWN_PARAMS = {field.name for field in dataclass_fields(StreamParams)} | {"api_key"}


def parse_stream_params(query: Mapping[str, str], bounds: SessionBounds = HARD_BOUNDS) -> StreamParams:
    """Validate the stream's query parameters; raises ProtocolError(invalid_request) with the offending name."""
    unknown = sorted(set(query) - _KNOWN_PARAMS)
    if unknown:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"unknown query parameter(s): {', '.join(unknown)}")
    language = query.get("language", "auto").strip().lower()
    if language != "auto" and language not in WHISPER_LANGUAGES:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"language: unknown language code {language!r}")
    model = query.get("model", "fast").strip()
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", model):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "model: expected a model alias")
    encoding = query.get("encoding", "pcm_s16le")
    if encoding not in ENCODINGS:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"encoding: expected one of {', '.join(ENCODINGS)}")
    detection = query.get("language_detection", "session")
    if detection not in LANGUAGE_DETECTION:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "language_detection: expected session or utterance")
    try:
        vocabulary = check_vocabulary(_split_keyterms(query.get("keyterms", "")), query.get("prompt", ""), bounds)
        endpointing = check_endpointing(_optional(query, "min_silence_ms", int),
                                        _optional(query, "max_segment_s", float),
                                        _optional(query, "vad_threshold", float), bounds)
    except ValueError as error:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, str(error)) from None
    return StreamParams(
        language=language,
        model=model,
        word_timestamps=_parse_bool(query, "word_timestamps", False),
        interim_results=_parse_bool(query, "interim_results", True),
        sample_rate=_parse_sample_rate(query.get("sample_rate", "16000")),
        encoding=encoding,
        channels=_parse_channels(query.get("channels", "1")),
        language_detection=detection,
        **vocabulary,
        **endpointing,
    )


def _split_keyterms(raw: str) -> list[str]:
    return [term for term in (part.strip() for part in raw.split(",")) if term]


def _optional(query: Mapping[str, str], name: str, kind: type[int] | type[float]) -> int | float | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}: expected {'an integer' if kind is int else 'a number'}, got {raw[:32]!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name}: expected a finite number, got {raw[:32]!r}")
    return value


def check_endpointing(min_silence_ms: object, max_segment_s: object, vad_threshold: object,
                      bounds: SessionBounds) -> dict[str, Any]:
    """Endpointing overrides within `bounds` (None: not set); ValueError naming the parameter otherwise."""
    values = {"min_silence_ms": min_silence_ms, "max_segment_s": max_segment_s, "vad_threshold": vad_threshold}
    for name, value in values.items():
        if value is None:
            continue
        integral = name == "min_silence_ms"
        if isinstance(value, bool) or not isinstance(value, int | float) or (integral and not isinstance(value, int)):
            raise ValueError(f"{name}: expected {'an integer' if integral else 'a number'}, got {value!r:.32}")
        low, high = getattr(bounds, name)
        if not low <= value <= high:
            raise ValueError(f"{name}: {value:g} is outside the allowed range {low:g}..{high:g}")
    return {name: (float(value) if value is not None and name != "min_silence_ms" else value)
            for name, value in values.items()}


def check_vocabulary(keyterms: object, prompt: object, bounds: SessionBounds) -> dict[str, Any]:
    """Keyterms (a list of short strings) and a prompt within `bounds`; ValueError naming the field otherwise."""
    if not isinstance(keyterms, list | tuple) or not all(isinstance(term, str) for term in keyterms):
        raise ValueError("keyterms: expected a list of strings")
    terms = tuple(" ".join(term.split()) for term in keyterms)
    if any(not term for term in terms):
        raise ValueError("keyterms: empty term")
    if len(terms) > bounds.max_keyterms:
        raise ValueError(f"keyterms: {len(terms)} terms, at most {bounds.max_keyterms} allowed")
    longest = max(terms, key=len, default="")
    if len(longest) > bounds.max_keyterm_chars:
        raise ValueError(f"keyterms: {longest[:20]!r}... is over {bounds.max_keyterm_chars} characters")
    if any("," in term for term in terms):
        raise ValueError("keyterms: a term may not contain a comma")
    if not isinstance(prompt, str):
        raise ValueError("prompt: expected a string")
    if len(prompt) > bounds.max_prompt_chars:
        raise ValueError(f"prompt: {len(prompt)} characters, at most {bounds.max_prompt_chars} allowed")
    return {"keyterms": terms, "prompt": " ".join(prompt.split())}


def _parse_channels(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_CHANNELS:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"channels: expected an integer from 1 to {MAX_CHANNELS}, "
                                                       f"got {raw[:32]!r}")
    return int(raw)


def _parse_bool(query: Mapping[str, str], name: str, default: bool) -> bool:
    raw = query.get(name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ProtocolError(ErrorCode.INVALID_REQUEST, f"{name}: expected true or false, got {raw[:32]!r}")


def _parse_sample_rate(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or not SAMPLE_RATE_MIN <= int(raw) <= SAMPLE_RATE_MAX:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST,
            f"sample_rate: expected an integer from {SAMPLE_RATE_MIN} to {SAMPLE_RATE_MAX}, got {raw[:32]!r}",
        )
    return int(raw)

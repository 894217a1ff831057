"""The client wire protocol (DESIGN §7): query parameters, client messages, server events, error codes.

Pure: parsing and validation here have no I/O, so they can be tested with any bytes and any JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    NO_CAPACITY = "no_capacity"
    INVALID_REQUEST = "invalid_request"
    INVALID_MESSAGE = "invalid_message"
    INVALID_AUDIO = "invalid_audio"
    UNSUPPORTED_MODEL = "unsupported_model"
    WORKER_LOST = "worker_lost"
    SESSION_TIMEOUT = "session_timeout"
    INTERNAL_ERROR = "internal_error"
    UNAUTHORIZED = "unauthorized"
    TOO_MANY_SESSIONS = "too_many_sessions"
    SLOW_CONSUMER = "slow_consumer"  # the client stopped reading its events

    @classmethod
    def lookup(cls, value: object) -> ErrorCode | None:
        """The code named by `value`, or None (`x in ErrorCode` raises TypeError for strings on 3.11)."""
        return cls._value2member_map_.get(value) if isinstance(value, str) else None  # type: ignore[return-value]

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code that follows this error, or None where the session goes on."""
        return _CLOSE_CODES[self]


_CLOSE_CODES: dict[ErrorCode, int | None] = {
    ErrorCode.NO_CAPACITY: 1013,
    ErrorCode.INVALID_REQUEST: 1008,
    ErrorCode.INVALID_MESSAGE: None,
    ErrorCode.INVALID_AUDIO: 1007,
    ErrorCode.UNSUPPORTED_MODEL: 1008,
    ErrorCode.WORKER_LOST: 1011,
    ErrorCode.SESSION_TIMEOUT: 1000,
    ErrorCode.INTERNAL_ERROR: 1011,
    ErrorCode.UNAUTHORIZED: 1008,
    ErrorCode.TOO_MANY_SESSIONS: 1013,
    ErrorCode.SLOW_CONSUMER: 1008,  # a policy the client broke (read your events), not "try again later"
}


class ProtocolError(Exception):
    """Bad input from a client; carries the error code the client is sent."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Whisper's language codes (the tokenizer's list); "auto" lets the model detect.
_WHISPER_LANGUAGE_CODES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt la "
    "mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc ka be "
    "tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue"
)
WHISPER_LANGUAGES = frozenset(_WHISPER_LANGUAGE_CODES.split())
SAMPLE_RATE_MIN, SAMPLE_RATE_MAX = 8000, 48000
# The encodings `dalston.actors.audio` decodes (kept here as data: protocol parsing imports no decoders).
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


# -- client -> server control messages ----------------------------------------------------------------------


@dataclass(frozen=True)
class Flush:
    """Finalise the speech buffered so far."""

    def to_json(self) -> dict[str, Any]:
        return {"type": "flush"}


@dataclass(frozen=True)
class End:
    """Finish the session: flush, then `session.end`."""

    def to_json(self) -> dict[str, Any]:
        return {"type": "end"}


@dataclass(frozen=True)
class Keepalive:
    """The client is still there: a silent session is not idle while these come."""

    def to_json(self) -> dict[str, Any]:
        return {"type": "keepalive"}


@dataclass(frozen=True)
class Configure:
    """Change vocabulary and endpointing mid-stream; fields left None keep their current value."""

    keyterms: tuple[str, ...] | None = None
    prompt: str | None = None
    min_silence_ms: int | None = None
    max_segment_s: float | None = None
    vad_threshold: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        if self.keyterms is not None:
            data["keyterms"] = list(self.keyterms)
        return {"type": "configure", **data}


ClientMessage = Flush | End | Keepalive | Configure
_CLIENT_MESSAGES: dict[str, ClientMessage] = {"flush": Flush(), "end": End(), "keepalive": Keepalive()}
_CONFIGURE_FIELDS = ("keyterms", "prompt", "min_silence_ms", "max_segment_s", "vad_threshold")
MAX_CONTROL_MESSAGE_CHARS = 8192


def parse_client_message(text: str, bounds: SessionBounds = HARD_BOUNDS) -> ClientMessage:
    """Parse a JSON text frame from a client; raises ProtocolError(invalid_message)."""
    if len(text) > MAX_CONTROL_MESSAGE_CHARS:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"control message over {MAX_CONTROL_MESSAGE_CHARS} chars")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "expected a JSON object") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "expected a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "missing string field 'type'")
    if kind == "configure":
        return _parse_configure(data, bounds)
    message = _CLIENT_MESSAGES.get(kind)
    if message is None:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"unknown message type {kind[:40]!r}; expected one of: "
                                                       "flush, end, keepalive, configure")
    return message


def _parse_configure(data: dict[str, Any], bounds: SessionBounds) -> Configure:
    unknown = sorted(str(key)[:40] for key in set(data) - {"type", *_CONFIGURE_FIELDS})
    if unknown:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"configure: unknown field(s) {', '.join(unknown)}; "
                                                       f"expected some of {', '.join(_CONFIGURE_FIELDS)}")
    keyterms, prompt = data.get("keyterms"), data.get("prompt")
    try:
        vocabulary = check_vocabulary([] if keyterms is None else keyterms, "" if prompt is None else prompt, bounds)
        endpointing = check_endpointing(data.get("min_silence_ms"), data.get("max_segment_s"),
                                        data.get("vad_threshold"), bounds)
    except ValueError as error:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"configure: {error}") from None
    return Configure(keyterms=None if keyterms is None else vocabulary["keyterms"],
                     prompt=None if prompt is None else vocabulary["prompt"], **endpointing)


# -- server -> client events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WordTiming:
    word: str
    start: float
    end: float
    confidence: float


@dataclass(frozen=True)
class SessionBegan:
    session_id: str
    config: dict[str, Any] = field(default_factory=dict)
    type: str = "session.begin"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "session_id": self.session_id, **self.config}


def _with_channel(data: dict[str, Any], channel: int | None) -> dict[str, Any]:
    """Events of a multi-channel session say which channel they belong to; a mono session's do not."""
    if channel is not None:
        data["channel"] = channel
    return data


@dataclass(frozen=True)
class SpeechStarted:
    timestamp: float
    channel: int | None = None
    type: str = "vad.speech_start"

    def to_json(self) -> dict[str, Any]:
        return _with_channel({"type": self.type, "timestamp": self.timestamp}, self.channel)


@dataclass(frozen=True)
class SpeechEnded:
    timestamp: float
    channel: int | None = None
    type: str = "vad.speech_end"

    def to_json(self) -> dict[str, Any]:
        return _with_channel({"type": self.type, "timestamp": self.timestamp}, self.channel)


@dataclass(frozen=True)
class PartialTranscribed:
    text: str
    start: float
    stable_text: str
    channel: int | None = None
    type: str = "transcript.partial"

    def to_json(self) -> dict[str, Any]:
        return _with_channel({"type": self.type, "text": self.text, "start": self.start,
                              "stable_text": self.stable_text}, self.channel)


@dataclass(frozen=True)
class FinalTranscribed:
    text: str
    start: float
    end: float
    words: tuple[WordTiming, ...] | None
    language: str | None
    channel: int | None = None
    type: str = "transcript.final"

    def to_json(self) -> dict[str, Any]:
        words = None if self.words is None else [asdict(w) for w in self.words]
        return _with_channel({"type": self.type, "text": self.text, "start": self.start, "end": self.end,
                              "words": words, "language": self.language}, self.channel)


@dataclass(frozen=True)
class ChannelFinal:
    """One final of a multi-channel session, in the merged transcript of `session.end`."""

    channel: int
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class SessionEnded:
    """`transcript` is every final in time order; a multi-channel session adds each channel's transcript
    (`channels`) and the merged finals with their channel labels (`merged`)."""

    session_id: str
    total_duration: float
    transcript: str
    channels: tuple[str, ...] | None = None
    merged: tuple[ChannelFinal, ...] | None = None
    type: str = "session.end"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type, "session_id": self.session_id,
                                "total_duration": self.total_duration, "transcript": self.transcript}
        if self.channels is not None:
            data["channels"] = [{"channel": i, "transcript": text} for i, text in enumerate(self.channels)]
            data["merged"] = [asdict(final) for final in self.merged or ()]
        return data


@dataclass(frozen=True)
class SessionConfigured:
    """The answer to `configure`: the session's vocabulary and endpointing now."""

    config: dict[str, Any] = field(default_factory=dict)
    type: str = "session.configured"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, **self.config}


@dataclass(frozen=True)
class ErrorOccurred:
    code: ErrorCode
    message: str
    type: str = "error"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "code": str(self.code), "message": self.message}


ServerEvent = (
    SessionBegan | SpeechStarted | SpeechEnded | PartialTranscribed | FinalTranscribed | SessionEnded | ErrorOccurred
    | SessionConfigured
)

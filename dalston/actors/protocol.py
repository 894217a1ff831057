"""The client wire protocol (DESIGN §7): query parameters, client messages, server events, error codes.

Pure: parsing and validation here have no I/O, so they can be tested with any bytes and any JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
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
ENCODINGS = ("pcm_s16le",)
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


@dataclass(frozen=True)
class StreamParams:
    """The effective configuration of one stream, from the query string."""

    language: str = "auto"
    model: str = "fast"
    word_timestamps: bool = False
    interim_results: bool = True
    sample_rate: int = 16000
    encoding: str = "pcm_s16le"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StreamParams:
        return parse_stream_params({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in data.items()})


_KNOWN_PARAMS = {"language", "model", "word_timestamps", "interim_results", "sample_rate", "encoding", "api_key"}


def parse_stream_params(query: Mapping[str, str]) -> StreamParams:
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
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"encoding: only {', '.join(ENCODINGS)} is supported")
    return StreamParams(
        language=language,
        model=model,
        word_timestamps=_parse_bool(query, "word_timestamps", False),
        interim_results=_parse_bool(query, "interim_results", True),
        sample_rate=_parse_sample_rate(query.get("sample_rate", "16000")),
        encoding=encoding,
    )


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
    if not raw.isdigit() or not SAMPLE_RATE_MIN <= int(raw) <= SAMPLE_RATE_MAX:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST,
            f"sample_rate: expected an integer from {SAMPLE_RATE_MIN} to {SAMPLE_RATE_MAX}, got {raw[:32]!r}",
        )
    return int(raw)


# -- client -> server control messages ----------------------------------------------------------------------


@dataclass(frozen=True)
class Flush:
    """Finalise the speech buffered so far."""


@dataclass(frozen=True)
class End:
    """Finish the session: flush, then `session.end`."""


ClientMessage = Flush | End
_CLIENT_MESSAGES: dict[str, ClientMessage] = {"flush": Flush(), "end": End()}
MAX_CONTROL_MESSAGE_CHARS = 4096


def parse_client_message(text: str) -> ClientMessage:
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
    message = _CLIENT_MESSAGES.get(kind)
    if message is None:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"unknown message type {kind[:40]!r}; expected one of: flush, end"
        )
    return message


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


@dataclass(frozen=True)
class SpeechStarted:
    timestamp: float
    type: str = "vad.speech_start"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "timestamp": self.timestamp}


@dataclass(frozen=True)
class SpeechEnded:
    timestamp: float
    type: str = "vad.speech_end"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "timestamp": self.timestamp}


@dataclass(frozen=True)
class PartialTranscribed:
    text: str
    start: float
    stable_text: str
    type: str = "transcript.partial"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "text": self.text, "start": self.start, "stable_text": self.stable_text}


@dataclass(frozen=True)
class FinalTranscribed:
    text: str
    start: float
    end: float
    words: tuple[WordTiming, ...] | None
    language: str | None
    type: str = "transcript.final"

    def to_json(self) -> dict[str, Any]:
        words = None if self.words is None else [asdict(w) for w in self.words]
        return {"type": self.type, "text": self.text, "start": self.start, "end": self.end, "words": words,
                "language": self.language}


@dataclass(frozen=True)
class SessionEnded:
    session_id: str
    total_duration: float
    transcript: str
    type: str = "session.end"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "session_id": self.session_id, "total_duration": self.total_duration,
                "transcript": self.transcript}


@dataclass(frozen=True)
class ErrorOccurred:
    code: ErrorCode
    message: str
    type: str = "error"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "code": str(self.code), "message": self.message}


ServerEvent = (
    SessionBegan | SpeechStarted | SpeechEnded | PartialTranscribed | FinalTranscribed | SessionEnded | ErrorOccurred
)

"""The client wire protocol (DESIGN §7): client messages, server events; query parameters (`stream_params`) and
error codes (`error_codes`) are re-exported from here.

Pure: parsing and validation here have no I/O, so they can be tested with any bytes and any JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from dalston.actors.speech.error_codes import ErrorCode, ProtocolError
from dalston.actors.speech.stream_params import (
    ENCODINGS,
    HARD_BOUNDS,
    LANGUAGE_DETECTION,
    MAX_CHANNELS,
    SAMPLE_RATE_MAX,
    SAMPLE_RATE_MIN,
    WHISPER_LANGUAGES,
    SessionBounds,
    StreamParams,
    check_endpointing,
    check_vocabulary,
    parse_stream_params,
)

__all__ = [
    "ENCODINGS", "HARD_BOUNDS", "LANGUAGE_DETECTION", "MAX_CHANNELS", "SAMPLE_RATE_MAX", "SAMPLE_RATE_MIN",
    "WHISPER_LANGUAGES", "ChannelFinal", "ClientMessage", "Configure", "End", "ErrorCode", "ErrorOccurred",
    "FinalTranscribed", "Flush", "Keepalive", "PartialTranscribed", "ProtocolError", "ServerEvent", "SessionBegan",
    "SessionBounds", "SessionConfigured", "SessionEnded", "SpeechEnded", "SpeechStarted", "StreamParams",
    "WordTiming", "check_endpointing", "check_vocabulary", "parse_client_message", "parse_stream_params",
]


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
class SessionResumed:
    """The session moved to another worker (its worker was lost or drained) and goes on: informational.
    `replayed_s`: the audio replayed to the new worker (None for an Ogg/WebM stream: replayed from its start, and
    the gateway does not decode it); `gap_s`: since the last event from the old one."""

    session_id: str
    replayed_s: float | None
    gap_s: float
    type: str = "session.resumed"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "session_id": self.session_id, "replayed_s": self.replayed_s,
                "gap_s": self.gap_s}


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

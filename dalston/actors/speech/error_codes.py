"""Error codes of the wire protocol (DESIGN §7) and the exception that carries one (pure)."""

from __future__ import annotations

from enum import StrEnum


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

"""Messages of the gateway <-> worker link (one WebSocket per session).

gateway -> worker: a `spawn` text frame first; then the client's audio as binary frames and its control
messages as `{"type": "flush"}` / `{"type": "end"}`. worker -> gateway: `spawned` or `refused`, then every
server event as the JSON the client gets, and `{"type": "handback"}` from a draining worker at a pause between
utterances: the gateway then moves the session to another worker (a `spawn` with a `resume` record) and closes
this link. When the session stops, the worker closes the link with the close
code the client's socket should get; a link that breaks without that close means the worker was lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dalston.actors.speech.protocol import ErrorCode, StreamParams
from dalston.actors.speech.resume import ResumeRecord
from dalston.web.credentials import same_secret

LINK_PATH = "/v1/link"
TOKEN_HEADER = "Authorization"
# A write to the link that takes longer means a hung peer, not backpressure: a session's mailbox drains in
# milliseconds unless its model has been saturated for this long.
LINK_SEND_TIMEOUT_S = 30.0
HANDBACK = "handback"


@dataclass(frozen=True)
class Spawn:
    session_id: str
    params: StreamParams
    client_ip: str = ""
    resume: ResumeRecord | None = None  # set when the session takes over a call from another worker

    def to_json(self) -> dict[str, Any]:
        data = {"type": "spawn", "session_id": self.session_id, "params": self.params.to_json(),
                "client_ip": self.client_ip}
        if self.resume is not None:
            data["resume"] = self.resume.to_json()
        return data

    @classmethod
    def from_json(cls, data: Any) -> Spawn:
        if not isinstance(data, dict) or data.get("type") != "spawn" or not isinstance(data.get("session_id"), str):
            raise ValueError("expected a spawn message")
        params = data.get("params")
        if not isinstance(params, dict):
            raise ValueError("spawn message without params")
        resume = data.get("resume")
        return cls(data["session_id"], StreamParams.from_json(params), str(data.get("client_ip", "")),
                   None if resume is None else ResumeRecord.from_json(resume))


@dataclass(frozen=True)
class Refused:
    code: ErrorCode
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "refused", "code": str(self.code), "message": self.message}


def bearer(token: str) -> str:
    return f"Bearer {token}"


def token_matches(header: str | None, token: str) -> bool:
    """Constant-time check of the link's shared token."""
    return same_secret(header, bearer(token))

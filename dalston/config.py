"""Configuration: the defaults in `dalston/dalston.toml` (package data), a user file, then `DALSTON_*` variables.

Each section is a frozen dataclass, so a typo in a key fails at load time rather than at first use.
Environment overrides are named `DALSTON_<SECTION>_<KEY>` and parsed as the default's type.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dalston.actors.speech.stream_params import SessionBounds

# Shipped inside the package, so an installed wheel finds its defaults without the repository.
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "dalston.toml"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    max_sessions_per_key: int = 16
    shutdown_timeout_s: float = 10.0
    placement_deadline_s: float = 10.0
    spawn_timeout_s: float = 5.0
    suspect_s: float = 10.0
    send_timeout_s: float = 5.0
    max_connections: int = 10000
    max_sessions_per_client_ip: int = 64
    handshake_timeout_s: float = 10.0
    tls_cert_file: str = ""
    tls_key_file: str = ""
    link_ca_file: str = ""
    # Failover (a session moved to another worker when its worker is lost or drains).
    failover_deadline_s: float = 10.0  # how long a moving session may wait for a new worker before worker_lost
    link_heartbeat_s: float = 4.0  # pings on a worker link; no pong within half of it: the worker is lost (hung)
    replay_cap_bytes: int = 4194304  # per session: the most client audio kept for a replay
    replay_pad_s: float = 10.0  # kept beyond vad.max_segment_s: the final in flight and the time to place again


@dataclass(frozen=True)
class NodeConfig:
    capacity: int = 8
    worker_id: str = ""
    host: str = "127.0.0.1"
    port: int = 8100
    heartbeat_interval_s: float = 1.0
    liveness_ttl_s: float = 4.0
    drain_timeout_s: float = 30.0
    link_token: str = "dalston-dev-link-token"
    models: tuple[str, ...] = ("fast", "accurate")
    advertise_url: str = ""  # the ws:// URL gateways reach this worker at; empty: ws://host:port
    tls_cert_file: str = ""
    tls_key_file: str = ""


@dataclass(frozen=True)
class RegistryConfig:
    redis_url: str = ""
    key_prefix: str = "dalston:realtime:"
    ended_session_ttl_s: int = 3600
    reap_interval_s: float = 2.0
    lease_ttl_s: float = 10.0


@dataclass(frozen=True)
class SessionConfig:
    max_frame_bytes: int = 131072
    idle_timeout_s: float = 300.0
    max_duration_s: float = 14400.0
    partial_interval_ms: int = 500
    mailbox_size: int = 64
    tick_s: float = 0.5  # how often the idle timeout and the maximum length are checked
    transcriber_restart_wait_s: float = 15.0  # how long a session waits for its restarted model
    # What a client may ask per session (query parameters and `configure`).
    min_silence_ms_min: int = 100
    min_silence_ms_max: int = 5000
    max_segment_s_min: float = 6.0
    max_segment_s_max: float = 30.0
    vad_threshold_min: float = 0.1
    vad_threshold_max: float = 0.95
    max_keyterms: int = 50
    max_keyterm_chars: int = 50
    max_prompt_chars: int = 500

    @property
    def bounds(self) -> SessionBounds:
        """What a client may ask of a session: the gateway checks query parameters against it, the session
        checks `configure` messages."""
        return SessionBounds(
            min_silence_ms=(self.min_silence_ms_min, self.min_silence_ms_max),
            max_segment_s=(self.max_segment_s_min, self.max_segment_s_max),
            vad_threshold=(self.vad_threshold_min, self.vad_threshold_max),
            max_keyterms=self.max_keyterms,
            max_keyterm_chars=self.max_keyterm_chars,
            max_prompt_chars=self.max_prompt_chars,
        )


@dataclass(frozen=True)
class VadConfig:
    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 500
    speech_pad_ms: int = 120
    max_segment_s: float = 25.0
    backend: str = "onnx"  # "onnx" (onnxruntime, shipped model) or "torch" (the `torch` extra)

    def __post_init__(self) -> None:
        if self.backend not in ("onnx", "torch"):
            raise ConfigError(f"vad.backend must be 'onnx' or 'torch', not {self.backend!r}")


@dataclass(frozen=True)
class TranscriberConfig:
    inference_threads: int = 2


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    transcriber: TranscriberConfig = field(default_factory=TranscriberConfig)
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def replace(self, section: str, **changes: Any) -> Config:
        """A copy with some keys of one section changed (command-line flags use this)."""
        current = getattr(self, section)
        return dataclasses.replace(self, **{section: dataclasses.replace(current, **changes)})


_SECTION_TYPES = {
    "server": ServerConfig,
    "node": NodeConfig,
    "registry": RegistryConfig,
    "session": SessionConfig,
    "vad": VadConfig,
    "transcriber": TranscriberConfig,
}


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the file at `path` (if any), then `DALSTON_*` variables (default: os.environ)."""
    data = _read_toml(DEFAULT_CONFIG_PATH)
    if path is not None:
        _merge(data, _read_toml(path))
    environ = os.environ if environ is None else environ
    sections = {name: _build_section(name, data.get(name, {}), environ) for name in _SECTION_TYPES}
    unknown = set(data) - set(_SECTION_TYPES) - {"models"}
    if unknown:
        raise ConfigError(f"unknown configuration sections: {sorted(unknown)}")
    return Config(**sections, models=data.get("models", {}))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read configuration {path}: {error}") from error


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _build_section(name: str, values: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
    cls = _SECTION_TYPES[name]
    defaults = cls()
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown keys in [{name}]: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for key in known:
        default = getattr(defaults, key)
        variable = f"DALSTON_{name}_{key}".upper()
        raw = environ.get(variable)
        value = _parse_env(raw, default, variable) if raw is not None else values.get(key)
        if value is not None:
            kwargs[key] = _coerce(value, default, f"{name}.{key}")
    return cls(**kwargs)


def _parse_env(raw: str, default: Any, variable: str) -> Any:
    if isinstance(default, tuple):
        raw = raw.strip()
        if raw.startswith("["):
            return json.loads(raw)
        return [part.strip() for part in raw.split(",") if part.strip()]
    if isinstance(default, bool):
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ConfigError(f"{variable} must be a boolean, not {raw!r}")
        return raw.lower() in ("1", "true", "yes")
    return raw


def _coerce(value: Any, default: Any, where: str) -> Any:
    try:
        if isinstance(default, tuple):
            if not isinstance(value, list | tuple):
                raise TypeError("expected a list")
            return tuple(str(v) for v in value)
        if isinstance(default, bool):
            return bool(value)
        return type(default)(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: cannot use {value!r} ({error})") from error

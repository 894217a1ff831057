"""structlog set up once per process: JSON lines when not on a terminal, readable lines on one.

Session and worker ids are bound through contextvars (`bind_context`), so every log line written while
handling a session carries them without passing a logger around.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_configured = False


def configure_logging(level: str = "info", json_output: bool | None = None) -> None:
    global _configured
    if json_output is None:
        json_output = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _configured = True


def bind_context(**ids: str) -> None:
    """Bind ids (session_id, worker_id, ...) to every log line of the current task and its children."""
    structlog.contextvars.bind_contextvars(**ids)

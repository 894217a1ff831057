"""Prometheus metrics of the gateway (`/metrics`), each app with its own registry (tests run several)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dalston.actors.speech.protocol import ErrorCode


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sessions_active = Gauge("dalston_gateway_sessions_active", "Sessions being relayed now",
                                     ["model"], registry=self.registry)
        self.sessions_total = Counter("dalston_gateway_sessions_total", "Sessions placed on a worker",
                                      ["model"], registry=self.registry)
        self.rejections_total = Counter("dalston_gateway_rejections_total", "Sessions refused, by error code",
                                        ["code"], registry=self.registry)
        self.session_seconds = Histogram("dalston_gateway_session_seconds", "Session wall-clock length",
                                         ["model"], registry=self.registry,
                                         buckets=(1, 5, 15, 30, 60, 300, 900, 3600, float("inf")))

    def session_started(self, model: str) -> None:
        self.sessions_total.labels(model).inc()
        self.sessions_active.labels(model).inc()

    def session_ended(self, model: str, seconds: float) -> None:
        self.sessions_active.labels(model).dec()
        self.session_seconds.labels(model).observe(seconds)

    def rejected(self, code: ErrorCode) -> None:
        self.rejections_total.labels(str(code)).inc()

    async def handler(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

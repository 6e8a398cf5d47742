"""Prometheus metrics of the application, exported by Ray (``ray.serve.metrics``) from every replica
at its node's metrics export port (``serve.metrics_port`` for ``asl-platform serve``; see docs/serving.md).

Ray prefixes each name with ``ray_`` and adds the deployment, replica and application tags; counters
get a ``_total`` suffix. Outside a Ray worker (the app in-process, in tests) nothing is recorded.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

# Seconds; from a fraction of a millisecond (a cached read) to a slow batch of big uploads.
LATENCY_BOUNDARIES = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12]
STAGES = ("read", "decode", "hands", "model")


class ServingMetrics:
    """The application's metrics: requests by route and status, rejections by error code, answers by
    letter and hand found, and the latency of each stage (read, decode, hands, model)."""

    def __init__(self) -> None:
        import ray

        self.enabled = ray.is_initialized()
        if not self.enabled:
            return
        from ray.serve.metrics import Counter, Histogram

        self.requests = Counter("asl_requests", "HTTP requests by route and status.", tag_keys=("path", "status"))
        self.rejections = Counter("asl_rejections", "Refused requests (4xx/5xx) by error code.", tag_keys=("code",))
        self.predictions = Counter("asl_predictions", "Answers by letter and whether a hand was found "
                                   "('none' for an image-only model).", tag_keys=("letter", "hand"))
        self.latency = Histogram("asl_stage_seconds", "Time per stage: read (the request body, ingress), decode, "
                                 "hands and model (model replica, per batch).", boundaries=LATENCY_BOUNDARIES,
                                 tag_keys=("stage",))

    def request(self, path: str, status: int) -> None:
        if self.enabled:
            self.requests.inc(tags={"path": path, "status": str(status)})

    def rejection(self, code: str) -> None:
        if self.enabled:
            self.rejections.inc(tags={"code": code})

    def prediction(self, letter: str, hand: dict | None) -> None:
        if self.enabled:
            found = "none" if hand is None else "found" if hand.get("found") else "not_found"
            self.predictions.inc(tags={"letter": letter, "hand": found})

    def observe(self, stage: str, seconds: float) -> None:
        if self.enabled:
            self.latency.observe(seconds, tags={"stage": stage})

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe(stage, time.perf_counter() - started)


class RequestMetrics:
    """ASGI middleware, outermost: every request's route and status, and each refusal's error code
    (read from the JSON error body), whoever answered it: a route, the size limit or the framework."""

    KNOWN_PATHS = ("/predict", "/predict/batch", "/healthz", "/v1/model")

    def __init__(self, app, metrics: ServingMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http" or not self.metrics.enabled:
            return await self.app(scope, receive, send)
        status, error_body = 500, bytearray()

        async def watch(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status >= 400 and len(error_body) < 4096:
                error_body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.metrics.request(self._path(scope), status)
            if status >= 400:
                self.metrics.rejection(_error_code(bytes(error_body), status))

    def _path(self, scope: dict) -> str:
        route = scope.get("route")  # set by the router on the shared scope once a route matched
        if route is not None and getattr(route, "path", None):
            return route.path
        path = scope.get("path", "")
        return path if path in self.KNOWN_PATHS else "other"  # no unbounded label values from probes


def _error_code(body: bytes, status: int) -> str:
    import json

    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return f"http_{status}"

"""The serving tests' helpers: a real Serve app on a free port, shared by the modules of the serving
package, the fixture models' settings and samples, the demo's events as its page runs them. What probes a
running server from outside (load, bad requests, replicas) is ``helpers.probe``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from asl_platform.config import ServeConfig
from asl_platform.serving.deployments import APP_NAME, build_application
from helpers.probe import free_port
from helpers.probe import png_with_size as png_header_only  # a tiny PNG that declares huge dimensions
from helpers.models import colour_image

__all__ = ["SharedServe", "colour_samples", "colour_settings", "free_port", "hand_settings", "png_header_only",
           "run_demo_event", "serve_app"]


class SharedServe:
    """One Serve instance for the serving tests, running one application at a time.

    Modules that can share an application ask for it with the same settings (``hand_settings``,
    ``colour_settings``) and get the running one back; other settings replace it (``serve.run`` of the
    same name), which costs a deploy but not Serve's start. A module that needs a Serve of its own
    calls ``stop()`` first. The serving package's conftest holds the instance and groups the modules
    by the application they use, so each is deployed once."""

    def __init__(self) -> None:
        self.port: int | None = None
        self.running: ServeConfig | None = None

    def app(self, settings: ServeConfig) -> str:
        """The URL of the application for ``settings`` (its port is the shared instance's)."""
        from ray import serve

        if self.port is None:
            self.port = free_port()
            serve.start(http_options={"host": settings.host, "port": self.port})
        settings = settings.model_copy(update={"port": self.port})
        if settings != self.running:
            self.running = None  # a failed deploy leaves nothing to reuse
            serve.run(build_application(settings), name=APP_NAME, route_prefix="/")
            self.running = settings
        return f"http://{settings.host}:{self.port}"

    def stop(self) -> None:
        from ray import serve

        if self.port is not None:
            serve.shutdown()
        self.port, self.running = None, None


def colour_settings(model: Path) -> ServeConfig:
    """The colour model's shared application: the demo's spelling hold short enough for its fake
    webcam, and a small body limit the error tests reach."""
    return ServeConfig(model=str(model), max_request_bytes=256 * 1024, max_replicas=1, spell_hold_s=0.6)


def hand_settings(model: Path) -> ServeConfig:
    """The hand-aware model's shared application (the contract test's batch limit is small, so that
    the fuzzer reaches it)."""
    return ServeConfig(model=str(model), max_replicas=1, max_batch_images=4, spell_hold_s=0.6)


@contextlib.contextmanager
def serve_app(settings: ServeConfig) -> Iterator[str]:
    """Serve on ``settings.port`` with the application for ``settings``; yields its URL, shuts Serve down after."""
    from ray import serve

    serve.start(http_options={"host": settings.host, "port": settings.port})
    try:
        serve.run(build_application(settings), name=APP_NAME, route_prefix="/")
        yield f"http://{settings.host}:{settings.port}"
    finally:
        serve.shutdown()


# --------------------------------------------------------------------------- replicas


# --------------------------------------------------------------------------- load


def colour_samples() -> list[tuple[bytes, str | None]]:
    return [(colour_image(label, seed=seed), label) for seed in range(12) for label in ("A", "B", "C", "space")]


# --------------------------------------------------------------------------- the demo, as its page drives it


def run_demo_event(client, session: str, data: list, *, inputs: str | None = None, outputs: str | None = None) -> dict:
    """Run the demo event whose first input is the component with elem_id ``inputs`` (or, without one, that
    writes ``outputs``) the way the browser does (queue/join, then the SSE stream), with ``data`` as its
    first inputs (the rest, session state, None as the browser sends it); returns the process_completed
    message. ``client`` is an httpx client on the server (a TestClient)."""
    config = client.get("/demo/config").json()

    def component(elem_id: str) -> int:
        return next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)

    trigger = component(inputs) if inputs else None
    dependency = next(d for d in config["dependencies"]
                      if (d["inputs"][:1] == [trigger] if inputs else d["outputs"] == [component(outputs)]))
    data = [*data, *[None] * (len(dependency["inputs"]) - len(data))]
    body = {"data": data, "fn_index": dependency["id"], "session_hash": session, "event_data": None,
            "trigger_id": trigger}
    joined = client.post("/demo/gradio_api/queue/join", json=body)
    assert joined.status_code == 200, joined.text
    completed = None
    with client.stream("GET", f"/demo/gradio_api/queue/data?session_hash={session}") as stream:
        for line in stream.iter_lines():  # read to the end (the server closes the stream after the event)
            if line.startswith("data:") and '"process_completed"' in line:
                completed = json.loads(line[len("data:"):])
    assert completed is not None, "no process_completed message"
    return completed


def shown(update: dict) -> dict:
    """A demo handler's answer (``{component: value}``) by each component's elem_id; a state, which has none, by
    its value's type (``Speller``, ``Practice``, ``Calibrating``)."""
    return {getattr(component, "elem_id", None) or type(value).__name__: value for component, value in update.items()}



def shown(update: dict) -> dict:
    """A demo handler's answer (``{component: value}``) by each component's elem_id; a state, which has none, by
    its value's type (``Speller``, ``Practice``, ``Calibrating``)."""
    return {getattr(component, "elem_id", None) or type(value).__name__: value for component, value in update.items()}


@contextlib.contextmanager
def in_process_server(app) -> Iterator[str]:
    """``app`` on uvicorn in a thread of this process (no Ray: for a page that needs the app, not Serve)."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the in-process server did not start")
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)

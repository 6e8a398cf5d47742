"""Helpers shared by the serving tests and bench/reliability.py: a real Serve app on a free port,
the replicas' processes, a load generator, the demo's events as its page runs them, and a PNG that
only claims to be huge."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from asl_platform.config import ServeConfig
from asl_platform.serving.deployments import APP_NAME, build_application
from helpers.models import colour_image
from fuzz_inputs import png_with_size as png_header_only  # a tiny PNG that declares huge dimensions

__all__ = ["Load", "SharedServe", "colour_samples", "colour_settings", "free_port", "hand_settings",
           "kill_replica_and_wait", "model_replica_pids", "png_header_only", "resident_mb", "run_demo_event",
           "running_replicas", "serve_app"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    """The colour model's shared application: the demo's spelling thresholds low enough for its fake
    webcam, and a small body limit the error tests reach."""
    return ServeConfig(model=str(model), max_request_bytes=256 * 1024, max_replicas=1, spell_hold_s=0.6,
                       spell_min_probability=0.5)


def hand_settings(model: Path) -> ServeConfig:
    """The hand-aware model's shared application (the contract test's batch limit is small, so that
    the fuzzer reaches it)."""
    return ServeConfig(model=str(model), max_replicas=1, max_batch_images=4, spell_hold_s=0.6, spell_min_probability=0.5)


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


def model_replica_pids(deployment: str = "ASLModel") -> dict[str, int]:
    """Actor name -> PID of every live replica of ``deployment`` in this Ray session."""
    import ray

    pids = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "serve" and f"{APP_NAME}#{deployment}#" in actor["name"]:
            try:
                handle = ray.get_actor(actor["name"], namespace="serve")
                pids[actor["name"]] = ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=10)
            except Exception:  # a replica that is going away as we look
                continue
    return pids


def running_replicas() -> int:
    from ray import serve

    states = serve.status().applications[APP_NAME].deployments["ASLModel"].replica_states
    return int(sum(n for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING"))


def kill_replica_and_wait(before: dict[str, int], timeout: float = 90) -> tuple[float, float | None]:
    """SIGKILL one model replica; return when it was killed and how long until Serve had replaced it."""
    victim = sorted(before.values())[0]
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    while time.monotonic() - killed_at < timeout:
        time.sleep(0.5)
        pids = model_replica_pids()
        if len(pids) == len(before) and victim not in pids.values() and running_replicas() == len(before):
            return killed_at, time.monotonic() - killed_at
    return killed_at, None


def resident_mb(pid: int) -> float:
    """Resident memory of a process from /proc (Linux), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


# --------------------------------------------------------------------------- load


def colour_samples() -> list[tuple[bytes, str | None]]:
    return [(colour_image(label, seed=seed), label) for seed in range(12) for label in ("A", "B", "C", "space")]


class Load:
    """``clients`` threads posting images in turn until stopped; records every answer. A sample's
    label, when given, must come back too (with the colour model every answer is checkable)."""

    def __init__(self, url: str, clients: int, samples: list[tuple[bytes, str | None]] | None = None):
        self.url, self.clients, self.stop = url, clients, threading.Event()
        self.samples = samples or colour_samples()
        self.results: list[tuple[float, int | None, bool]] = []  # (time, status, right answer)
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def _client(self, index: int) -> None:
        session, n = requests.Session(), index
        while not self.stop.is_set():
            data, label = self.samples[n % len(self.samples)]
            n += self.clients
            try:
                response = session.post(f"{self.url}/predict", data=data, headers={"content-type": "image/jpeg"},
                                        timeout=60)
                right = response.status_code == 200 and (label is None or response.json()["label"] == label)
                self.results.append((time.monotonic(), response.status_code, right))
            except requests.RequestException:
                self.results.append((time.monotonic(), None, False))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=90)

    def failures(self) -> list[tuple[float, int | None, bool]]:
        return [r for r in self.results if not r[2]]


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

"""The live Serve app under abuse: >= 1,000 generated bad requests, a model replica SIGKILLed under
load, and a (short, in CI) soak. Full-length figures: bench/reliability.py."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

import fuzz_inputs
from asl_platform.config import ServeConfig
from asl_platform.serve import APP_NAME, build_application
from conftest import colour_image
from test_serve_e2e import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(ray_local, colour_model) -> str:
    from ray import serve

    port = free_port()
    settings = ServeConfig(model=str(colour_model), port=port, min_replicas=2, max_replicas=2, demo=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_application(settings), name=APP_NAME, route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


# --------------------------------------------------------------------------- helpers shared with bench/reliability.py


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


def running_replicas() -> int:
    from ray import serve

    states = serve.status().applications[APP_NAME].deployments["ASLModel"].replica_states
    return int(sum(n for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING"))


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


# --------------------------------------------------------------------------- tests


def test_fuzzing_over_1000_bad_requests_all_get_4xx_json_and_none_5xx(server):
    cases = fuzz_inputs.generate(seed=1)
    assert len(cases) >= 1000
    results = fuzz_inputs.run_fuzz(server, cases)
    rows = fuzz_inputs.summarize(results)
    print("\n" + fuzz_inputs.format_table(rows))
    bad = [r for r in results if not r["ok"]]
    assert not bad, f"{len(bad)} bad requests got a wrong answer, e.g. {bad[:5]}"
    assert sum(row["5xx"] for row in rows) == 0
    response = requests.post(f"{server}/predict", data=colour_image("C"), headers={"content-type": "image/png"})
    assert response.status_code == 200 and response.json()["label"] == "C"  # still serving


def test_killed_model_replica_is_replaced_and_no_request_fails(server):
    before = model_replica_pids()
    assert len(before) == 2, before
    with Load(server, clients=6) as load:
        time.sleep(3)
        _, replaced_after = kill_replica_and_wait(before)
        time.sleep(2)  # traffic after recovery
    assert replaced_after is not None, "Serve did not replace the killed replica within 90 s"
    answered = len(load.results)
    failures = load.failures()
    print(f"\nreplica kill: {answered} requests, {len(failures)} failed, replaced in {replaced_after:.1f} s")
    assert answered > 20
    assert failures == [], f"requests failed around the kill: {failures[:5]}"


def test_short_soak_no_errors_and_bounded_memory(server):
    """CI runs 30 s; bench/reliability.py runs the full 10 minutes."""
    duration = float(os.environ.get("ASL_SOAK_SECONDS", "30"))
    pids = list(model_replica_pids().values())
    rss = {pid: [] for pid in pids}
    with Load(server, clients=4) as load:
        started = time.monotonic()
        while time.monotonic() - started < duration:
            time.sleep(duration / 6)
            for pid in pids:
                rss[pid].append(resident_mb(pid))
    assert len(load.results) > 50
    assert load.failures() == []
    growth = {pid: values[-1] - values[1] for pid, values in rss.items() if len(values) > 2}
    print(f"\nsoak {duration:.0f} s: {len(load.results)} requests, RSS growth per replica (MB): {growth}")
    assert all(g < 100 for g in growth.values()), growth


def resident_mb(pid: int) -> float:
    """Resident memory of a process from /proc (Linux), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")

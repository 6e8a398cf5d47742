"""The live Serve app under abuse: >= 1,000 generated bad requests, a model replica SIGKILLed under
load, and a (short, in CI) soak. Full-length figures: bench/reliability.py."""

from __future__ import annotations

import os
import time

import pytest
import requests
from helpers.models import colour_image
from helpers.serving import colour_samples

from asl_platform.config import ServeConfig
from helpers import probe
from helpers.probe import Load, kill_replica_and_wait, model_replica_pids, resident_mb

pytestmark = pytest.mark.e2e
SHARED_SERVE = "own"  # two replicas, one of them killed: an application of its own on the shared Serve


@pytest.fixture(scope="module")
def server(shared_serve, colour_model) -> str:
    return shared_serve.app(ServeConfig(model=str(colour_model), min_replicas=2, max_replicas=2, demo=False))


# --------------------------------------------------------------------------- tests


def test_fuzzing_over_1000_bad_requests_all_get_4xx_json_and_none_5xx(server):
    cases = probe.generate(seed=1)
    assert len(cases) >= 1000
    results = probe.run_fuzz(server, cases)
    rows = probe.summarize(results)
    print("\n" + probe.format_table(rows))
    bad = [r for r in results if not r["ok"]]
    assert not bad, f"{len(bad)} bad requests got a wrong answer, e.g. {bad[:5]}"
    assert sum(row["5xx"] for row in rows) == 0
    response = requests.post(f"{server}/predict", data=colour_image("C"), headers={"content-type": "image/png"})
    assert response.status_code == 200 and response.json()["label"] == "C"  # still serving


def test_killed_model_replica_is_replaced_and_no_request_fails(server):
    before = model_replica_pids()
    assert len(before) == 2, before
    with Load(server, clients=6, samples=colour_samples()) as load:
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
    with Load(server, clients=4, samples=colour_samples()) as load:
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

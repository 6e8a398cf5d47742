"""A deploy that changes only the deployments' ``user_config`` reaches the running replicas through
``reconfigure``: the model's batching and the demo's thresholds change, and no replica restarts.

Deployed the declarative way, as ``serve deploy`` does: a config file (``serve_config_document``)
handed to the Serve controller. The shared test Ray runs without a dashboard, which ``serve deploy``
talks to, so the test uses ``serve run --non-blocking CONFIG``, which makes the same controller call
(``deploy_apps``) from the CLI.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import requests
import yaml
from helpers.datasets import REPO_ROOT
from helpers.models import colour_image
from helpers.serving import free_port, run_demo_event

from asl_platform.config import ServeConfig
from asl_platform.serving.deployments import serve_config_document
from helpers.probe import model_replica_pids

pytestmark = pytest.mark.e2e
SHARED_SERVE = "fresh"  # deployed by the Serve CLI, as `serve deploy` would: a Serve of its own
SERVE_CLI = Path(sys.executable).parent / "serve"


def serve_deploy(document: dict, path: Path) -> None:
    """Deploy ``document`` to this session's Ray with the Serve CLI (returns once the controller has it)."""
    import ray

    path.write_text(yaml.safe_dump(document))
    done = subprocess.run([str(SERVE_CLI), "run", "--non-blocking", "--address", ray.get_runtime_context().gcs_address,
                           str(path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"serve run failed:\n{done.stdout}\n{done.stderr}"


def wait_for_settings(url: str, expected: dict, timeout: float = 180) -> dict:
    """/healthz once it reports ``expected`` as the live settings (a deploy is applied asynchronously)."""
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            response = requests.get(f"{url}/healthz", timeout=10)
            seen = response.json() if response.status_code == 200 else response.text
            if isinstance(seen, dict) and seen.get("settings") == expected:
                return seen
        except requests.RequestException as exc:
            seen = repr(exc)
        time.sleep(1)
    pytest.fail(f"the live settings never became {expected}; last /healthz: {seen}")


def demo_instructions(url: str, session: str) -> str:
    """The fingerspelling instructions as a newly loaded demo page shows them."""
    with httpx.Client(base_url=url, timeout=60) as client:
        message = run_demo_event(client, session, [], outputs="spell-help")
    assert message["success"], message
    (value,) = message["output"]["data"]
    return value if isinstance(value, str) else value["value"]


def replicas() -> dict[str, dict[str, int]]:
    return {deployment: model_replica_pids(deployment) for deployment in ("ASLModel", "ASLIngress")}


def test_a_changed_user_config_is_applied_without_restarting_replicas(shared_serve, colour_model, tmp_path):
    from ray import serve

    shared_serve.stop()
    settings = ServeConfig(model=str(colour_model), port=free_port(), max_replicas=1)
    url = f"http://127.0.0.1:{settings.port}"
    changes = {"max_batch_size": 3, "batch_wait_timeout_s": 0.05, "spell_hold_s": 0.4}
    first, changed = (serve_config_document(s) for s in (settings, settings.model_copy(update=changes)))
    assert first["applications"][0]["args"] == changed["applications"][0]["args"]  # only user_config differs
    defaults = {key: getattr(settings, key) for key in ("max_batch_size", "batch_wait_timeout_s", "spell_hold_s")}
    try:
        serve_deploy(first, tmp_path / "first.yaml")
        wait_for_settings(url, defaults)
        assert "held for 1 s" in demo_instructions(url, "reconf-1")
        before = replicas()
        assert [len(pids) for pids in before.values()] == [1, 1], before

        serve_deploy(changed, tmp_path / "changed.yaml")
        wait_for_settings(url, {**defaults, **changes})
        assert "held for 0.4 s" in demo_instructions(url, "reconf-2")  # the demo reads them at use time
        assert replicas() == before  # the same replica actors in the same processes: reconfigured, not restarted
        response = requests.post(f"{url}/predict", data=colour_image("B"), headers={"content-type": "image/png"})
        assert response.status_code == 200 and response.json()["label"] == "B", response.text

        serve_deploy(first, tmp_path / "first-again.yaml")  # and back, the same way
        wait_for_settings(url, defaults)
        assert replicas() == before
        statuses = serve.status().applications["asl"].deployments
        assert {name: str(d.status.value) for name, d in statuses.items()} == {"ASLModel": "HEALTHY", "ASLIngress": "HEALTHY"}
    finally:
        serve.shutdown()

"""Running on a Ray cluster, for real: cluster.yaml through Ray's own schema, and a local two-node
cluster (``ray start --head`` + ``ray start --address``, token auth on) that runs a job submitted with
``ray job submit --working-dir``, then deploys ``serve_config.yaml`` with ``serve deploy`` and calls the
endpoint, exactly as docs/cluster.md tells users to.

The cluster is this test's own: its own ports, its own temp dirs, stopped by signalling the two
``ray start --block`` processes (never ``ray stop``, which would kill every Ray on the machine,
including the pytest session's own ``ray_local``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
import yaml
from helpers.cluster import REPO_ROOT, free_ports, running_cluster, submit_job
from helpers.models import colour_image
from helpers.s3 import upload_folder

from asl_platform.data.synthetic import make_smoke_dataset

# ----------------------------------------------------------------------------------- cluster.yaml


def load_cluster_yaml() -> dict:
    return yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_own_validation():
    """The same checks `ray up` runs before it touches AWS: defaults filled in, then the JSON schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(load_cluster_yaml())
    validate_config(config)  # raises on an unknown key, a wrong type, a head type not in the node types
    assert config["provider"]["type"] == "aws"


def test_cluster_yaml_has_head_cpu_and_autoscaling_gpu_workers_with_token_auth():
    config = load_cluster_yaml()
    types = config["available_node_types"]
    head = config["head_node_type"]
    gpu = [name for name, t in types.items() if t["node_config"]["InstanceType"].startswith(("g", "p"))]
    cpu = [name for name in types if name not in gpu and name != head]
    assert gpu and cpu, types.keys()
    for name in gpu:
        assert types[name]["min_workers"] == 0 and types[name]["max_workers"] >= 1  # scales from zero
        assert "gpu" in types[name]["docker"]["worker_image"]
    assert config["idle_timeout_minutes"] > 0
    assert sum(t.get("max_workers", 0) for n, t in types.items() if n != head) <= config["max_workers"]

    # The package is uploaded and installed on every node; the token goes with it.
    mounts = config["file_mounts"]
    assert mounts.get("~/asl-platform") == "." and "~/.ray/auth_token" in mounts
    assert any("pip install" in c and "~/asl-platform" in c for c in config["setup_commands"])
    assert ".gitignore" in config["rsync_filter"]  # .venv/, asl_runs/ stay on the laptop
    # Every `ray start` runs with token authentication on (Ray 2.60 only enables it by default for
    # clusters that ray.init() starts itself, and a worker never turns it on by itself).
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), config[key]


# ------------------------------------------------------------------------- a real local cluster


@pytest.fixture(scope="module")
def local_cluster(s3_server):
    """Head (1 CPU) + one worker node (1 CPU) on this machine."""
    with running_cluster(s3_server, "aslc-") as cluster:
        yield cluster


@pytest.mark.e2e
@pytest.mark.own_ray
@pytest.mark.timeout(600)
def test_job_submitted_to_a_two_node_cluster_with_token_auth(local_cluster, s3_server, tmp_path):
    cluster = local_cluster
    # Token auth is really on: the Jobs API refuses a request without the token, or with a wrong one.
    assert cluster.api("/api/jobs/", token=None)[0] == 401
    assert cluster.api("/api/jobs/", token="not-the-token")[0] == 403
    nodes = cluster.alive_nodes()
    assert len(nodes) == 2 and sum(n["is_head_node"] for n in nodes) == 1, nodes

    # The whole pipeline, sized to run in seconds: the tiny backbone on the synthetic smoke set, read
    # from S3 by the nodes (Ray Data). Outputs and Tune/Train storage are paths every node can reach.
    data_uri = upload_folder(s3_server, make_smoke_dataset(tmp_path / "smoke"), "asl-data", "smoke")
    output, storage = tmp_path / "asl_runs", tmp_path / "shared-storage"
    logs = submit_job(cluster, "asl-cluster-test-pipeline", [
        "python", "jobs/pipeline.py", "--backbone", "tiny", "--data", data_uri, "--output", str(output),
        "--set", "model.weights=none", "--set", "run.name=cluster", "--set", f"run.storage_path={storage}",
        "--set", "tune.num_samples=2", "--set", "tune.max_epochs=2", "--set", "tune.grace_period=1",
        "--set", "tune.cpus_per_trial=1", "--set", "train.epochs=2",
    ])
    for stage in ("[1/6] ingest", "[3/6] tune", "[4/6] retrain", "[6/6] export", "asl-platform pipeline finished"):
        assert stage in logs, f"{stage!r} not in the job's output:\n{logs[-6000:]}"

    # The job wrote the run: summary, trials, an exported model, Tune and Train results in the storage.
    run_dir = output / "cluster"
    summary = json.loads((run_dir / "summary.json").read_text())
    meta = json.loads((Path(summary["model_dir"]) / "model.json").read_text())
    assert meta["backbone"] == "tiny" and meta["data"]["root"] == data_uri, meta["data"]
    assert len(json.loads((run_dir / "tune" / "trials.json").read_text())) == 2
    assert (storage / "tune").is_dir() and any(storage.glob("retrain-*")), list(storage.iterdir())

    # The working dir the head unpacked is the repository minus what .gitignore (and Ray: .git/) leave out.
    unpacked = [p for p in cluster.root.glob("head-*/session_latest/runtime_resources/working_dir_files/*")
                if p.is_dir()]
    assert len(unpacked) == 1 and (unpacked[0] / "jobs" / "pipeline.py").is_file(), unpacked
    ignored = {".git", ".venv", "asl_runs", "__pycache__", ".pytest_cache", "build", "dist"}
    uploaded = [p.relative_to(unpacked[0]) for p in unpacked[0].rglob("*")]
    assert not [p for p in uploaded if ignored & set(p.parts) or p.parts[0].endswith(".egg-info")], uploaded

    # The driver ran on the cluster's head node, and both nodes did the job's work (one CPU each): its
    # actors (feature extraction, Tune trials, the Ray Train worker) were placed on both.
    _, info = cluster.api("/api/jobs/asl-cluster-test-pipeline")
    assert info["driver_node_id"] == next(n["node_id"] for n in nodes if n["is_head_node"]), info
    status, body = cluster.api("/api/v0/actors?limit=1000&detail=true")
    assert status == 200, body
    actors = [a for a in body["data"]["result"]["result"] if a["job_id"] == info["job_id"] and a["node_id"]]
    placed = sorted((a["class_name"], a["node_id"][:8]) for a in actors)
    assert {a["node_id"] for a in actors} == {n["node_id"] for n in nodes}, placed

    # ---- Serve: `serve deploy serve_config.yaml` (through the token-protected dashboard API), then call it.
    # A copy with a free port (8000 may be taken on a CI machine), the proxy on the head only (both
    # nodes share this machine's ports: two proxies would collide) and the model the job just exported,
    # published to S3 as a models folder: the replicas fetch its `latest` version from there.
    model_dir = Path(summary["model_dir"])
    model_uri = upload_folder(s3_server, model_dir.parent, "asl-models", "cluster")
    config = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    port = free_ports(1)[0]
    config["proxy_location"] = "HeadOnly"
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["model"] = model_uri
    config_copy = tmp_path / "serve_config.yaml"
    config_copy.write_text(yaml.safe_dump(config))
    deployed = cluster.cli("serve", "deploy", str(config_copy))
    assert deployed.returncode == 0, f"serve deploy failed:\n{deployed.stdout}\n{deployed.stderr}\n{cluster.logs()}"
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(2)
    else:
        status = cluster.cli("serve", "status")
        pytest.fail(f"the Serve app never became healthy:\n{status.stdout}\n{status.stderr}\n{cluster.logs()}")
    answer = requests.post(f"{url}/predict", data=colour_image("A", fmt="JPEG"), headers={"content-type": "image/jpeg"},
                           timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == {"name": "cluster", "version": model_dir.name}
    assert answer.json()["label"] in meta["classes"]
    fetched = list(Path(cluster.env["ASL_PLATFORM_MODEL_CACHE"]).glob(f"*/cluster/{model_dir.name}/model.safetensors"))
    assert [p.read_bytes() for p in fetched] == [(model_dir / "model.safetensors").read_bytes()], fetched
    assert requests.get(f"{url}/demo/", timeout=30).status_code == 200
    status = cluster.cli("serve", "status")
    assert "RUNNING" in status.stdout, status.stdout + status.stderr
    # No `serve shutdown`: the fixture stops the whole cluster.

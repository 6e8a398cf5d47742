"""Losing a whole node, on a real cluster: the local multi-node cluster of test_cluster.py (token auth,
`ray job submit`, `serve deploy`), with a head that runs no work (``--num-cpus=0``, as on clusters whose
head only coordinates), so the work is on worker nodes and a worker node's loss hits it.

A node is lost by SIGKILLing its process group (raylet, agents, workers: nothing shuts down cleanly),
while (a) an ASHA search, (b) a Ray Train run checkpointing to S3 and (c) a model replica under load run
on it; then another node joins, as the autoscaler would add one. The cluster's GCS keeps its state in a Redis of
the test's own (GCS fault tolerance), so that (d) the head itself can be lost under a load and restarted. What each
saw is written to test-artifacts/node_loss.json. Every wait is bounded; the fixture stops the whole cluster whatever
happens.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path

import pytest
import requests
import yaml
from helpers import paced
from helpers.cluster import REPO_ROOT, LocalCluster, free_ports, running_cluster, submit_job
from helpers.redis import running_redis
from helpers.s3 import s3_client, upload_folder
from helpers.serving import colour_samples

from asl_platform.data.synthetic import make_smoke_dataset
from helpers.probe import Load

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.own_ray]
ARTIFACTS = REPO_ROOT / "test-artifacts"
RUNS_BUCKET = "asl-node-loss"
WORKER_CPUS = 2  # a Ray Train worker (1 CPU) and the Ray Data tasks that feed it


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    with running_redis(tmp_path_factory.mktemp("redis"), free_ports(1)[0]) as redis:
        yield redis


@pytest.fixture(scope="module")
def cluster(s3_server, redis):
    """GCS fault tolerance on: its state in Redis, so that the last test can lose the head and restart it."""
    with running_cluster(s3_server, "asln-", redis=redis, head_cpus=0, worker_cpus=WORKER_CPUS) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def data_uri(s3_server, tmp_path_factory) -> str:
    smoke = make_smoke_dataset(tmp_path_factory.mktemp("smoke") / "smoke", per_class=6)
    return upload_folder(s3_server, smoke, "asl-node-loss-data", "smoke")


@pytest.fixture(scope="module")
def record():
    """What each scenario measured, for the closing note and the CI log."""
    figures: dict[str, dict] = {}
    yield figures
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "node_loss.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {}  # a run of some of the tests keeps the others'
    path.write_text(json.dumps({**earlier, **figures}, indent=2))


def worker_names(cluster: LocalCluster) -> list[str]:
    return [name for name in cluster.processes if not name.startswith("head")]


def ensure_workers(cluster: LocalCluster, count: int) -> None:
    """At least ``count`` live worker nodes (an earlier test that failed midway may have left fewer)."""
    while len(worker_names(cluster)) < count:
        cluster.add_worker(cpus=WORKER_CPUS)


@contextlib.contextmanager
def job_stopped_after(cluster: LocalCluster, submission_id: str):
    """The job is stopped when the test ends, even when a check fails: the module's later tests share
    the cluster's CPUs."""
    try:
        yield
    finally:
        if job_status(cluster, submission_id) in ("PENDING", "RUNNING"):
            cluster.cli("ray", "job", "stop", submission_id)


def submit(cluster: LocalCluster, submission_id: str, entrypoint: list[str]) -> None:
    result = cluster.cli("ray", "job", "submit", "--no-wait", "--submission-id", submission_id, "--working-dir", ".",
                         "--", *entrypoint)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{cluster.logs()}"


def job_status(cluster: LocalCluster, submission_id: str) -> str:
    _, info = cluster.api(f"/api/jobs/{submission_id}")
    return info.get("status", "?") if isinstance(info, dict) else "?"


def job_logs(cluster: LocalCluster, submission_id: str) -> str:
    return cluster.cli("ray", "job", "logs", submission_id).stdout


def wait_until(what: str, ready, timeout: float, cluster: LocalCluster, job: str | None = None, every: float = 1.0):
    """``ready()``'s first true value; fails (with the job's logs) on timeout or when the job ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        if job and job_status(cluster, job) in ("FAILED", "STOPPED", "SUCCEEDED"):
            pytest.fail(f"job {job} ended ({job_status(cluster, job)}) while waiting for {what}:\n"
                        f"{job_logs(cluster, job)[-6000:]}")
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n"
                f"{job_logs(cluster, job)[-6000:] if job else ''}\n{cluster.logs()}")


def wait_for_job(cluster: LocalCluster, job: str, timeout: float) -> str:
    status = wait_until(f"job {job} to end", lambda: (s := job_status(cluster, job)) in ("FAILED", "STOPPED", "SUCCEEDED")
                        and s, timeout, cluster, every=2)
    logs = job_logs(cluster, job)
    if status != "SUCCEEDED":
        pytest.fail(f"job {job} {status}:\n{logs[-8000:]}\n{cluster.logs()}")
    return logs


def training_args(data: str, output: Path, name: str, storage: str) -> list[str]:
    return ["--backbone", "tiny", "--data", data, "--output", str(output), "--set", "model.weights=none",
            "--set", f"run.name={name}", "--set", f"run.storage_path={storage}"]


# --------------------------------------------------------------------------------- (a) ASHA search


def _trial_results(experiment: Path) -> dict[str, list[dict]]:
    results = {}
    for path in experiment.glob("*/result.json"):
        with contextlib.suppress(ValueError):
            results[path.parent.name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return results


@pytest.mark.timeout(900)
def test_asha_search_finishes_without_redoing_a_finished_trial_when_a_node_is_lost(cluster, data_uri, tmp_path, record):
    epochs, samples = 6, 3
    storage, output, hold_dir = tmp_path / "storage", tmp_path / "asl_runs", tmp_path / "hold"
    job = "node-loss-tune"
    ensure_workers(cluster, 1)
    with job_stopped_after(cluster, job):
        _lose_a_node_during_the_search(cluster, data_uri, storage, output, hold_dir, job, epochs, samples, record)


def _lose_a_node_during_the_search(cluster, data_uri, storage, output, hold_dir, job, epochs, samples, record):
    """The worker node runs two trials at a time: the first runs through, the second and third hold after
    their second epoch (tests/helpers/paced.py) until the node is gone, whatever the machine's speed."""
    held_at = 2
    submit(cluster, job, ["python", "tests/helpers/paced.py", "--hold-dir", str(hold_dir), "--hold", "1,2",
                          "--at-report", str(held_at), "--", "jobs/tune.py",
                          *training_args(data_uri, output, "nl-tune", str(storage)),
                          "--set", f"tune.num_samples={samples}", "--set", f"tune.max_epochs={epochs}",
                          "--set", f"tune.grace_period={epochs}",  # ASHA stops none early: every trial has a known end
                          "--set", "tune.cpus_per_trial=1", "--set", "tune.max_failures=2"])
    experiment = storage / "tune"

    # Tune copies each trial's result.json to the storage path every few seconds: wait until the finished
    # trial and both held ones (their rows carry the holding process's pid) are there.
    def one_finished_two_held():
        holders = {json.loads(path.read_text())["pid"] for path in hold_dir.glob("holding-*")}
        results = _trial_results(experiment)
        finished = {t for t, rows in results.items() if len(rows) == epochs}
        held = [t for t, rows in results.items() if len(rows) == held_at and rows[-1]["pid"] in holders]
        return (finished, held) if len(finished) == 1 and len(held) == 2 == len(holders) else None

    finished, running = wait_until("a finished trial and two held at epoch 2", one_finished_two_held, 600, cluster,
                                   job, every=0.2)
    killed_at = cluster.kill_node(worker_names(cluster)[0])
    cluster.add_worker(cpus=WORKER_CPUS)
    paced.release(hold_dir)  # the trials run again on the new node claim new numbers and run through
    wait_for_job(cluster, job, 600)

    results = _trial_results(experiment)
    rows = json.loads((output / "nl-tune" / "tune" / "trials.json").read_text())
    assert len(rows) == samples and not [r for r in rows if r.get("error")], rows
    assert all(len(trial_rows) >= epochs for trial_rows in results.values()), {t: len(r) for t, r in results.items()}
    # No finished trial was redone: each epoch once, every result from before the node died.
    for trial in finished:
        assert [row["training_iteration"] for row in results[trial]] == list(range(1, epochs + 1)), trial
        assert max(row["timestamp"] for row in results[trial]) <= killed_at, trial
    # The trials that were running were run again (trials keep no checkpoint): they have results from after the loss.
    rerun = [t for t in running if any(row["timestamp"] > killed_at for row in results[t])]
    assert rerun == running, (running, {t: results[t][-1]["timestamp"] for t in running}, killed_at)
    record["asha_search"] = {"trials": samples, "epochs_per_trial": epochs, "finished_before_loss": len(finished),
                             "running_at_loss": {t: len(r) for t, r in
                                                 ((t, _rows_before(results[t], killed_at)) for t in running)},
                             "rerun": len(rerun), "errored": 0,
                             "results_of_rerun_trials": {t: len(results[t]) for t in rerun},
                             "seconds_from_loss_to_end": round(time.time() - killed_at, 1)}


def _rows_before(rows: list[dict], moment: float) -> list[dict]:
    return [row for row in rows if row["timestamp"] <= moment]


# ------------------------------------------------------------------------- (b) Ray Train, S3 checkpoints


def _checkpoints(client, prefix: str) -> set[str]:
    """Checkpoint folders Ray Train has written to under ``prefix`` (checkpoint_<time>/; not its
    checkpoint_manager_snapshot.json file)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=RUNS_BUCKET, Prefix=prefix)
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    return {part for key in keys for part in key.split("/")[:-1] if part.startswith("checkpoint_")}


def _registered_checkpoints(client, prefix: str) -> int:
    """How many checkpoints Ray Train's checkpoint manager has registered (its snapshot on S3): the ones a
    restarted run resumes from (a checkpoint is uploaded by the worker before the manager registers it)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=RUNS_BUCKET, Prefix=prefix)
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])
            if item["Key"].endswith("checkpoint_manager_snapshot.json")]
    if not keys:
        return 0
    snapshot = json.loads(client.get_object(Bucket=RUNS_BUCKET, Key=keys[0])["Body"].read())
    return len(snapshot["checkpoint_results"])


@pytest.mark.timeout(900)
def test_ray_train_resumes_from_its_s3_checkpoint_when_a_node_is_lost(cluster, data_uri, s3_server, tmp_path, record):
    epochs = 4
    client = s3_client(s3_server)
    if RUNS_BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=RUNS_BUCKET)
    output, job = tmp_path / "asl_runs", "node-loss-train"
    ensure_workers(cluster, 1)
    with job_stopped_after(cluster, job):
        _lose_a_node_during_training(cluster, data_uri, client, output, job, epochs, tmp_path, record)


def _lose_a_node_during_training(cluster, data_uri, client, output, job, epochs, tmp_path, record):
    """The worker holds after its second epoch's report (tests/helpers/paced.py), its checkpoint on S3, until the
    node is gone: the loss comes between two epochs on any machine."""
    hold_dir = tmp_path / "hold"
    submit(cluster, job, ["python", "tests/helpers/paced.py", "--hold-dir", str(hold_dir), "--hold", "0", "--at-report", "2",
                          "--", "jobs/train.py",
                          *training_args(data_uri, output, "nl-train", f"s3://{RUNS_BUCKET}/train-storage"),
                          "--set", f"train.epochs={epochs}", "--set", f"train.early_stopping_patience={epochs}",
                          "--set", "train.checkpoints_to_keep=10", "--set", "train.cpus_per_worker=1",
                          "--set", "train.augment=false"])
    first = wait_until("a checkpoint on S3", lambda: _checkpoints(client, "train-storage/"), 600, cluster, job, every=0.2)
    written = wait_until("a second checkpoint on S3", lambda: len(c := _checkpoints(client, "train-storage/")) > len(first)
                         and c, 600, cluster, job, every=0.2)
    wait_until("the worker holding after epoch 2, both checkpoints registered by Ray Train",
               lambda: paced.holding(hold_dir) and _registered_checkpoints(client, "train-storage/") == 2, 600, cluster,
               job, every=0.2)
    killed_at = cluster.kill_node(worker_names(cluster)[0])
    at_loss = _checkpoints(client, "train-storage/")
    cluster.add_worker(cpus=WORKER_CPUS)
    paced.release(hold_dir)
    logs = wait_for_job(cluster, job, 600)

    summary = json.loads((output / "nl-train" / "job_summary.json").read_text())
    assert summary["epochs"] == list(range(1, epochs + 1)), summary["epochs"]  # each epoch once, in order
    # Epoch lines, by the worker process that logged them ("(RayTrainWorker pid=N, ...) ... epoch 3/6: ...").
    logged = [(match[1], int(match[2])) for match in re.finditer(rf"pid=(\d+)[^\n]*?epoch (\d+)/{epochs}: train loss", logs)]
    workers = list(dict.fromkeys(pid for pid, _ in logged))
    assert len(workers) == 2, logged  # the first worker, lost with its node, and its replacement
    resumed_at = next(epoch for pid, epoch in logged if pid == workers[1])
    # The replacement started right after the last checkpoint there was when the node died (one being
    # uploaded at that moment may be on S3 without Ray Train having registered it), not from epoch 1.
    assert len(at_loss) <= resumed_at <= len(at_loss) + 1 and resumed_at > 1, (logged, sorted(at_loss))
    assert len(at_loss) >= len(written) >= 2

    # The exported model reproduces its own test report (evaluated again, on the cluster, from S3 data).
    version_dir = Path(summary["model_dir"])
    card = json.loads((version_dir / "model.json").read_text())
    again = tmp_path / "again"
    evaluation = "node-loss-evaluate"
    submit(cluster, evaluation, ["asl-platform", "evaluate", "--model", str(version_dir), "--data", data_uri,
                                 "--split", "test", "--runtime", "torch", "--output", str(again)])
    wait_for_job(cluster, evaluation, 300)
    report = next(r for r in (json.loads(path.read_text()) for path in again.glob("*.json")) if "accuracy" in r)
    assert report["images"] == card["metrics"]["test_images"] and report["accuracy"] == card["metrics"]["test_accuracy"]
    assert abs(report["loss"] - card["metrics"]["test_loss"]) < 1e-6
    record["ray_train"] = {"epochs": epochs, "checkpoints_when_lost": len(at_loss), "resumed_at_epoch": resumed_at,
                           "epochs_logged": [epoch for _, epoch in logged], "test_accuracy": report["accuracy"],
                           "reproduced_test_accuracy": card["metrics"]["test_accuracy"],
                           "seconds_from_loss_to_end": round(time.time() - killed_at, 1)}


# ------------------------------------------------------------------------------ (c) a model replica


def _serve_actors(cluster: LocalCluster, deployment: str) -> list[dict]:
    status, body = cluster.api("/api/v0/actors?limit=1000&detail=true")
    assert status == 200, body
    return [a for a in body["data"]["result"]["result"]
            if a["state"] == "ALIVE" and a["class_name"] == f"ServeReplica:asl:{deployment}"]


@pytest.mark.timeout(900)
def test_serving_keeps_answering_when_a_model_replicas_node_is_lost(cluster, colour_model, tmp_path, record):
    ensure_workers(cluster, 2)  # one model replica on each
    config = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    port = free_ports(1)[0]
    config.update(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    app = config["applications"][0]
    app["args"].update(model=str(colour_model), demo=False)
    model_deployment = next(d for d in app["deployments"] if d["name"] == "ASLModel")
    model_deployment["autoscaling_config"].update(min_replicas=2, max_replicas=2)
    model_deployment["max_replicas_per_node"] = 1  # one on each worker node
    (tmp_path / "serve_config.yaml").write_text(yaml.safe_dump(config))
    deployed = cluster.cli("serve", "deploy", str(tmp_path / "serve_config.yaml"))
    assert deployed.returncode == 0, f"{deployed.stdout}\n{deployed.stderr}"
    url = f"http://127.0.0.1:{port}"

    def healthy_with_two_replicas():
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{url}/healthz", timeout=5).status_code == 200 and len(_serve_actors(cluster, "ASLModel")) == 2
        return False

    wait_until("the app healthy with two model replicas", healthy_with_two_replicas, 300, cluster)
    nodes_by_id = {cluster.node_id(name): name for name in worker_names(cluster)}
    replica_nodes = {nodes_by_id.get(a["node_id"]) for a in _serve_actors(cluster, "ASLModel")}
    ingress_node = {nodes_by_id.get(a["node_id"], "head") for a in _serve_actors(cluster, "ASLIngress")}
    assert len(replica_nodes) == 2 and None not in replica_nodes, replica_nodes  # one on each worker node
    victim = sorted(replica_nodes - ingress_node)[0]  # a model replica's node (the ingress's too, if it must)

    with Load(url, clients=4, samples=colour_samples()) as load:
        time.sleep(5)
        killed_at = time.monotonic()
        cluster.kill_node(victim)
        wait_until("answers after the loss", lambda: sum(1 for r in load.results if r[0] > killed_at and r[2]) >= 20,
                   120, cluster)
        cluster.add_worker(cpus=WORKER_CPUS)
        wait_until("two model replicas again", lambda: len(_serve_actors(cluster, "ASLModel")) == 2, 180, cluster)
        recovered_at = time.monotonic()
        time.sleep(5)
    after = [r for r in load.results if r[0] > killed_at]
    failed = load.failures()
    record["serving"] = {"clients": 4, "requests": len(load.results), "failed": len(failed),
                         "failed_statuses": sorted({str(r[1]) for r in failed}),
                         "requests_after_loss": len(after), "answered_after_loss": sum(r[2] for r in after),
                         "two_replicas_again_after_s": round(recovered_at - killed_at, 1),
                         "killed_node_had_the_ingress": victim in ingress_node}
    # Classification is idempotent: a request caught on the lost replica is sent again by the ingress
    # (to the other replica), so the loss costs latency, not answers.
    assert failed == [], record["serving"]
    assert requests.post(f"{url}/predict", data=colour_samples()[0][0], headers={"content-type": "image/jpeg"},
                         timeout=60).status_code == 200


# ------------------------------------------------------------------------------ (d) the head


def _ask(url: str, body: tuple[str, dict], session=requests) -> tuple[float, str, bool]:
    """One request: (when, its status or what went wrong, answered); a hang is a timeout, counted as such."""
    path, kwargs = body
    sent = time.monotonic()
    try:
        response = session.post(f"{url}{path}", timeout=10, **kwargs)
        return sent, str(response.status_code), response.status_code == 200
    except requests.Timeout:
        return sent, "timeout", False
    except requests.RequestException as exc:
        return sent, type(exc).__name__, False


@pytest.mark.real_data
@pytest.mark.timeout(900)
def test_serving_answers_while_the_head_is_lost_and_the_cluster_recovers(cluster, hand_model, asl_alphabet, tmp_path,
                                                                          record):
    """The hand-aware model served from a worker node (its replicas and ingress there, its proxy's own port); a load
    of /predict and /v1/landmarks through that proxy; the head's processes killed (GCS, Serve controller); the load
    goes on; the head restarted on its Redis namespace, as a supervisor would; the same replicas serve on, and a
    redeploy and a new job are accepted."""
    from helpers.datasets import detected_photos

    ensure_workers(cluster, 1)
    worker = worker_names(cluster)[0]
    # Serve's proxies are placed when Serve starts (an earlier test's app runs HeadOnly): start it afresh.
    cluster.cli("serve", "shutdown", "-y")
    pinned = {"resources": {f"node-{worker}": 0.01}}  # both deployments on this worker node: the head only coordinates
    config = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    config.update(proxy_location="EveryNode", http_options={"host": "127.0.0.1", "port": free_ports(1)[0]})
    app = config["applications"][0]
    app["args"].update(model=str(hand_model), demo=False)
    for deployment in app["deployments"]:
        deployment.setdefault("ray_actor_options", {}).update(pinned)
        if deployment["name"] == "ASLModel":
            deployment["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    (tmp_path / "serve_config.yaml").write_text(yaml.safe_dump(config))
    deployed = cluster.cli("serve", "deploy", str(tmp_path / "serve_config.yaml"))
    assert deployed.returncode == 0, f"{deployed.stdout}\n{deployed.stderr}"
    url = f"http://127.0.0.1:{cluster.proxy_port(worker)}"  # the worker node's proxy
    (photo, hand), = detected_photos(asl_alphabet, ["B"], per_class=1, scan=30)["B"]
    bodies = [("/predict", {"data": photo.read_bytes(), "headers": {"content-type": "image/jpeg"}}),
              ("/v1/landmarks", {"json": {"landmarks": hand.landmarks.tolist(), "handedness": hand.handedness}})]

    def serving() -> bool:
        return all(_ask(url, body)[2] for body in bodies)

    wait_until("the app answering through the worker node's proxy", serving, 300, cluster, every=2)
    replicas = {a["actor_id"] for a in _serve_actors(cluster, "ASLModel") + _serve_actors(cluster, "ASLIngress")}
    # 4 clients, each sending one kind of request (its number's parity), stopped on the way out even on a failure.
    with Load(url, clients=4, ask=lambda session, n: _ask(url, bodies[n % 2], session), pause_s=0.05) as load:
        time.sleep(3)
        cluster.renice(worker, 10)  # one machine's cores for both nodes: the restarting head goes first
        killed_at = cluster.kill_head()
        time.sleep(15)  # the outage: no GCS, no Serve controller
        restarted_at = time.monotonic()
        starts = cluster.restart_head()
        up_at = time.monotonic()
        wait_until("the worker node back in the restarted cluster",
                   lambda: worker in {n for n in worker_names(cluster)} and len(cluster.alive_nodes()) >= 2, 180, cluster)
        status = wait_until("Serve's controller back, the app running", lambda: (
            (out := cluster.cli("serve", "status")).returncode == 0 and "RUNNING" in out.stdout and out.stdout), 180,
            cluster, every=2)
        recovered_at = time.monotonic()
        time.sleep(3)
    results = load.results
    during = [r for r in results if killed_at <= r[0] < restarted_at]
    failures = [r for r in results if not r[2]]
    settled = [r for r in during if r[0] > killed_at + 5]  # after the first seconds
    record["head_loss"] = {
        "requests": len(results), "during_outage": len(during), "answered_during_outage": sum(r[2] for r in during),
        "failed": len(failures), "failed_after_first_5_s_of_outage": sum(not r[2] for r in settled),
        "failures_by_kind": {kind: sum(r[1] == kind for r in failures) for kind in sorted({r[1] for r in failures})},
        "outage_s": round(restarted_at - killed_at, 1), "head_starts": starts, "head_up_after_restart_s": round(up_at - restarted_at, 1),
        "recovered_after_restart_s": round(recovered_at - restarted_at, 1)}
    print("head loss:", json.dumps(record["head_loss"]))
    assert during and sum(r[2] for r in during) >= 0.9 * len(during), record["head_loss"]
    assert "timeout" not in record["head_loss"]["failures_by_kind"], record["head_loss"]  # a failure is quick, never a hang
    assert all(kind.startswith("5") or kind == "ConnectionError" for kind in record["head_loss"]["failures_by_kind"])
    same = {a["actor_id"] for a in _serve_actors(cluster, "ASLModel") + _serve_actors(cluster, "ASLIngress")}
    assert same == replicas, (replicas, same, status)  # the same replicas, not new ones

    next(d for d in app["deployments"] if d["name"] == "ASLIngress")["user_config"]["spell_hold_s"] = 0.8
    (tmp_path / "serve_config.yaml").write_text(yaml.safe_dump(config))  # a redeploy (a user_config change)
    redeployed = cluster.cli("serve", "deploy", str(tmp_path / "serve_config.yaml"))
    assert redeployed.returncode == 0, f"{redeployed.stdout}\n{redeployed.stderr}"

    def applied() -> bool:
        with contextlib.suppress(requests.RequestException, ValueError):
            return requests.get(f"{url}/healthz", timeout=10).json()["settings"]["spell_hold_s"] == 0.8
        return False

    wait_until("the redeploy applied", applied, 120, cluster, every=2)
    out = submit_job(cluster, "after-head-loss", ["python", "-c", "import ray; ray.init(); print('nodes', len(ray.nodes()))"])
    assert "nodes" in out
    cluster.cli("serve", "shutdown", "-y")


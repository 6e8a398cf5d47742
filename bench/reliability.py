"""Reliability figures for the live Serve app, full length (CI runs shorter versions in
tests/serving/test_reliability.py, with the same load and fuzz code):

1. fuzzing: >= 1,000 generated bad requests; per kind, how many got a 4xx JSON error / 5xx / other;
2. replica failure: a model replica SIGKILLed under load; failed requests and time to replacement;
3. soak: steady load for ``--soak-minutes`` (default 10); errors, requests/s and the resident memory
   of every model replica, the ingress, the HTTP proxy and the Serve controller, sampled through the run.

Run from the repository root::

    python bench/reliability.py --model asl_runs/models/<run> [--soak-minutes 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test and bench tooling, not shipped
from helpers import probe  # noqa: E402
from helpers.probe import Load, free_port, kill_replica_and_wait, model_replica_pids, resident_mb  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

logger = logging.getLogger("bench.reliability")


def real_samples(limit: int = 64) -> list[tuple[bytes, str | None]]:
    """Real photos when the data set is beside the repo, else generated smoke-set images (any answer with
    200 counts: this measures availability, not accuracy)."""
    root = REPO.parent / "shared" / "data" / "asl-alphabet"
    if not root.is_dir():
        import io
        import random

        from asl_platform.data.synthetic import ASL_CLASSES, make_smoke_image

        rng, samples = random.Random(0), []
        for label in ASL_CLASSES[:limit]:
            buffer = io.BytesIO()
            make_smoke_image(label, rng).save(buffer, format="JPEG")
            samples.append((buffer.getvalue(), None))
        return samples
    files = sorted(root.glob("*/*"))[:: max(1, len(list(root.glob("*/*"))) // limit)]
    return [(path.read_bytes(), None) for path in files[:limit]]


def kill_a_replica(url: str, clients: int, samples: list) -> dict:
    before = model_replica_pids()
    with Load(url, clients, samples) as load:
        time.sleep(5)
        killed_at, recovered = kill_replica_and_wait(before, timeout=120)
        time.sleep(5)
    around = [r for r in load.results if killed_at - 1 <= r[0] <= killed_at + (recovered or 120)]
    return {"replicas": len(before), "clients": clients, "requests": len(load.results),
            "failed": len(load.failures()), "requests_during_recovery": len(around),
            "replaced_after_s": round(recovered, 1) if recovered else None}


def serve_system_pids() -> dict[str, int]:
    """The Serve controller's and HTTP proxies' PIDs: long-lived processes every request passes or
    reports to, so their memory matters in a soak as much as the replicas'."""
    import ray

    pids = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        name = actor["name"]
        if actor["namespace"] == "serve" and name.startswith(("SERVE_CONTROLLER_ACTOR", "SERVE_PROXY_ACTOR")):
            label = "controller" if name.startswith("SERVE_CONTROLLER") else f"proxy {name.rsplit('-', 1)[-1][:8]}"
            try:
                handle = ray.get_actor(name, namespace="serve")
                pids[label] = ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=10)
            except Exception:  # one not answering is left out, as for replicas
                logger.warning("no PID from %s: left out of the soak's memory figures", name)
    return pids


def soak(url: str, minutes: float, clients: int, samples: list) -> dict:
    pids = {f"model {i + 1}": pid for i, pid in enumerate(sorted(model_replica_pids().values()))}
    pids.update({"ingress": pid for pid in model_replica_pids("ASLIngress").values()})
    pids.update(serve_system_pids())
    rss: dict[str, list[float]] = {name: [] for name in pids}
    duration = minutes * 60
    with Load(url, clients, samples) as load:
        started = time.monotonic()
        while time.monotonic() - started < duration:
            time.sleep(min(30, duration / 10))
            for name, pid in pids.items():
                rss[name].append(round(resident_mb(pid), 1))
            logger.info("soak %.0f s: %d requests, %d failed, RSS %s", time.monotonic() - started, len(load.results),
                        len(load.failures()), {n: v[-1] for n, v in rss.items()})
    failures = load.failures()
    return {"minutes": minutes, "clients": clients, "requests": len(load.results), "failed": len(failures),
            "failed_statuses": sorted({str(status) for _, status, _ in failures}),
            "rps": round(len(load.results) / duration, 1), "rss_mb": rss,
            "rss_growth_mb": {n: round(v[-1] - v[0], 1) for n, v in rss.items() if v}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--soak-minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    import ray
    from ray import serve

    from asl_platform.config import ServeConfig
    from asl_platform.serving.deployments import APP_NAME, build_application

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_application(ServeConfig(model=args.model, port=port, min_replicas=2, max_replicas=2)),
              name=APP_NAME, route_prefix="/")
    figures: dict = {}
    started = time.monotonic()
    results = probe.run_fuzz(url, probe.generate(seed=7))
    figures["fuzz"] = probe.summarize(results)
    figures["fuzz_seconds"] = round(time.monotonic() - started, 1)
    logger.info("fuzzing done in %.0f s", figures["fuzz_seconds"])
    samples = real_samples()
    figures["replica_kill"] = kill_a_replica(url, args.clients, samples)
    logger.info("replica kill: %s", figures["replica_kill"])
    figures["soak"] = soak(url, args.soak_minutes, args.clients, samples)
    serve.shutdown()

    print("\n## Fuzzing\n\n" + probe.format_table(figures["fuzz"]))
    kill = figures["replica_kill"]
    print(f"\n## Replica failure\n\n{kill['replicas']} model replicas, {kill['clients']} clients: one replica SIGKILLed; "
          f"{kill['failed']} of {kill['requests']} requests failed ({kill['requests_during_recovery']} were sent while it "
          f"was being replaced); replacement running after {kill['replaced_after_s']} s")
    run = figures["soak"]
    print(f"\n## Soak\n\n{run['minutes']} min, {run['clients']} clients: {run['requests']} requests ({run['rps']}/s), "
          f"{run['failed']} failed {run['failed_statuses'] or ''}\n\n| process | RSS first sample (MB) | last | growth |\n|---|---|---|---|")
    for name, samples in run["rss_mb"].items():
        if samples:
            print(f"| {name} | {samples[0]} | {samples[-1]} | {run['rss_growth_mb'][name]:+} |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=list))


if __name__ == "__main__":
    main()

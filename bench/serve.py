"""Serving benchmark: the real Serve application under load from a separate process on loopback.

In one run:

1. the model's forward pass alone (in-process, batch 1, the replica's thread count) for reference;
2. p50/p99 latency, requests/s and errors at 1, 8 and 32 concurrent clients, with dynamic batching
   on (``max_batch_size``) and off (``max_batch_size=1``), one model replica each, so the ratio
   isolates batching;
3. autoscaling: 32 clients against min 1 / max N replicas, the replica count sampled every second
   while the load runs and after it stops.

With a hand-aware model, ``POST /v1/landmarks`` (the hand /predict finds in the image, sent as landmarks:
what the demo's page sends) is loaded beside ``/predict`` in the same run (batching on), with its CPU per
request: issue 24's goal is >= 20x more requests per core than /predict, 0 errors.

Targets (issue 14): 0 errors; p50 at 1 client <= forward + hands + 5 ms; at 32 clients ONNX Runtime >= 3x
torch requests/s, batching on >= off; replicas go up under load and back down after. `--runtimes` compares
runtimes in one run; `--env` sets Serve options before Ray starts (e.g. RAY_SERVE_ENABLE_HA_PROXY=1).

To explain the batching ratio, the run also prints the forward cost per image at several batch sizes
and thread counts (batching can only pay where a batch is cheaper per image) and, for the heaviest
load, the CPU time per request of each Serve process (read from /proc; Linux only). Run from the
repository root::

    python bench/serve.py --model asl_runs/models/<run> [--duration 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import socket
import statistics
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("bench.serve")
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "asl-alphabet"


# --------------------------------------------------------------------------- load generator (own process)


async def _load(url: str, body: bytes, clients: int, duration: float, content_type: str = "image/jpeg") -> dict:
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + duration
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:

        async def client() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers={"content-type": content_type}) as response:
                        await response.read()
                        if response.status != 200:
                            errors[str(response.status)] = errors.get(str(response.status), 0) + 1
                            continue
                except Exception as exc:  # a benchmark counts failures, it does not stop on them
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - began
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed, "pid": os.getpid()}


def run_load(url: str, body: bytes, clients: int, duration: float, content_type: str = "image/jpeg") -> dict:
    """Entry point of the load process: drive ``clients`` concurrent connections for ``duration`` s."""
    return asyncio.run(_load(url, body, clients, duration, content_type))


def load_in_subprocess(pool, url: str, body: bytes, clients: int, duration: float, cpu: bool = False,
                       content_type: str = "image/jpeg") -> dict:
    before, started = (cpu_seconds_by_pid(), time.perf_counter()) if cpu else ({}, 0.0)
    result = pool.apply(run_load, (url, body, clients, duration, content_type))
    latencies = sorted(result["latencies"])
    ms = [1000 * x for x in latencies]
    row = {
        "route": "/" + url.split("://", 1)[1].split("/", 1)[1],
        "clients": clients,
        "requests": len(latencies),
        "errors": sum(result["errors"].values()),
        "error_kinds": result["errors"],
        "p50_ms": round(statistics.median(ms), 1) if ms else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if ms else None,
        "rps": round(len(latencies) / result["elapsed"], 1),
    }
    if cpu:
        row["cpu"] = cpu_per_request(before, cpu_seconds_by_pid(), result["pid"], len(latencies),
                                     time.perf_counter() - started)
    return row


# --------------------------------------------------------------------------- the pieces measured


def forward_time_ms(model_dir: str, image: bytes, threads: int, inference=None) -> dict:
    """Median time of the model alone on one image, and of decoding + resizing it."""
    import torch

    from asl_platform.data.decode import decode_image, resize_for_model
    from asl_platform.model import Predictor

    torch.set_num_threads(threads)
    predictor = Predictor(model_dir, inference=inference)
    prep = predictor.preprocessing
    array = resize_for_model(decode_image(image, draft_size=prep.image_size), prep)[None]
    for _ in range(5):
        predictor.predict_uint8(array)
    forward, decode = [], []
    for _ in range(30):
        started = time.perf_counter()
        predictor.predict_uint8(array)
        forward.append(time.perf_counter() - started)
        started = time.perf_counter()
        resize_for_model(decode_image(image, draft_size=prep.image_size), prep)
        decode.append(time.perf_counter() - started)
    return {"forward_ms": round(1000 * statistics.median(forward), 1),
            "decode_resize_ms": round(1000 * statistics.median(decode), 1)}


def forward_scaling(model_dir: str, thread_counts: list[int], batch_sizes: tuple[int, ...] = (1, 2, 4, 8),
                    inference=None) -> list[dict]:
    """Model forward (normalisation included) in ms per image, by batch size and thread count:
    dynamic batching only raises throughput where a batch is cheaper per image than one image."""
    import torch

    from asl_platform.model import Predictor

    rows = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        predictor = Predictor(model_dir, inference=inference.model_copy(update={"threads": threads}) if inference else None)
        size = predictor.preprocessing.image_size
        row: dict = {"threads": threads}
        for batch in batch_sizes:
            array = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
            for _ in range(3):
                predictor.predict_uint8(array)
            times = []
            for _ in range(max(5, 40 // batch)):
                started = time.perf_counter()
                predictor.predict_uint8(array)
                times.append(time.perf_counter() - started)
            row[batch] = round(1000 * statistics.median(times) / batch, 1)
        rows.append(row)
    return rows


# Serve's processes, by the name Ray gives them (their /proc cmdline).
ROLES = {"model replica": "ASLModel", "ingress": "ASLIngress", "HTTP proxy": "ProxyActor",
         "controller": "ServeController", "gcs/raylet": ("gcs_server", "raylet")}


def cpu_seconds_by_pid() -> dict[int, tuple[str, float]]:
    """user+system CPU seconds of every process, from /proc (empty where there is none)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    found: dict[int, tuple[str, float]] = {}
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while listed
            continue
        found[int(entry.name)] = (command, (int(fields[11]) + int(fields[12])) / ticks)
    return found


def cpu_per_request(before: dict, after: dict, load_pid: int, requests: int, seconds: float) -> dict:
    """CPU ms per answered request of each Serve role and of the load generator, and cores in use."""
    spent: dict[str, float] = {}
    for pid, (command, cpu) in after.items():
        if pid not in before:
            continue
        role = "load generator" if pid == load_pid else next(
            (name for name, marks in ROLES.items()
             if any(mark in command for mark in ((marks,) if isinstance(marks, str) else marks))), "other")
        spent[role] = spent.get(role, 0.0) + cpu - before[pid][1]
    per_request = {role: round(1000 * cpu / max(requests, 1), 1) for role, cpu in spent.items() if cpu > 0}
    return {"ms_per_request": per_request, "cores_busy": round(sum(spent.values()) / seconds, 2)}


def deploy(settings, inference=None) -> None:
    from ray import serve

    from asl_platform.serving.deployments import APP_NAME, build_application

    serve.run(build_application(settings, inference), name=APP_NAME, route_prefix="/")


def replica_count() -> int:
    from ray import serve

    from asl_platform.serving.deployments import APP_NAME

    states = serve.status().applications[APP_NAME].deployments["ASLModel"].replica_states
    return int(sum(count for state, count in states.items() if str(getattr(state, "value", state)) == "RUNNING"))


def observe_autoscaling(pool, url: str, body: bytes, clients: int, load_s: float, settle_s: float) -> dict:
    """Run load in the background and sample the replica count each second, during and after."""
    pending = pool.apply_async(run_load, (url, body, clients, load_s))
    trace, started = [], time.perf_counter()
    while time.perf_counter() - started < load_s + settle_s:
        trace.append((round(time.perf_counter() - started), replica_count()))
        if not pending.ready() or trace[-1][1] > 1 or len(trace) < 3:
            time.sleep(1)
            continue
        break  # load over and back to one replica
    result = pending.get()
    peak = max(count for _, count in trace)
    up = next((t for t, count in trace if count > 1), None)
    down = next((t for t, count in trace if t > load_s and count == 1), None)
    return {"trace": trace, "peak_replicas": peak, "scaled_up_at_s": up, "back_to_1_at_s": down,
            "load_s": load_s, "errors": sum(result["errors"].values()), "requests": len(result["latencies"])}


# --------------------------------------------------------------------------- main


def _sample_image(path: str | None) -> bytes:
    if path:
        return Path(path).read_bytes()
    if DEFAULT_DATA.is_dir():
        folder = sorted(p for p in (DEFAULT_DATA / "A").iterdir())
        return folder[0].read_bytes()
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (200, 200), (180, 120, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


def landmarks_body(url: str, image: bytes) -> bytes | None:
    """POST /v1/landmarks' body for the hand /predict finds in ``image``; None for an image-only model
    (or no hand found)."""
    import urllib.request

    request = urllib.request.Request(url, data=image, headers={"content-type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=60) as response:
        hand = json.loads(response.read()).get("hand")
    if not hand or not hand.get("found"):
        return None
    return json.dumps({"landmarks": hand["landmarks"], "handedness": hand["handedness"]}).encode()


def serve_cpu_ms(row: dict) -> float | None:
    """CPU ms per request of the Serve processes (not the load generator, not other processes)."""
    cpu = row.get("cpu")
    if not cpu:
        return None
    return round(sum(ms for role, ms in cpu["ms_per_request"].items() if role not in ("load generator", "other")), 2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model directory or models folder")
    parser.add_argument("--image", help="JPEG to send (default: one asl-alphabet image)")
    parser.add_argument("--duration", type=float, default=20, help="seconds of load per measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime"],
                        help="inference.runtime values to compare in this run (onnxruntime: int8 where the card allows)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait", type=float, default=0.0, help="batch_wait_timeout_s")
    parser.add_argument("--replica-cpus", type=float, default=1, help="num_cpus (and threads) per model replica")
    parser.add_argument("--max-replicas", type=int, default=2, help="for the autoscaling phase")
    parser.add_argument("--skip-autoscaling", action="store_true")
    parser.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="environment for Ray and Serve, set before Ray starts (e.g. RAY_SERVE_ENABLE_HA_PROXY=1)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for pair in args.env:
        key, _, value = pair.partition("=")
        os.environ[key] = value

    import ray
    from ray import serve

    from asl_platform.config import InferenceConfig, ServeConfig
    from asl_platform.model import resolve_model_dir

    model_dir = str(resolve_model_dir(args.model).resolve())
    body = _sample_image(args.image)
    figures: dict = {"model": model_dir, "cpus": os.cpu_count(), "image_bytes": len(body), "env": args.env,
                     "forward": {}, "forward_scaling": {}}
    threads = max(1, int(args.replica_cpus))  # Ray gives a replica OMP_NUM_THREADS = its num_cpus
    figures["threads"] = threads
    runtimes = {name: InferenceConfig(runtime=name, threads=threads) for name in args.runtimes}
    for name, inference in runtimes.items():
        figures["forward"][name] = forward_time_ms(model_dir, body, threads=threads, inference=inference)
        logger.info("%s, model alone: %s", name, figures["forward"][name])
        figures["forward_scaling"][name] = forward_scaling(model_dir, sorted({threads, os.cpu_count() or 1}),
                                                           inference=inference)
        logger.info("%s, forward ms per image by batch size: %s", name, figures["forward_scaling"][name])

    pool = multiprocessing.get_context("spawn").Pool(1)  # the load comes from another process
    port = _free_port()
    url = f"http://127.0.0.1:{port}/predict"
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows = []
    for name, inference in runtimes.items():
        for batching, batch_size in (("on", args.max_batch_size), ("off", 1)):
            deploy(ServeConfig(model=model_dir, port=port, max_batch_size=batch_size, batch_wait_timeout_s=args.batch_wait,
                               min_replicas=1, max_replicas=1, cpus_per_replica=args.replica_cpus), inference)
            load_in_subprocess(pool, url, body, 4, 3)  # warm up connections and the replica
            for clients in args.clients:
                heaviest = clients == max(args.clients)
                row = {"runtime": name, "batching": batching,
                       **load_in_subprocess(pool, url, body, clients, args.duration, cpu=heaviest)}
                logger.info("%s", row)
                rows.append(row)
            hand = landmarks_body(url, body) if batching == "on" else None
            if hand is not None:  # a hand-aware model: the same hand as landmarks (what the demo's page sends)
                landmarks_url = url.replace("/predict", "/v1/landmarks")
                load_in_subprocess(pool, landmarks_url, hand, 4, 3, content_type="application/json")
                for clients in args.clients:
                    row = {"runtime": name, "batching": batching,
                           **load_in_subprocess(pool, landmarks_url, hand, clients, args.duration,
                                                cpu=clients == max(args.clients), content_type="application/json")}
                    logger.info("%s", row)
                    rows.append(row)
    figures["load"] = rows
    if not args.skip_autoscaling:
        deploy(ServeConfig(model=model_dir, port=port, max_batch_size=args.max_batch_size,
                           batch_wait_timeout_s=args.batch_wait, cpus_per_replica=args.replica_cpus, min_replicas=1,
                           max_replicas=args.max_replicas, target_ongoing_requests=2, upscale_delay_s=2,
                           downscale_delay_s=5), runtimes[args.runtimes[-1]])
        figures["autoscaling"] = observe_autoscaling(pool, url, body, clients=32, load_s=40, settle_s=60)
        logger.info("autoscaling: %s", figures["autoscaling"])
    serve.shutdown()
    pool.close()
    print_report(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def print_report(figures: dict) -> None:
    print(f"\n{figures['cpus']} CPUs; environment: {' '.join(figures['env']) or 'default'}\n")
    for name, forward in figures["forward"].items():
        print(f"{name}: model forward alone (batch 1, {figures['threads']} thread(s)) {forward['forward_ms']} ms; "
              f"decode+resize {forward['decode_resize_ms']} ms")
    print("\n| route | runtime | batching | clients | requests | errors | p50 ms | p99 ms | req/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in figures["load"]:
        print(f"| {row.get('route', '/predict')} | {row['runtime']} | {row['batching']} | {row['clients']} | "
              f"{row['requests']} | {row['errors']} | {row['p50_ms']} | {row['p99_ms']} | {row['rps']} |")
    landmark_rows = {(r["runtime"], r["clients"]): r for r in figures["load"] if r.get("route") == "/v1/landmarks"}
    for r in figures["load"]:
        other = landmark_rows.get((r["runtime"], r["clients"]))
        if r.get("route", "/predict") == "/predict" and r["batching"] == "on" and other and r.get("cpu") and other.get("cpu"):
            predict_ms, landmarks_ms = serve_cpu_ms(r), serve_cpu_ms(other)
            print(f"\n{r['runtime']} at {r['clients']} clients: /v1/landmarks {other['rps']} req/s, {landmarks_ms} Serve CPU "
                  f"ms/request, {other['errors']} errors; /predict {r['rps']} req/s, {predict_ms} ms/request: "
                  f"{predict_ms / max(landmarks_ms, 1e-9):.1f}x more requests per core (target >= 20)")
    by_key = {(r["runtime"], r["batching"], r["clients"]): r for r in figures["load"] if r.get("route", "/predict") == "/predict"}
    most = max(r["clients"] for r in figures["load"])
    for name, forward in figures["forward"].items():
        one = by_key.get((name, "on", 1))
        if one:
            print(f"\n{name}: p50 at 1 client - forward = {one['p50_ms'] - forward['forward_ms']:.1f} ms (target <= 5 + hands)")
        if (name, "on", most) in by_key and (name, "off", most) in by_key:
            ratio = by_key[(name, "on", most)]["rps"] / by_key[(name, "off", most)]["rps"]
            print(f"{name}: throughput at {most} clients, batching on / off = {ratio:.2f}x (target >= 1)")
    names = list(figures["forward"])
    if len(names) > 1 and (names[0], "on", most) in by_key:
        for name in names[1:]:
            if (name, "on", most) in by_key:
                ratio = by_key[(name, "on", most)]["rps"] / by_key[(names[0], "on", most)]["rps"]
                print(f"{name} / {names[0]} at {most} clients (batching on): {ratio:.2f}x requests/s (target >= 3)")
    for name, per_image in figures["forward_scaling"].items():
        sizes = [key for key in per_image[0] if key != "threads"]
        print(f"\n{name}: model forward, ms per image, by batch size:\n")
        print("| threads | " + " | ".join(f"batch {b}" for b in sizes) + " |")
        print("|---|" + "---|" * len(sizes))
        for row in per_image:
            print(f"| {row['threads']} | " + " | ".join(str(row[b]) for b in sizes) + " |")
    measured = [r for r in figures["load"] if r.get("cpu")]

    if measured:
        roles = sorted({role for r in measured for role in r["cpu"]["ms_per_request"]})
        print(f"\nCPU ms per request at {measured[0]['clients']} clients, by process ({figures['cpus']} CPUs):\n")
        print("| route | runtime | batching | " + " | ".join(roles) + " | cores busy |")
        print("|---|---|---|" + "---|" * (len(roles) + 1))
        for r in measured:
            cells = [str(r["cpu"]["ms_per_request"].get(role, 0)) for role in roles]
            print(f"| {r.get('route', '/predict')} | {r['runtime']} | {r['batching']} | " + " | ".join(cells)
                  + f" | {r['cpu']['cores_busy']} |")
    scaling = figures.get("autoscaling")
    if scaling:
        print(f"autoscaling: peak {scaling['peak_replicas']} replicas, up at {scaling['scaled_up_at_s']} s, load ended at "
              f"{scaling['load_s']} s, back to 1 at {scaling['back_to_1_at_s']} s, {scaling['errors']} errors "
              f"in {scaling['requests']} requests")
        print("trace (s, replicas): " + " ".join(f"{t}:{n}" for t, n in scaling["trace"]))


if __name__ == "__main__":
    main()

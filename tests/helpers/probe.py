"""Probing a running server from outside, as its operators would: a load of concurrent clients with
every answer recorded (``Load``), requests that must be refused cleanly (``generate``/``run_fuzz``: every
case is definitely unusable or refused by a rule, so the only right answer is a 4xx with a JSON error; a
5xx, a dropped connection or a 200 is a failure), and the model replicas' processes (their PIDs and
memory; killing one to see Serve replace it). ``bench/reliability.py`` runs these against a deployment;
the serving tests use them too."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import signal
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
from PIL import Image

from asl_platform.serving.deployments import APP_NAME


def serve_in_thread(app) -> tuple[str, object]:
    """Run an ASGI ``app`` (uvicorn) on a free local port in a daemon thread of this process; returns its URL
    and the uvicorn server (``server.should_exit = True`` stops it)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


class Load:
    """``clients`` threads posting images in turn until stopped; records every answer. A sample's
    label, when given, must come back too (with the colour model every answer is checkable). With ``ask``,
    each turn is ``ask(session, n)`` instead (any request; it returns the row to record), ``pause_s`` apart."""

    def __init__(self, url: str, clients: int, samples: list[tuple[bytes, str | None]] = (),
                 ask: Callable[[requests.Session, int], tuple] | None = None, pause_s: float = 0.0):
        self.url, self.clients, self.stop = url, clients, threading.Event()
        self.samples, self.ask, self.pause_s = samples, ask or self._post_sample, pause_s
        self.results: list[tuple] = []  # by default (time, status, right answer)
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def _client(self, index: int) -> None:
        session, n = requests.Session(), index
        while not self.stop.is_set():
            self.results.append(self.ask(session, n))
            n += self.clients
            self.stop.wait(self.pause_s)

    def _post_sample(self, session: requests.Session, n: int) -> tuple[float, int | None, bool]:
        data, label = self.samples[n % len(self.samples)]
        try:
            response = session.post(f"{self.url}/predict", data=data, headers={"content-type": "image/jpeg"},
                                    timeout=60)
            right = response.status_code == 200 and (label is None or response.json()["label"] == label)
            return time.monotonic(), response.status_code, right
        except requests.RequestException:
            return time.monotonic(), None, False

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


# --------------------------------------------------------------------------- requests that must be refused


@dataclass
class BadRequest:
    kind: str
    body: bytes = b""
    content_type: str | None = "image/jpeg"
    path: str = "/predict"
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)


def _image(fmt: str, rng: random.Random, size: int = 64) -> bytes:
    buffer = io.BytesIO()
    colour = tuple(rng.randrange(256) for _ in range(3))
    Image.new("RGB", (size, size), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_size(width: int, height: int, payload: bytes = b"\0" * 64) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (nothing close to that many pixels follows)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(payload)) + _png_chunk(b"IEND", b"")


def png_bomb(side: int = 30_000) -> bytes:
    """A real decompression bomb: a valid 1-bit PNG of side x side pixels that compresses to ~100 KB."""
    row = b"\0" + b"\0" * ((side + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "fuzzBoundary") -> bytes:
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def generate(seed: int = 0, max_request_bytes: int = 5 * 1024 * 1024) -> list[BadRequest]:
    """About 1,100 bad requests of every kind the reliability issue lists."""
    rng = random.Random(seed)
    cases: list[BadRequest] = []
    image_types = ["image/jpeg", "image/png", "image/webp"]

    for _ in range(330):  # random bytes under image content types
        cases.append(BadRequest("random bytes", rng.randbytes(rng.randrange(1, 4096)), rng.choice(image_types)))
    for fmt, content_type in (("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")):
        for _ in range(70):  # truncated: at most 60% of a real file
            data = _image(fmt, rng)
            cases.append(BadRequest(f"truncated {fmt}", data[: rng.randrange(1, int(len(data) * 0.6))], content_type))
    for _ in range(100):  # a real image whose signature/header bytes are overwritten
        data = bytearray(_image(rng.choice(["JPEG", "PNG", "WEBP"]), rng))
        for index in range(min(12, len(data))):
            data[index] = rng.randrange(256)
        cases.append(BadRequest("corrupted header", bytes(data), rng.choice(image_types)))
    for _ in range(50):  # dimensions far over the pixel limit
        width, height = rng.randrange(7_000, 2**31 - 1), rng.randrange(7_000, 2**31 - 1)
        cases.append(BadRequest("huge dimensions", png_with_size(width, height), "image/png"))
    bomb = png_bomb()
    cases += [BadRequest("decompression bomb", bomb, "image/png") for _ in range(5)]
    bomb_b64 = base64.b64encode(bomb).decode()
    cases.append(BadRequest("decompression bomb (base64)", json.dumps({"image": bomb_b64}).encode(), "application/json"))
    cases.append(BadRequest("decompression bomb (multipart)", _multipart([("file", "b.png", bomb)]),
                            "multipart/form-data; boundary=fuzzBoundary"))
    wrong_types = ["text/plain", "application/xml", "image/gif", "image/svg+xml", "application/octet-stream",
                   "video/mp4", "a/b", "image", "multipart/mixed", "text/html; charset=utf-8", ";;;", "image/jpeg2"]
    for content_type in wrong_types:
        for _ in range(5):
            cases.append(BadRequest("wrong content type", _image("PNG", rng), content_type))
    for _ in range(5):
        cases.append(BadRequest("no content type", _image("PNG", rng), None))
    good = _image("PNG", rng)
    multipart_cases = [
        ("no boundary", _multipart([("file", "a.png", good)]), "multipart/form-data"),
        ("wrong boundary", _multipart([("file", "a.png", good)]), "multipart/form-data; boundary=other"),
        ("truncated", _multipart([("file", "a.png", good)])[:80], "multipart/form-data; boundary=fuzzBoundary"),
        ("no file field", _multipart([("note", None, b"hello")]), "multipart/form-data; boundary=fuzzBoundary"),
        ("empty file", _multipart([("file", "a.png", b"")]), "multipart/form-data; boundary=fuzzBoundary"),
        ("garbage file", _multipart([("file", "a.png", b"garbage")]), "multipart/form-data; boundary=fuzzBoundary"),
        ("two files", _multipart([("file", "a.png", good), ("file", "b.png", good)]),
         "multipart/form-data; boundary=fuzzBoundary"),
        ("many fields", _multipart([(f"f{i}", None, b"x") for i in range(2000)]), "multipart/form-data; boundary=fuzzBoundary"),
        ("random body", b"--fuzzBoundary\r\n" + rng.randbytes(500), "multipart/form-data; boundary=fuzzBoundary"),
        ("empty body", b"", "multipart/form-data; boundary=fuzzBoundary"),
    ]
    for name, body, content_type in multipart_cases:
        for path in ("/predict", "/predict/batch"):
            if name == "two files" and path == "/predict/batch":
                continue  # two files is a valid batch
            cases += [BadRequest(f"malformed multipart: {name}", body, content_type, path) for _ in range(4)]
    json_bodies = [
        b"{", b"[]", b"null", b'"image"', b"{}", b'{"image": null}', b'{"image": 12}', b'{"image": ""}',
        b'{"image": "@@@not-base64@@@"}', b'{"image": "' + base64.b64encode(b"not an image") + b'"}',
        b'{"image": "data:image/png;base64"}', b'{"image": ["a"]}', b"[" * 100_000 + b"]" * 100_000,
        b'{"image": "' + base64.b64encode(good)[:-7] + b'"}', "{\"image\": \"\u00e9\u00e9\"}".encode(),
        b"\xff\xfe{", b'{"images": "x"}',
    ]
    for body in json_bodies:
        cases += [BadRequest("malformed JSON/base64", body, "application/json") for _ in range(4)]
    for body in (b"{}", b'{"images": []}', b'{"images": "abc"}', b'{"images": [1, 2]}', b"[" * 50_000):
        cases += [BadRequest("malformed JSON/base64 (batch)", body, "application/json", "/predict/batch") for _ in range(4)]
    for content_type in image_types + ["application/json", "multipart/form-data; boundary=x"]:
        cases += [BadRequest("empty body", b"", content_type) for _ in range(3)]
    for _ in range(10):
        cases.append(BadRequest("over the size limit", rng.randbytes(1024) * (max_request_bytes // 1024 + 1), "image/png"))
    for size in (8_000, 16_000, 32_000, 60_000):
        for _ in range(3):
            cases.append(BadRequest("very long header", b"garbage", "image/png", headers={"X-Long": "a" * size}))
    for value in ("abc", "-1", "0", "99999", "1.5", ""):
        cases += [BadRequest("bad query parameter", _image("PNG", rng), "image/png", f"/predict?top_k={value}") for _ in range(3)]
    for method, path in (("GET", "/predict"), ("PUT", "/predict"), ("DELETE", "/v1/model"), ("POST", "/v1/model"),
                         ("GET", "/nope"), ("POST", "/predict/../etc/passwd"), ("GET", "/%2e%2e/%2e%2e/etc/passwd")):
        cases += [BadRequest("wrong method or route", b"", None, path, method) for _ in range(3)]
    return cases


def send(session, base_url: str, case: BadRequest) -> dict:
    """One request; what came back, and whether it is the right kind of answer (4xx + JSON error)."""
    import requests

    headers = dict(case.headers)
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    try:
        response = session.request(case.method, base_url + case.path, data=case.body, headers=headers, timeout=60)
    except requests.RequestException as exc:
        return {"kind": case.kind, "status": None, "ok": False, "detail": type(exc).__name__}
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    ok = 400 <= response.status_code < 500 and code is not None
    return {"kind": case.kind, "status": response.status_code, "ok": ok, "detail": code or response.text[:80]}


def run_fuzz(base_url: str, cases: list[BadRequest], workers: int = 4) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor

    import requests

    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=workers))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda case: send(session, base_url, case), cases))


def summarize(results: list[dict]) -> list[dict]:
    """Per kind: how many were sent, answered 4xx with a JSON error, answered 5xx, otherwise."""
    rows: dict[str, dict] = {}
    for result in results:
        row = rows.setdefault(result["kind"], {"kind": result["kind"], "sent": 0, "4xx_json": 0, "5xx": 0, "other": 0,
                                               "statuses": set()})
        row["sent"] += 1
        row["statuses"].add(result["status"])
        if result["ok"]:
            row["4xx_json"] += 1
        elif result["status"] is not None and result["status"] >= 500:
            row["5xx"] += 1
        else:
            row["other"] += 1
    return [{**row, "statuses": sorted(s for s in row["statuses"] if s is not None)} for row in rows.values()]


def format_table(rows: list[dict]) -> str:
    lines = ["| input kind | sent | 4xx + JSON error | 5xx | other | statuses |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['kind']} | {row['sent']} | {row['4xx_json']} | {row['5xx']} | {row['other']} | "
                     f"{', '.join(map(str, row['statuses']))} |")
    total = {key: sum(row[key] for row in rows) for key in ("sent", "4xx_json", "5xx", "other")}
    lines.append(f"| **total** | {total['sent']} | {total['4xx_json']} | {total['5xx']} | {total['other']} | |")
    return "\n".join(lines)

"""Security properties (see SECURITY.md): servers bind to 127.0.0.1 unless configured; model files are
never unpickled; no path from a request reaches the filesystem; request bodies are size-limited.

Fast tests drive the real app in-process (FastAPI TestClient + LocalBackend, the Gradio demo mounted
exactly as in production); one e2e test checks the listening sockets of a real Ray Serve server.
The /predict body limits themselves are tested in test_app.py
(test_too_large_body_is_413_declared_or_streamed) and over HTTP in test_deployments_e2e.py (test_errors_over_http).
"""

from __future__ import annotations

import ast
import http.server
import json
import os
import pickle
import re
import shutil
import socket
import threading
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from helpers.datasets import REPO_ROOT
from helpers.models import colour_image
from helpers.serving import colour_settings, run_demo_event

import asl_platform
from asl_platform.config import ServeConfig, load_config, read_yaml
from asl_platform.model import Predictor, WeightsUnavailableError, build_backbone, load_model_dir, read_state_dict
from asl_platform.serving.app import create_app
from asl_platform.serving.backends import LocalBackend
from asl_platform.serving.deployments import serve_config_document
from asl_platform.serving.protocol import ApiError, read_body

SHARED_SERVE = "colour"  # its real-server test runs on the colour application

LIMIT = 64 * 1024
PACKAGE = Path(asl_platform.__file__).parent


# --------------------------------------------------------------------------- sockets (no psutil needed)


def _listening() -> list[tuple[str, int, int]]:
    """(address, port, socket inode) of every listening TCP socket in this network namespace."""
    rows = []
    for family, table in ((socket.AF_INET, "/proc/net/tcp"), (socket.AF_INET6, "/proc/net/tcp6")):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)  # little-endian 32-bit words
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            rows.append((socket.inet_ntop(family, raw), int(port, 16), int(fields[9])))
    return rows


def _process_tree(root: int) -> set[int]:
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                pass
    return seen


def _socket_owners(pids: set[int]) -> dict[int, int]:
    """socket inode -> pid, for the sockets these processes hold."""
    owners = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    link = os.readlink(fd)
                except OSError:
                    continue
                if link.startswith("socket:["):
                    owners[int(link[8:-1])] = pid
        except OSError:
            pass
    return owners


def _own_listening_sockets() -> set[tuple[str, int]]:
    owners = _socket_owners({os.getpid()})
    return {(address, port) for address, port, inode in _listening() if inode in owners}


def _non_loopback_ipv4() -> str | None:
    """This machine's outgoing IPv4 address (a UDP connect sends nothing), or None without one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("192.0.2.123", 9))
            address = sock.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc/net/tcp")


# --------------------------------------------------------------------------- binding


def test_every_default_binds_to_loopback_only():
    assert ServeConfig().host == "127.0.0.1"
    assert load_config().serve.host == "127.0.0.1"
    assert serve_config_document(ServeConfig())["http_options"]["host"] == "127.0.0.1"
    shipped = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    assert shipped["http_options"]["host"] == "127.0.0.1"
    for path in sorted((PACKAGE / "configs").glob("*.yaml")):  # built-in configs (smoke, ...) keep the default
        assert (read_yaml(path).get("serve") or {}).get("host", "127.0.0.1") == "127.0.0.1", path
    cluster = REPO_ROOT / "cluster.yaml"
    if cluster.is_file():  # the Ray dashboard (job submission = code execution) stays on the head's loopback
        assert set(re.findall(r"--dashboard-host[= ](\S+)", cluster.read_text())) <= {"127.0.0.1"}


# --------------------------------------------------------------------------- the in-process app


@pytest.fixture(scope="module")
def app(colour_model):
    settings = ServeConfig(max_request_bytes=LIMIT, max_batch_images=4, demo=True)
    return create_app(LocalBackend(colour_model), settings)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as client:  # runs the lifespan: Gradio's queue starts, as under Serve
        yield client


@pytest.fixture
def upload_folder():
    """Gradio's upload cache. Afterwards the files this test's requests put there are removed: only
    those (other tests may be using the cache), recognised by the unique names the tests use."""
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder())
    before = set(folder.rglob("*")) if folder.is_dir() else set()
    yield folder
    for path in set(folder.rglob("*")) - before:
        if path.is_file() and (path.name.startswith("sectest-") or path.name == "passwd"):
            path.unlink(missing_ok=True)
            try:
                path.parent.rmdir()  # only if now empty
            except OSError:
                pass


@needs_proc
def test_the_gradio_demo_opens_no_server_of_its_own(colour_model):
    before = _own_listening_sockets()
    app = create_app(LocalBackend(colour_model), ServeConfig(demo=True))
    with TestClient(app) as client:
        assert client.get("/demo/").status_code == 200
        assert client.get("/demo/config").status_code == 200
        assert _own_listening_sockets() <= before  # mounted in the API's app: no port 7860, no node SSR server


def test_the_http_api_has_no_route_taking_a_path(app):
    from starlette.routing import Mount

    paths = [route.path for route in app.routes if not isinstance(route, Mount)]
    assert "/predict" in paths and "/v1/model" in paths
    assert [p for p in paths if "{" in p] == []
    assert [route.path for route in app.routes if isinstance(route, Mount)] == ["/demo"]


# --------------------------------------------------------------------------- model files are never unpickled


class _Payload:
    """Unpickling this calls open(marker, "w"): it creates the marker file. Proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_payload(path: Path, marker: Path, how: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "torch":  # torch.save's zip format, what a "weights.pt" normally is
        torch.save({"state_dict": {"weight": _Payload(marker)}}, path)
    else:  # a bare pickle
        path.write_bytes(pickle.dumps({"weight": _Payload(marker)}, protocol=2))
    return path


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_the_payload_really_runs_code_when_unpickled(tmp_path, how):
    """The control: the same payload does create its marker under an unsafe load, so the tests below,
    where the marker must not appear, are not vacuous."""
    marker = tmp_path / "control-marker"
    path = _write_payload(tmp_path / "control.pt", marker, how)
    if how == "torch":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_a_pickled_model_dir_is_refused_and_not_run(tmp_path, colour_model, how):
    marker = tmp_path / "pwned"
    model_dir = tmp_path / "evil" / "v1"
    model_dir.mkdir(parents=True)
    shutil.copy(colour_model / "model.json", model_dir / "model.json")  # a valid description...
    _write_payload(model_dir / "model.safetensors", marker, how)  # ...and a pickle named like the weights
    (model_dir.parent / "latest").write_text("v1\n")

    for load in (load_model_dir, Predictor, LocalBackend):
        for target in (model_dir, model_dir.parent):  # a version folder, and a models folder via `latest`
            with pytest.raises(WeightsUnavailableError, match="not a valid safetensors file"):
                load(target)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["weights.pt", "weights.pth", "weights.bin", "weights.safetensors"])
@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_a_pickled_weights_file_is_refused_and_not_run(tmp_path, name, how):
    """``model.weights: <path>`` (and anything else through read_state_dict) accepts .pt/.pth files,
    but only through torch.load(weights_only=True)."""
    marker = tmp_path / "pwned"
    path = _write_payload(tmp_path / name, marker, how)
    with pytest.raises(WeightsUnavailableError):
        read_state_dict(path)
    with pytest.raises(WeightsUnavailableError):
        build_backbone("tiny", str(path))
    assert not marker.exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_no_code_path_can_unpickle():
    """A static guard for code added later: every torch.load in the package says weights_only=True, and
    nothing calls pickle/joblib/cloudpickle loaders, unsafe YAML loaders or np.load(allow_pickle=True)."""
    problems, torch_loads = [], 0
    for path in sorted(PACKAGE.rglob("*.py")):
        for call, name in _calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(PACKAGE)}:{call.lineno} {name}"
            keywords = {k.arg: k.value for k in call.keywords}
            if name == "torch.load":
                torch_loads += 1
                value = keywords.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(where + " without weights_only=True")
            elif name.split(".")[-1] in ("loads", "load", "Unpickler") and name.split(".")[0] in (
                    "pickle", "cPickle", "dill", "cloudpickle", "joblib", "_pickle"):
                problems.append(where)
            elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                problems.append(where + " (use yaml.safe_load)")
            elif name in ("np.load", "numpy.load"):
                value = keywords.get("allow_pickle")
                if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                    problems.append(where + " with allow_pickle")
    assert torch_loads >= 1  # the scan sees the package's torch.load calls
    assert problems == []


# --------------------------------------------------------------------------- no request path reaches the filesystem


def _traversal_names(target_dir: Path) -> list[str]:
    relative = "../" * 40 + str(target_dir / "sectest-evil-relative.png").lstrip("/")
    return [relative, str(target_dir / "sectest-evil-absolute.png"), "..\\..\\..\\sectest-evil-windows.png",
            "./../sectest-evil-dot.png"]


def test_multipart_filenames_are_never_written_anywhere(client, tmp_path):
    png = colour_image("A", seed=7)
    for name in _traversal_names(tmp_path):
        response = client.post("/predict", files={"file": (name, png, "image/png")})
        assert response.status_code == 200, response.text
        assert response.json()["label"] == "A"
    files = [("files", (name, png, "image/png")) for name in _traversal_names(tmp_path)]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 200, response.text
    assert [r["label"] for r in response.json()["results"]] == ["A"] * len(files)
    assert list(tmp_path.iterdir()) == []  # no file appeared at any target
    assert not (Path.cwd().parent / "sectest-evil-dot.png").exists() and not Path("/sectest-evil-windows.png").exists()


def test_gradio_uploads_stay_in_its_cache_whatever_the_filename(client, tmp_path, upload_folder):
    png = colour_image("A", seed=8)
    for name in _traversal_names(tmp_path):
        response = client.post("/demo/gradio_api/upload", files={"files": (name, png, "image/png")})
        assert response.status_code == 200, response.text
        (stored,) = response.json()
        assert Path(stored).resolve().is_relative_to(upload_folder.resolve()), stored
        assert Path(stored).name.endswith(".png") and "/" not in Path(stored).name
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("body", [
    {"image": "/etc/passwd"}, {"image": "file:///etc/passwd"}, {"image": "../../etc/passwd"},
    {"path": "/etc/passwd"}, {"image": {"path": "/etc/passwd"}},
])
def test_json_naming_a_file_instead_of_sending_it_is_400(client, body):
    """A path is never opened: both routes refuse it as a bad body (not base64, not a string)."""
    for url, payload in (("/predict", body), ("/predict/batch", {"images": [body.get("image", body)]})):
        response = client.post(url, json=payload)
        assert response.status_code == 400 and "root:" not in response.text, response.text
        assert response.json()["error"]["code"] in ("invalid_base64", "invalid_request")


@pytest.mark.parametrize("url", [
    "/demo/gradio_api/file=/etc/passwd",
    "/demo/gradio_api/file=%2Fetc%2Fpasswd",
    "/demo/gradio_api/file=..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/demo/gradio_api/file=%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/demo/gradio_api/file=/tmp/gradio/../../etc/passwd",
    "/demo/gradio_api/file=file:///etc/passwd",
    "/demo/gradio_api/file/etc/passwd",
    "/demo/gradio_api/file//etc/passwd",
    "/demo/gradio_api/file/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/demo/file=/etc/passwd",
    "/demo/static/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/demo/assets/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/demo/svelte/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/demo/gradio_api/file=/proc/self/environ",
    "/demo/gradio_api/file=pyproject.toml",  # the working directory is not served either
    "/demo/gradio_api/file=serve_config.yaml",
    "/demo/gradio_api/proxy=http://127.0.0.1:1/etc/passwd",  # no proxying (SSRF) to anywhere
    "/demo/gradio_api/proxy=http://169.254.169.254/latest/meta-data/",
])
def test_gradio_file_routes_serve_no_local_file(client, url):
    response = client.get(url)
    assert response.status_code in (400, 403, 404), (response.status_code, response.text[:200])
    assert "root:" not in response.text and "[project]" not in response.text and "PATH=" not in response.text


def test_gradio_file_route_does_not_serve_the_model(client, colour_model):
    for name in ("model.safetensors", "model.json"):
        response = client.get(f"/demo/gradio_api/file={colour_model / name}")
        assert response.status_code == 403, response.text


@pytest.mark.parametrize("method,url,body", [
    ("post", "/demo/gradio_api/vibe-edit", {"prompt": "add a file browser"}),  # Gradio's AI code editor
    ("post", "/demo/gradio_api/vibe-code", {"code": "import os; os.system('id')"}),
    ("get", "/demo/gradio_api/vibe-code", None),
    ("post", "/demo/gradio_api/run-history/connect", {"path": "/tmp/x"}),
    ("get", "/demo/monitoring", None),
])
def test_gradio_code_editing_and_admin_endpoints_are_off(client, method, url, body):
    response = getattr(client, method)(url, **({"json": body} if body is not None else {}))
    assert response.status_code in (401, 403, 404), (response.status_code, response.text[:200])


def test_gradio_refuses_server_paths_sent_as_the_image(client, tmp_path, upload_folder):
    """The browser uploads a file (POST /upload) and then names it in the event; a client that names any
    other server path instead must be refused, not have the file copied into the cache, where
    /gradio_api/file= would hand it out."""
    secret = tmp_path / f"sectest-secret-{uuid.uuid4().hex}.png"  # an image: if it were read, it would classify
    secret.write_bytes(colour_image("A", seed=9))
    (uploaded,) = client.post("/demo/gradio_api/upload", files={"files": (f"sectest-hand-{uuid.uuid4().hex}.png", colour_image("A", seed=9))}).json()

    control = run_demo_event(client, "sec-control", [{"path": uploaded, "meta": {"_type": "gradio.FileData"}}], inputs="photo")
    assert control["success"], control  # a real upload works: the refusals below are not vacuous
    assert control["output"]["data"][0]["label"] == "A"

    leaked_before = set(upload_folder.rglob("passwd"))
    for index, path in enumerate([str(secret), "/etc/passwd", f"{tmp_path}/../{tmp_path.name}/{secret.name}"]):
        message = run_demo_event(client, f"sec-{index}", [{"path": path, "meta": {"_type": "gradio.FileData"}}], inputs="photo")
        assert not message["success"], f"{path} was read: {json.dumps(message)[:300]}"
        assert "root:" not in json.dumps(message)
    assert list(upload_folder.rglob(secret.name)) == [], "a server file was copied into Gradio's cache"
    assert set(upload_folder.rglob("passwd")) == leaked_before, "/etc/passwd was copied into Gradio's cache"


def test_gradio_does_not_fetch_private_urls_sent_as_the_image(client):
    """A URL instead of a path: Gradio fetches only public hosts (safehttpx), never this machine or its network."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(colour_image("A"))

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hand.png"
        message = run_demo_event(client, "sec-ssrf", [{"path": url, "url": url, "meta": {"_type": "gradio.FileData"}}],
                                 inputs="photo")
    finally:
        server.shutdown()
        server.server_close()
    assert not message["success"]
    assert hits == []


# --------------------------------------------------------------------------- size limits


def test_a_declared_oversize_body_is_refused_before_any_of_it_is_read():
    """What makes the 413s of test_app.py cheap: the declared Content-Length is checked first."""
    import asyncio

    from starlette.requests import Request

    received = []

    async def receive():
        received.append(1)
        return {"type": "http.request", "body": b"\0" * 65536, "more_body": True}

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"content-length", b"1000000000")]}
    with pytest.raises(ApiError) as caught:
        asyncio.run(read_body(Request(scope, receive), limit=LIMIT))
    assert caught.value.status == 413 and received == []


def test_gradio_uploads_over_the_limit_are_413_and_not_kept(client, upload_folder):
    name = f"sectest-big-{uuid.uuid4().hex}.png"
    response = client.post("/demo/gradio_api/upload", files={"files": (name, b"\0" * (LIMIT + 1), "image/png")})
    assert response.status_code == 413, response.text
    assert list(upload_folder.rglob(name)) == []


@pytest.mark.parametrize("url", ["/demo/gradio_api/queue/join", "/demo/gradio_api/run/predict",
                                 "/demo/gradio_api/upload"])
def test_every_route_refuses_bodies_over_the_limit(client, url):
    """Not only /predict: the demo's JSON routes would otherwise buffer any body in memory."""
    head, tail = b'{"data": ["', b'"], "fn_index": 0, "session_hash": "sec-big"}'
    body = head + b"A" * (16 * LIMIT) + tail
    response = client.post(url, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413, (response.status_code, response.text[:200])
    assert response.json()["error"]["code"] == "payload_too_large"

    def chunked():  # no Content-Length: reading stops at the limit
        yield head
        yield from (b"A" * LIMIT for _ in range(16))
        yield tail

    response = client.post(url, content=chunked(), headers={"content-type": "application/json"})
    assert response.status_code == 413, (response.status_code, response.text[:200])
    assert response.json()["error"]["code"] == "payload_too_large"


# --------------------------------------------------------------------------- a real server


@pytest.mark.e2e
@needs_proc
def test_real_serve_listens_on_loopback_only_and_gradio_adds_no_port(shared_serve, colour_model):
    import requests

    settings = colour_settings(colour_model)  # the shared colour application: the default host, the demo on
    assert settings.host == "127.0.0.1" and settings.demo
    port = int(shared_serve.app(settings).rsplit(":", 1)[1])

    assert requests.get(f"http://127.0.0.1:{port}/demo/", timeout=30).status_code == 200

    on_port = {address for address, p, _ in _listening() if p == port}
    assert on_port == {"127.0.0.1"}, on_port  # not 0.0.0.0, not ::
    external = _non_loopback_ipv4()
    if external:
        with pytest.raises(OSError):
            socket.create_connection((external, port), timeout=3).close()

    # Gradio lives in the ingress replica: it listens on no more sockets than the model replica
    # (both only Ray's own worker ports), and nothing of ours listens on Gradio's 7860-7959.
    owners = _socket_owners(_process_tree(os.getpid()))
    ours = [(address, p, owners[inode]) for address, p, inode in _listening() if inode in owners]

    def listening_of(actor: str) -> int:
        pids = {pid for pid in {o for _, _, o in ours}
                if actor in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")}
        assert pids, f"no {actor} process found"
        return sum(1 for _, _, pid in ours if pid in pids)

    assert listening_of("ServeReplica:asl:ASLIngress") <= listening_of("ServeReplica:asl:ASLModel")
    assert [p for _, p, _ in ours if 7860 <= p < 7960] == []

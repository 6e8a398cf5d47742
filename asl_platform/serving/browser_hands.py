"""MediaPipe's hand landmarker for the demo's pages, served by the platform itself (no CDN; offline once
fetched), and the routes that serve it and the demo's live script (``static/live.js``).

Which build: ``@mediapipe/hands`` from npm, the JavaScript build of the legacy *Hands* solution that the
Python side runs (``mp.solutions.hands``, ``hands.detect``): the same palm detector and the same
``hand_landmark_full.tflite`` at ``model_complexity=1``, so the page finds the landmarks the model was
trained on (``bench/browser_landmarks.py`` measures how close). ``@mediapipe/tasks-vision`` is the newer
API, but it ships no model (the ``.task`` file is a separate download) and its landmarker is another graph.

Why fetched, not vendored: the package is 13 MB compressed, 24 MB unpacked (two WebAssembly builds, two
models). ``ensure_assets`` downloads the pinned tarball from the npm registry once, checks its sha512
integrity (npm's own, from ``package-lock`` semantics) and unpacks the files the page needs into a cache folder
that is not the installed package (``asset_dir``: ``$ASL_PLATFORM_CACHE``, else ``$XDG_CACHE_HOME/asl-platform``,
else ``~/.cache/asl-platform``; Apache-2.0, its ``package.json`` kept beside them). ``asl-platform serve`` fetches
them before it deploys and says what it did; the ingress replica, which may be on another node, makes sure of them
too, in a thread (never on its event loop). Every later start is offline. Without the files (no network at first
start) the routes answer 404 and the page says so and uses the server's frame path.

Fixed routes, not a static mount: no route of this API takes a path (tests/serving/test_security.py).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

logger = logging.getLogger(__name__)

PACKAGE = "@mediapipe/hands"
VERSION = "0.4.1675469240"
TARBALL = f"https://registry.npmjs.org/{PACKAGE}/-/hands-{VERSION}.tgz"
INTEGRITY = "sha512-GxoZvL1mmhJxFxjuyj7vnC++JIuInGznHBin5c7ZSq/RbcnGyfEcJrkM/bMu5K1Mz/2Ko+vEX6/+wewmEHPrHg=="
STATIC = Path(__file__).parent / "static"  # the platform's own live.js (in the package)
# What hands.js loads at model_complexity=1 (the SIMD build, and the plain one for browsers without SIMD).
FILES = {
    "hands.js": "text/javascript",
    "hands.binarypb": "application/octet-stream",
    "hand_landmark_full.tflite": "application/octet-stream",
    "hands_solution_packed_assets.data": "application/octet-stream",
    "hands_solution_packed_assets_loader.js": "text/javascript",
    "hands_solution_simd_wasm_bin.js": "text/javascript",
    "hands_solution_simd_wasm_bin.wasm": "application/wasm",
    "hands_solution_wasm_bin.js": "text/javascript",
    "hands_solution_wasm_bin.wasm": "application/wasm",
    "package.json": "application/json",  # its licence (Apache-2.0) and version
}
ROUTE = "/hands"  # /hands/<file>: one fixed route per file
_failed = False  # one failed fetch per process: an offline server does not retry at every app it builds


def asset_dir() -> Path:
    """Where this machine keeps the page's MediaPipe files: a cache folder of the user's, never the package's."""
    base = os.environ.get("ASL_PLATFORM_CACHE") or (
        Path(os.environ["XDG_CACHE_HOME"]) / "asl-platform" if os.environ.get("XDG_CACHE_HOME")
        else Path.home() / ".cache" / "asl-platform")
    return Path(base) / f"mediapipe-hands-{VERSION}"


def assets_present(directory: Path | None = None) -> bool:
    directory = directory or asset_dir()
    return all((directory / name).is_file() for name in FILES)


def check_integrity(data: bytes, integrity: str = INTEGRITY) -> None:
    """npm's ``dist.integrity`` (``sha512-<base64>``) of the tarball; ValueError when it does not match."""
    algorithm, expected = integrity.split("-", 1)
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if actual != expected:
        raise ValueError(f"{TARBALL}: {algorithm} is {actual}, expected {expected}")


def unpack(data: bytes, directory: Path) -> None:
    """The needed files of the tarball (``package/<name>``) into ``directory``, all or none (unpacked beside it,
    then renamed into place: two processes fetching at once leave one whole copy)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent) as staging, tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for name in FILES:
            try:
                member = tar.extractfile(f"package/{name}")
            except KeyError:
                member = None
            if member is None:
                raise ValueError(f"{TARBALL} has no {name}")
            (Path(staging) / name).write_bytes(member.read())
        if assets_present(directory):  # another process (a replica beside this one) finished first: as good
            return
        if directory.exists():  # a partial copy, or one of other files
            shutil.rmtree(directory)
        try:
            Path(staging).rename(directory)
        except OSError:
            if not assets_present(directory):  # not merely another process's whole copy, just renamed in
                raise
            return
        Path(staging).mkdir()  # for TemporaryDirectory's own clean-up


def ensure_assets(directory: Path | None = None, timeout_s: float = 60) -> bool:
    """The files present in ``directory`` (default ``asset_dir()``; fetched and checked if not yet); False (logged)
    when they cannot be. Blocking: call it from a thread where an event loop runs."""
    global _failed
    directory = directory or asset_dir()
    if assets_present(directory):
        logger.debug("MediaPipe Hands for the browser: %s", directory)
        return True
    if _failed:
        return False
    try:
        logger.info("fetching MediaPipe Hands for the browser (once per machine): %s", TARBALL)
        with urllib.request.urlopen(TARBALL, timeout=timeout_s) as response:  # noqa: S310 (a fixed https URL)
            data = response.read()
        check_integrity(data, INTEGRITY)
        unpack(data, directory)
        logger.info("MediaPipe Hands for the browser: %.1f MB fetched, checked (sha512) and unpacked into %s",
                    len(data) / 1e6, directory)
        return True
    except (OSError, ValueError, tarfile.TarError) as exc:
        _failed = True
        logger.warning("no in-browser hand landmarks (the page says so and sends frames to the server): %s", exc)
        return False


def add_browser_routes(app: FastAPI, directory: Path | None = None) -> None:
    """``/hands/<file>`` for each of ``FILES``, and ``/hands/live.js`` (the demo's own script)."""
    directory = directory or asset_dir()
    for name, media_type in {**FILES, "live.js": "text/javascript"}.items():
        path = STATIC / name if name == "live.js" else directory / name
        app.add_api_route(f"{ROUTE}/{name}", _file_route(path, media_type), include_in_schema=False)


def _file_route(path: Path, media_type: str):
    """An endpoint that answers one fixed file, or 404 while it is missing (not fetched)."""
    from asl_platform.serving.protocol import ApiError

    async def send_file() -> FileResponse:
        if not path.is_file():
            raise ApiError(404, "not_found", f"{path.name} is not on this server (see docs/serving.md)")
        return FileResponse(path, media_type=media_type)

    return send_file

"""The browser's copy of MediaPipe Hands (``serving.browser_hands``): fetched once into the user's cache folder (never
the installed package), checked against npm's sha512 before anything is unpacked, only the page's files, all or none;
offline, the fixed routes answer 404 until the files exist (the page's message: test_demo_offline.py); the Serve
ingress makes sure of them in a thread, off its event loop."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import tarfile

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from asl_platform.serving import browser_hands
from asl_platform.serving.protocol import install_error_handlers


def _tarball(names) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in [*names, "README.md"]:
            data = f"contents of {name}".encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def test_the_integrity_check_refuses_other_bytes():
    data = _tarball(browser_hands.FILES)
    browser_hands.check_integrity(data, _integrity(data))
    with pytest.raises(ValueError, match="sha512"):
        browser_hands.check_integrity(data + b"x", _integrity(data))
    assert browser_hands.INTEGRITY.startswith("sha512-") and browser_hands.VERSION in browser_hands.TARBALL


def test_unpack_writes_the_needed_files_all_or_none(tmp_path):
    target = tmp_path / "mediapipe-hands"
    browser_hands.unpack(_tarball(browser_hands.FILES), target)
    assert sorted(p.name for p in target.iterdir()) == sorted(browser_hands.FILES)
    assert browser_hands.assets_present(target)
    with pytest.raises(ValueError, match="has no"):
        browser_hands.unpack(_tarball(list(browser_hands.FILES)[1:]), tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_offline_no_files_and_the_routes_say_404(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(browser_hands.urllib.request, "urlopen", offline)
    monkeypatch.setattr(browser_hands, "_failed", False)
    target = tmp_path / "missing"
    assert browser_hands.ensure_assets(target) is False
    app = FastAPI()
    install_error_handlers(app)
    browser_hands.add_browser_routes(app, target)
    client = TestClient(app)
    response = client.get("/hands/hands.js")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    live = client.get("/hands/live.js")  # the platform's own script is in the package
    assert live.status_code == 200 and "aslLive" in live.text and live.headers["content-type"].startswith("text/javascript")
    browser_hands.unpack(_tarball(browser_hands.FILES), target)
    assert client.get("/hands/hands_solution_simd_wasm_bin.wasm").headers["content-type"] == "application/wasm"
    assert [r.path for r in app.routes if "{" in r.path] == []  # fixed routes: none takes a path


def test_the_files_are_fetched_once_into_the_cache_folder_not_the_package(tmp_path, monkeypatch, caplog):
    data = _tarball(browser_hands.FILES)
    fetched = []

    def registry(url, timeout):
        fetched.append(url)
        return io.BytesIO(data)

    monkeypatch.setenv("ASL_PLATFORM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(browser_hands.urllib.request, "urlopen", registry)
    monkeypatch.setattr(browser_hands, "INTEGRITY", _integrity(data))
    monkeypatch.setattr(browser_hands, "_failed", False)
    package = sorted(browser_hands.STATIC.rglob("*"))
    with caplog.at_level(logging.INFO, logger="asl_platform"):
        assert browser_hands.ensure_assets() is True and browser_hands.ensure_assets() is True
    assert fetched == [browser_hands.TARBALL]  # once
    directory = tmp_path / "cache" / f"mediapipe-hands-{browser_hands.VERSION}"
    assert browser_hands.asset_dir() == directory and browser_hands.assets_present(directory)
    assert sorted(browser_hands.STATIC.rglob("*")) == package  # nothing written into the package
    assert f"unpacked into {directory}" in caplog.text and "fetching MediaPipe Hands" in caplog.text


def test_the_serve_ingress_makes_sure_of_the_files_in_a_thread_not_on_its_event_loop(monkeypatch):
    import asyncio
    import threading
    from types import SimpleNamespace

    from asl_platform.config import ServeConfig
    from asl_platform.serving import deployments

    calls = []
    monkeypatch.setattr(browser_hands, "ensure_assets", lambda: calls.append(threading.current_thread()) or False)
    monkeypatch.setattr(deployments, "create_app", lambda backend, settings, browser_assets: browser_assets)

    class Model:  # the model deployment's handle: describe.remote() is awaited
        class describe:
            @staticmethod
            async def remote():
                return {"kind": "hand_aware", "classes": ["A"]}

    ingress = SimpleNamespace(model=Model(), settings=ServeConfig())  # the replica's state, as __init__ sets it
    build_app = deployments.ASLIngress.func_or_class.__serve_build_asgi_app__
    loop_thread = []

    async def build():
        loop_thread.append(threading.current_thread())
        return await build_app(ingress)

    assert asyncio.run(build()) is False  # what it found is what the demo is told
    assert len(calls) == 1 and calls[0] is not loop_thread[0]

"""The serving tests' one Serve instance (``SharedServe``), and the module order that lets its
applications be shared: modules declare ``SHARED_SERVE`` ("hand", "colour"; "own" for an application
of their own on the shared Serve; "fresh" for a Serve of their own) and run grouped by it, unit-test
modules first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.browser import CHROMIUM
from helpers.serving import SharedServe

GROUPS = {None: 0, "hand": 1, "colour": 2, "own": 3, "fresh": 4}
HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list) -> None:
    """Stable: modules stay whole and in name order within a group; items outside this folder keep their places."""
    positions = [i for i, item in enumerate(items) if Path(str(item.fspath)).parent == HERE]
    ordered = sorted((items[i] for i in positions), key=lambda item: GROUPS[getattr(item.module, "SHARED_SERVE", None)])
    for position, item in zip(positions, ordered):
        items[position] = item


@pytest.fixture(scope="package")
def shared_serve(ray_local):
    """Stopped when the serving tests are done: its replicas hold CPUs the later tests need."""
    serve = SharedServe()
    yield serve
    serve.stop()


@pytest.fixture(scope="module")
def playwright_or_skip():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"Chromium not found at {CHROMIUM}; .ci/run installs Debian's chromium package")
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (a dev extra)")
    with sync_api.sync_playwright() as playwright:
        yield playwright

"""Shared fixtures (helpers are in the ``helpers`` package): the real image sets beside the repo, one
local Ray per test session, fixture models built once; and the markers that let the unit tests run alone (``-m "not ray and not browser"``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers.datasets import ASL_ALPHABET, alphabet_photos, require_dataset
from helpers.models import HAND_LETTERS, HAND_SCAN, build_colour_model, build_hand_model, fixture_model


def pytest_collection_modifyitems(items: list) -> None:
    """Markers from what a test uses: ``ray`` for the session's Ray (``ray_local``, directly or through
    another fixture) or a Ray of its own (``own_ray``: a command in a subprocess, a cluster), ``browser``
    for Chromium."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "ray_local" in fixtures or item.get_closest_marker("own_ray"):
            item.add_marker(pytest.mark.ray)
        if "playwright_or_skip" in fixtures:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(autouse=True)
def _ray_only_where_marked(request):
    """A test not marked ``ray`` must not start one: the unit tests' command runs without Ray."""
    ray = sys.modules.get("ray")
    running_before = ray is not None and ray.is_initialized()
    yield
    ray = sys.modules.get("ray")
    if not running_before and ray is not None and ray.is_initialized() and not request.node.get_closest_marker("ray"):
        pytest.fail("this test started Ray: use the ray_local fixture (or mark it own_ray)")


@pytest.fixture(scope="session")
def asl_alphabet() -> Path:
    return require_dataset(ASL_ALPHABET)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by every test that needs one, with the platform's own defaults."""
    import ray

    from asl_platform.runtime import set_ray_defaults

    if not ray.is_initialized():
        set_ray_defaults()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


# --------------------------------------------------------------------------- a local S3


@pytest.fixture(scope="session")
def s3_server() -> dict[str, str]:
    """A real S3 API on a free local port (moto's server), for s3:// paths end to end. Yields the
    environment a process (or a Ray node) needs to reach it, as a user would set for AWS."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    server.stop()


# --------------------------------------------------------------------------- fixture models, built once


# --------------------------------------------------------------------------- a small trained model


@pytest.fixture(scope="session")
def colour_model(request, tmp_path_factory) -> Path:
    """A real saved model (tiny backbone, head trained in-process) that tells the four colours apart:
    tests can check that a red image comes back as "A" through every path, not just that a letter comes back."""
    return fixture_model(request, tmp_path_factory, "colours", build_colour_model)


# --------------------------------------------------------------------------- a hand-aware model


@pytest.fixture(scope="session")
def hand_model(request, tmp_path_factory, colour_model, asl_alphabet) -> Path:
    """A real hand-aware model folder: the colour model's image model, and a landmark model trained
    in-process on the MediaPipe landmarks of real asl-alphabet photos of A, B and C (answer rule
    ``landmarks|image``: a photo with a hand is read by its landmarks, one without by its colour)."""
    photos = [p for label in HAND_LETTERS for p in alphabet_photos(asl_alphabet, label, HAND_SCAN)]
    return fixture_model(request, tmp_path_factory, "hands",
                         lambda directory: build_hand_model(directory, colour_model, asl_alphabet), inputs=photos)



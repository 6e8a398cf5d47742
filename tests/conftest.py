"""Shared fixtures: the real image sets beside the repo, and one local Ray per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
ASL_ALPHABET = SHARED_DATA / "asl-alphabet"
ASL_WEBCAM = SHARED_DATA / "asl-webcam"


def require_dataset(path: Path) -> Path:
    """Skip (with the reason) when a real dataset is not beside the repo; CI has it."""
    if not path.is_dir():
        pytest.skip(f"real dataset not found at {path} (see ../shared/data/README.md); skipping")
    return path


@pytest.fixture(scope="session")
def asl_alphabet() -> Path:
    return require_dataset(ASL_ALPHABET)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()

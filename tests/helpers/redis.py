"""A Redis of a test's own (Debian's ``redis-server``: its own port, a password, no persistence), for a cluster
whose GCS keeps its state there (GCS fault tolerance: the head can be lost and restarted)."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Redis:
    address: str  # host:port
    password: str


def redis_server_or_skip() -> str:
    """``redis-server``'s path; a skip with the reason where it is absent (`.ci/run` installs it)."""
    import os

    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server not found; .ci/run installs Debian's redis-server package")
        pytest.skip("redis-server not found (apt-get install redis-server)")
    return path


@contextlib.contextmanager
def running_redis(directory: Path, port: int) -> Iterator[Redis]:
    """``redis-server`` on 127.0.0.1:``port`` with a random password, stopped afterwards whatever happens."""
    password = secrets.token_hex(16)
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([redis_server_or_skip(), "--port", str(port), "--bind", "127.0.0.1",
                                "--requirepass", password, "--save", "", "--appendonly", "no",
                                "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start on port {port} ({process.poll()})")
            time.sleep(0.1)
        yield Redis(f"127.0.0.1:{port}", password)
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if process.poll() is None:
            process.kill()

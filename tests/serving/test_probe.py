"""helpers.probe's pieces that need no Serve: a local server in a thread, and the bad requests."""

from __future__ import annotations

import struct

import requests
from fastapi import FastAPI

from helpers import probe


def test_serve_in_thread_answers_on_its_own_port_and_stops():
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict:
        return {"pong": True}

    url, server = probe.serve_in_thread(app)
    try:
        assert requests.get(f"{url}/ping", timeout=10).json() == {"pong": True}
    finally:
        server.should_exit = True


def test_the_bad_requests_cover_every_kind_and_a_png_can_claim_any_size():
    cases = probe.generate(seed=3)
    assert len(cases) > 100 and len({case.kind for case in cases}) > 10
    assert [c.kind for c in cases] == [c.kind for c in probe.generate(seed=3)]  # seeded: the same cases again
    header = probe.png_with_size(40_000, 30_000)
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", header[16:24]) == (40_000, 30_000)

"""The HTTP contract, checked from outside: schemathesis fuzzes the live Serve app from its own
/openapi.json with every check it has (schema-valid requests must be accepted, invalid ones refused,
every status, content type and body documented, 405s with Allow ...), and Swagger UI at /docs
uploads a photo in Chromium and shows the answer.

The model is the hand-aware fixture when the real photos are there (hand blocks and practice
drawings in the answers), the colour model otherwise.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from helpers.browser import ARTIFACTS, block_external, launch_chromium
from helpers.datasets import REPO_ROOT
from helpers.models import colour_image
from helpers.serving import hand_settings

pytestmark = pytest.mark.e2e
SHARED_SERVE = "hand"
SEED = 20261201
EXAMPLES_PER_OPERATION = 120  # per operation: ~1,000 cases in all, 80 s on 2 cores (300 took 190 s)


@pytest.fixture(scope="module")
def contract_model(request) -> Path:
    try:
        return request.getfixturevalue("hand_model")
    except pytest.skip.Exception:
        return request.getfixturevalue("colour_model")


@pytest.fixture(scope="module")
def server(shared_serve, contract_model) -> str:
    return shared_serve.app(hand_settings(contract_model))  # shared with the other hand-aware modules


@pytest.mark.timeout(900)
def test_schemathesis_finds_no_failure_with_all_checks(server):
    schema = requests.get(f"{server}/openapi.json", timeout=30).json()
    assert schema["paths"]["/predict"]["post"]["requestBody"]["content"].keys() >= {
        "image/jpeg", "image/png", "image/webp", "multipart/form-data", "application/json"}
    command = [str(Path(sys.executable).parent / "st"), "run", f"{server}/openapi.json", "--checks", "all",
               "--seed", str(SEED), "--max-examples", str(EXAMPLES_PER_OPERATION), "--workers", "1",
               "--no-color", "--suppress-health-check", "too_slow"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "serving.schemathesis_hooks",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=840)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "schemathesis.txt").write_text(result.stdout + result.stderr)
    summary = result.stdout[result.stdout.rfind("SUMMARY"):]
    assert result.returncode == 0, result.stdout[-12000:] + result.stderr[-3000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert generated and generated[1] == generated[2], summary
    tested = re.search(r"Tested: (\d+)", summary)
    assert tested and int(tested[1]) == len([op for path in schema["paths"].values() for op in path]), summary
    assert int(generated[1]) >= 2 * EXAMPLES_PER_OPERATION, summary  # the fuzzer really ran, on many cases


@pytest.mark.timeout(300)
@pytest.mark.parametrize("content_type", ["image/jpeg", "multipart/form-data"])
def test_docs_try_it_out_uploads_a_photo_and_shows_the_answer(server, playwright_or_skip, tmp_path, content_type):
    photo = tmp_path / "b.jpg"
    photo.write_bytes(colour_image("B", fmt="JPEG", seed=3))
    browser = launch_chromium(playwright_or_skip)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        external = block_external(page)
        page.goto(f"{server}/docs", wait_until="load")
        operation = page.locator("#operations-default-predict_predict_post")
        operation.locator(".opblock-summary").click()
        operation.get_by_role("button", name="Try it out").click()
        operation.locator("select.content-type").first.select_option(content_type)
        operation.locator("input[type=file]").set_input_files(str(photo))
        operation.get_by_role("button", name="Execute").click()
        answer = operation.locator(".live-responses-table .response-col_description pre").first
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            answer.wait_for(timeout=60_000)
        finally:
            page.screenshot(path=str(ARTIFACTS / f"docs_try_it_out_{content_type.replace('/', '_')}.png"), full_page=True)
        assert operation.locator(".live-responses-table tbody .response-col_status").first.inner_text().strip() == "200"
        body = json.loads(answer.inner_text())
        assert body["label"] == "B" and body["top_k"][0]["label"] == "B", body  # the colour photo, read by the model
        assert external == []  # Swagger UI's own files come from this server, not a CDN
    finally:
        browser.close()

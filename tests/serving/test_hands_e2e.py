"""A hand-aware model on real Ray Serve: the hand block over HTTP (through @serve.batch and the
model replica) and the skeleton overlay in the Gradio demo, seen by a real headless Chromium."""

from __future__ import annotations

import pytest
import requests
from helpers.browser import ARTIFACTS, launch_chromium, upload_photo_in_the_demo
from helpers.datasets import detected_photos
from helpers.serving import hand_settings

pytestmark = [pytest.mark.e2e, pytest.mark.real_data]
SHARED_SERVE = "hand"


@pytest.fixture(scope="module")
def server(shared_serve, hand_model) -> str:
    return shared_serve.app(hand_settings(hand_model))


@pytest.fixture(scope="module")
def photo(asl_alphabet):
    return detected_photos(asl_alphabet, ["B"], per_class=1)["B"][0]


def test_the_hand_block_over_http(server, photo):
    path, hand = photo
    body = requests.post(f"{server}/predict", data=path.read_bytes(), headers={"content-type": "image/jpeg"},
                         timeout=60).json()
    assert body["label"] == "B" and body["hand"]["found"] is True
    assert body["hand"]["box"] == pytest.approx(list(hand.box), abs=0.2)
    batch = requests.post(f"{server}/predict/batch", files=[("file", ("b.jpg", path.read_bytes(), "image/jpeg"))],
                          timeout=60).json()
    assert batch["results"][0]["hand"]["found"] is True


def test_the_demo_shows_the_skeleton_over_the_photo(server, photo, playwright_or_skip):
    path, _ = photo
    browser = launch_chromium(playwright_or_skip)
    try:
        page, external = upload_photo_in_the_demo(browser, server, path)
        overlay = page.locator("#hand-overlay img")
        overlay.wait_for(state="visible", timeout=60_000)
        size = overlay.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert size == [200, 200]  # the photo itself, with the skeleton drawn on it
        shown = page.locator("#letters").inner_text().split()
        assert shown[shown.index("letters") + 1] == "B"
        ARTIFACTS.mkdir(exist_ok=True)
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "demo_hand_overlay.png"), full_page=True)
        assert external == [], f"the demo tried to reach the internet: {external}"
    finally:
        browser.close()

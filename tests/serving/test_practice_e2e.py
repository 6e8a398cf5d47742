"""Practice mode in a real headless Chromium against real Ray Serve: a fake webcam (a Y4M made from
real asl-alphabet photos) signs A, then B; the learner spells "AB" and the round must go on by itself:
target shown, sign recognised, score up, next target."""

from __future__ import annotations

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import detected_photos
from serving.helpers import hand_settings
from serving.test_deployments_e2e import (  # noqa: F401 (playwright_or_skip is a fixture)
    ARTIFACTS, chromium_with_fake_webcam, open_demo_tab, playwright_or_skip, start_webcam,
)

pytestmark = [pytest.mark.e2e, pytest.mark.real_data]
SHARED_SERVE = "hand"


@pytest.fixture(scope="module")
def server(shared_serve, hand_model) -> str:
    return shared_serve.app(hand_settings(hand_model))


def photo_video(path, photos: list, seconds_each: float = 3.0, fps: int = 10, size: int = 200):
    """A Y4M (Chromium's fake-webcam format) showing each photo for ``seconds_each``, in turn."""
    with open(path, "wb") as handle:
        handle.write(f"YUV4MPEG2 W{size} H{size} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for photo in photos:
            ycbcr = np.asarray(Image.open(photo).convert("RGB").resize((size, size)).convert("YCbCr"))
            frame = ycbcr[..., 0].tobytes() + ycbcr[::2, ::2, 1].tobytes() + ycbcr[::2, ::2, 2].tobytes()
            for _ in range(int(seconds_each * fps)):
                handle.write(b"FRAME\n" + frame)
    return path


def test_a_practice_round_in_the_browser(server, asl_alphabet, playwright_or_skip, tmp_path):
    found = detected_photos(asl_alphabet, ["A", "B"], per_class=3, scan=60, skip=12)  # not trained on
    chosen = {}
    for label, pairs in found.items():  # photos the model reads right, as a learner who signs well
        for path, _ in pairs:
            answer = requests.post(f"{server}/predict", data=path.read_bytes(), headers={"content-type": "image/jpeg"},
                                   timeout=60).json()
            if answer["label"] == label:
                chosen[label] = path
                break
    assert set(chosen) == {"A", "B"}, chosen
    video = photo_video(tmp_path / "practice.y4m", [chosen["A"], chosen["B"]])
    browser = chromium_with_fake_webcam(playwright_or_skip, video)
    try:
        page, external = open_demo_tab(browser, server, "Practice", height=1000)
        page.locator("#practice-mode").get_by_text("Spell a word").click()
        page.locator("#practice-word textarea").fill("AB")
        page.locator("#practice-start").click()
        target = page.locator("#practice-target")
        target.get_by_text("Sign A").wait_for(timeout=30_000)
        assert "Fist" in target.inner_text()  # how to form it
        page.locator("#practice-reference img").wait_for(state="visible", timeout=30_000)  # the typical hand
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "practice_target.png"), full_page=True)

        start_webcam(page, "practice-camera")
        score = page.locator("#practice-score")
        page.wait_for_function("document.querySelector('#practice-score').innerText.includes('Score 1')", timeout=90_000)
        assert "Sign B" in target.inner_text()  # the next target came
        page.wait_for_function("document.querySelector('#practice-score').innerText.includes('words spelled 1')",
                               timeout=90_000)  # then B was recognised too: the word is done
        assert "Score 3" in score.inner_text() or "Score 4" in score.inner_text() or "Score 5" in score.inner_text()
        assert "Recognised" in page.locator("#practice-feedback").inner_text() or "Well done" in page.locator(
            "#practice-feedback").inner_text()
        table = page.locator("#practice-table").inner_text()
        assert "A" in table and "B" in table
        page.locator("#practice-overlay img").wait_for(state="visible", timeout=30_000)  # the learner's own skeleton
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "practice_round.png"), full_page=True)
        assert external == [], f"the demo tried to reach the internet: {external}"
    finally:
        browser.close()

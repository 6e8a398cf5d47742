"""Practice mode and calibration in a real headless Chromium against real Ray Serve: a fake webcam (a
Y4M made from real asl-alphabet photos) signs A, then B; the learner spells "AB" and the round must go
on by itself: target shown, sign recognised, score up, next target, with the hand landmarks found in the
page (MediaPipe Hands served by the platform) and no frame uploaded. And a learner calibrates A and B at a
webcam the test drives (the last letter's hand still there as a letter appears, B first signed wrong; hands
found in the page, no frame uploaded), downloads the profile, loads it again, and a practice round answers
from it, in the live answer over the video too."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import requests
from helpers.browser import ARTIFACTS, block_external, chromium_with_fake_webcam, launch_chromium, open_demo_tab
from helpers.datasets import detected_photos
from helpers.serving import hand_settings
from PIL import Image

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
    # 5 s a photo: time to hold each (the page finds a hand in ~40 ms, tens of frames a second; a loaded
    # machine still sees each held long enough)
    video = photo_video(tmp_path / "practice.y4m", [chosen["A"], chosen["B"]], seconds_each=5.0)
    browser = chromium_with_fake_webcam(playwright_or_skip, video)
    try:
        page, external = open_demo_tab(browser, server, "Practice", height=1000)
        page.locator("#practice-mode").get_by_text("Spell a word").click()
        page.locator("#practice-word textarea").fill("AB")
        page.locator("#practice-start").click()
        target = page.locator("#practice-target")
        target.get_by_text("Sign A").wait_for(timeout=30_000)
        assert "Fist" in target.inner_text()  # how to form it
        assert "No attempts yet" in page.locator("#practice-chart").inner_text()  # an empty chart says so
        page.locator("#practice-reference img").wait_for(state="visible", timeout=30_000)  # the typical hand
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "practice_target.png"), full_page=True)

        posts = []
        page.on("request", lambda request: posts.append(request) if request.method == "POST" else None)
        start_live(page, "practice")
        score = page.locator("#practice-score")
        # Generous limits, not a pace: on a loaded 2-core machine a Gradio answer can lag by seconds; on a quiet
        # one these take seconds.
        page.wait_for_function("document.querySelector('#practice-score').innerText.includes('Score 1')", timeout=240_000)
        assert "Sign B" in target.inner_text()  # the next target came
        page.wait_for_function("document.querySelector('#practice-score').innerText.includes('words spelled 1')",
                               timeout=240_000)  # then B was recognised too: the word is done
        assert "Score 3" in score.inner_text() or "Score 4" in score.inner_text() or "Score 5" in score.inner_text()
        assert "Recognised" in page.locator("#practice-feedback").inner_text() or "Well done" in page.locator(
            "#practice-feedback").inner_text()
        table = page.locator("#practice-table").inner_text()
        assert "A" in table and "B" in table
        assert "No attempts yet" not in page.locator("#practice-chart").inner_text()  # the chart has the round now
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "practice_round.png"), full_page=True)
        assert_no_frame_uploaded(posts)
        stats = page.evaluate("window.aslLive.stats('practice')")  # answered from the page's hands, timed there:
        assert stats["answers"] >= 2 and stats["p50_ms"] > 0, stats  # by POST /v1/landmarks, shown over the video
        assert stats["updates"] >= 2 and stats["updates_p50_ms"] > 0, stats  # and by the practice round
        assert re.fullmatch(r"([A-Z]|del|space|nothing) \d+%( - not sure)?|No hand in view",
                            page.locator("#practice-live-answer").inner_text().strip())
        assert external == [], f"the demo tried to reach the internet: {external}"

        # Where the page cannot find hands (here: asked not to), it says so and the server's webcam path is back.
        fallback = browser.new_context(permissions=["camera"]).new_page()
        fallback.goto(f"{server}/demo/?live=server", wait_until="load")
        fallback.get_by_role("tab", name="Practice").click()
        fallback.wait_for_function("document.querySelector('#practice-live-fallback')?.innerText"
                                   ".includes('sends its frames to the server')", timeout=30_000)
        assert "?live=server" in fallback.locator("#practice-live-fallback").inner_text()
        assert fallback.locator("#practice-camera").is_visible() and not fallback.locator("#practice-live-start").is_visible()
    finally:
        browser.close()


def start_live(page, name: str) -> None:
    """Start the tab's live view: its hand landmarks are found in the page (not the server's fallback)."""
    page.wait_for_function("window.aslLive && document.body.classList.contains('asl-live-browser')", timeout=30_000)
    page.locator(f"#{name}-live-start").click()
    page.locator(f"#{name}-live-status").get_by_text("no video leaves your device").wait_for(timeout=120_000)
    assert page.evaluate("window.aslLive.fallback") is None


def assert_no_frame_uploaded(posts: list) -> None:
    """Every POST of the page is a Gradio event (a button, or a hand's landmarks) or a hand's landmarks to
    POST /v1/landmarks: none holds an image."""
    assert posts, "the page sent nothing"
    for request in posts:
        route = request.url.split("?")[0]
        assert route.endswith(("/gradio_api/queue/join", "/v1/landmarks")), request.url
        body = request.post_data or ""
        assert "data:image" not in body and '"path"' not in body and len(body) < 20_000, body[:300]
    for route in ("/gradio_api/queue/join", "/v1/landmarks"):
        assert any(r.url.split("?")[0].endswith(route) and "landmarks" in (r.post_data or "") for r in posts), route


def well_read_photos(server: str, asl_alphabet, letter: str, count: int = 1, confident: bool = False) -> list:
    """Photos of ``letter`` (not trained on) that the model reads right (and confidently), as a learner who signs well."""
    chosen = []
    for path, _ in detected_photos(asl_alphabet, [letter], per_class=6, scan=80, skip=12)[letter]:
        answer = requests.post(f"{server}/predict", data=path.read_bytes(), headers={"content-type": "image/jpeg"},
                               timeout=60).json()
        if answer["label"] == letter and (answer["confident"] or not confident):
            chosen.append(path)
        if len(chosen) == count:
            return chosen
    pytest.fail(f"not {count} photo(s) of {letter} that the model reads right{' and confidently' if confident else ''}")


# A webcam the test drives: getUserMedia answers a canvas's stream, and ``window.showPhoto(url)`` puts a photo (or
# nothing: null) in front of it, so that what the camera shows changes exactly when the test says.
FAKE_CAMERA_JS = """
(() => {
  const canvas = document.createElement('canvas');
  canvas.width = 200; canvas.height = 200;
  const context = canvas.getContext('2d');
  let photo = null;
  setInterval(() => {
    if (photo) context.drawImage(photo, 0, 0, 200, 200); else { context.fillStyle = '#777'; context.fillRect(0, 0, 200, 200); }
  }, 25);
  window.showPhoto = (url) => new Promise((resolve) => {
    if (!url) { photo = null; resolve(); return; }
    const image = new Image();
    image.onload = () => { photo = image; resolve(); };
    image.src = url;
  });
  navigator.mediaDevices.getUserMedia = async () => canvas.captureStream(20);
})();
"""


def data_url(path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def test_calibrate_at_the_webcam_then_practise_with_the_profile(server, asl_alphabet, playwright_or_skip, tmp_path):
    """The learner's real conditions: right after each letter appears the camera still shows the last letter's
    hand; B is first signed wrong (a C). Those frames are not stored, the wrong one is flagged and B redone,
    the before/after comes from a separate check hold, and practice then answers from the profile."""
    a, a_check = well_read_photos(server, asl_alphabet, "A", 2)
    b, b_check = well_read_photos(server, asl_alphabet, "B", 2)
    (c,) = well_read_photos(server, asl_alphabet, "C", 1, confident=True)
    browser = launch_chromium(playwright_or_skip)
    try:
        context = browser.new_context(permissions=["camera"], viewport={"width": 1280, "height": 1100})
        context.add_init_script(FAKE_CAMERA_JS)
        page = context.new_page()
        external = block_external(page)
        page.goto(f"{server}/demo/", wait_until="load")
        page.get_by_role("tab", name="Calibrate").click()
        posts = []
        page.on("request", lambda request: posts.append(request) if request.method == "POST" else None)
        start_live(page, "calibrate")  # the shots are hands found in the page: no frame is uploaded
        target, progress = page.locator("#calibrate-target"), page.locator("#calibrate-progress")

        def sign(letter: str, photo, check) -> None:
            """Hold ``photo`` still for the shots, lower the hand, then sign ``check`` for the check hold."""
            page.evaluate("url => window.showPhoto(url)", data_url(photo))
            page.wait_for_function("document.querySelector('#calibrate-progress').innerText.includes('lower your hand')",
                                   timeout=120_000)
            page.evaluate("window.showPhoto(null)")
            page.wait_for_function("document.querySelector('#calibrate-progress').innerText.includes('check: sign')",
                                   timeout=60_000)
            page.evaluate("url => window.showPhoto(url)", data_url(check))

        page.evaluate("url => window.showPhoto(url)", data_url(c))  # the hand of before, there as the letter appears
        page.locator("#calibrate-start").click()
        target.get_by_text("Sign A").wait_for(timeout=30_000)
        page.wait_for_timeout(700)  # within the countdown: nothing may be taken of it
        sign("A", a, a_check)
        target.get_by_text("Sign B").wait_for(timeout=120_000)  # A's check hold came: the next letter
        page.evaluate("url => window.showPhoto(url)", data_url(c))  # B signed wrong: a confident C
        target.get_by_text("This looks like C").wait_for(timeout=120_000)
        assert "Keep it" in target.inner_text() and "0/3 frames" in progress.inner_text()  # not stored
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "calibration_looks_like.png"), full_page=True)
        page.locator("#calibrate-redo").click()  # and B again, signed right this time
        page.wait_for_timeout(300)
        sign("B", b, b_check)
        target.get_by_text("Sign C").wait_for(timeout=120_000)
        assert "Done: A 3 ✓, B 3 ✓" in progress.inner_text()
        page.locator("#calibrate-finish").click()
        report = page.locator("#calibrate-report")
        report.get_by_text("Calibrated").wait_for(timeout=60_000)
        assert "2 letter(s) (A, B)" in report.inner_text(), report.inner_text()
        assert "On your check of each letter (2 frames)" in report.inner_text()  # the separate holds measured it
        assert_no_frame_uploaded(posts)
        page.screenshot(path=str(ARTIFACTS / "calibration.png"), full_page=True)

        with page.expect_download(timeout=30_000) as download:  # made in the page: no file on the server
            page.locator("#profile-download").click()
        saved = tmp_path / "profile.json"
        download.value.save_as(saved)
        profile = json.loads(saved.read_text())
        assert {letter: len(rows) for letter, rows in profile["shots"].items()} == {"A": 3, "B": 3}
        for letter, rows in profile["shots"].items():  # every shot is a hand of its letter: no C, no transition
            for row in rows:
                points = np.asarray(row[:63]).reshape(21, 3).tolist()
                answer = requests.post(f"{server}/v1/landmarks", json={
                    "landmarks": points, "handedness": "Right" if row[63] else "Left"}, timeout=30).json()
                assert answer["label"] == letter, (letter, answer["top_k"])
        assert profile["model"]["sha256"] == requests.get(f"{server}/v1/model", timeout=30).json()["sha256"]

        page.locator("#profile-forget").click()
        report.get_by_text("Calibration removed").wait_for(timeout=30_000)
        with page.expect_file_chooser(timeout=30_000) as chooser:  # and back, from the file
            page.locator("#profile-upload").click()
        chooser.value.set_files(str(saved))
        report.get_by_text("Profile loaded from your file").wait_for(timeout=30_000)

        page.evaluate("url => window.showPhoto(url)", data_url(a))
        page.get_by_role("tab", name="Practice").click()
        page.locator("#practice-mode").get_by_text("Spell a word").click()
        page.locator("#practice-word textarea").fill("A")
        page.locator("#practice-start").click()
        page.locator("#practice-target").get_by_text("Sign A").wait_for(timeout=30_000)
        start_live(page, "practice")
        page.wait_for_function("document.querySelector('#practice-score').innerText.includes('words spelled 1')",
                               timeout=90_000)
        assert "your calibration" in page.locator("#practice-feedback").inner_text()  # the profile answered,
        page.locator("#practice-live-answer").get_by_text("your calibration").wait_for(timeout=30_000)  # here too
        assert external == [], f"the demo tried to reach the internet: {external}"

        # No camera for the page (not allowed, none there): it says so and what to do, and can be tried again.
        denied = browser.new_context().new_page()
        denied.goto(f"{server}/demo/", wait_until="load")
        denied.get_by_role("tab", name="Calibrate").click()
        denied.wait_for_function("window.aslLive && document.body.classList.contains('asl-live-browser')",
                                 timeout=30_000)
        denied.locator("#calibrate-live-start").click()
        denied.wait_for_function("document.querySelector('#calibrate-live-status').innerText"
                                 ".includes('press Start camera again')", timeout=60_000)
        status = denied.locator("#calibrate-live-status").inner_text()
        assert "blocked" in status or "No camera" in status or "busy" in status, status
        denied.screenshot(path=str(ARTIFACTS / "camera_denied.png"), full_page=True)
    finally:
        browser.close()

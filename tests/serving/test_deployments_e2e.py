"""Real Ray Serve on a free port: every input format and error over HTTP, many parallel clients,
serve_config.yaml, and the Gradio demo driven in a real headless Chromium (Playwright)."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml
from helpers.browser import (
    ARTIFACTS,
    chromium_with_fake_webcam,
    launch_chromium,
    open_demo_tab,
    start_webcam,
    upload_photo_in_the_demo,
)
from helpers.datasets import REPO_ROOT
from helpers.models import colour_image
from helpers.serving import colour_settings, png_header_only

from asl_platform.config import ConfigError, ServeConfig
from asl_platform.serving.deployments import build_app, checked_user_config, serve_config_document

pytestmark = pytest.mark.e2e
SHARED_SERVE = "colour"


@pytest.fixture(scope="module")
def server(shared_serve, colour_model) -> str:
    return shared_serve.app(colour_settings(colour_model))


def test_every_input_format_over_http(server):
    for fmt, content_type in (("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")):
        response = requests.post(f"{server}/predict", data=colour_image("A", fmt=fmt), headers={"content-type": content_type})
        assert response.status_code == 200 and response.json()["label"] == "A", response.text
    image = colour_image("C", fmt="JPEG")
    assert requests.post(f"{server}/predict", files={"file": ("c.jpg", image, "image/jpeg")}).json()["label"] == "C"
    assert requests.post(f"{server}/predict", json={"image": base64.b64encode(image).decode()}).json()["label"] == "C"
    files = [("files", (f"{label}.png", colour_image(label), "image/png")) for label in ("B", "space")]
    assert [r["label"] for r in requests.post(f"{server}/predict/batch", files=files).json()["results"]] == ["B", "space"]
    info = requests.get(f"{server}/v1/model").json()
    assert info["classes"] == ["A", "B", "C", "space"]
    assert info["runtime"] == "onnxruntime fp32"  # the replica's own: converted on load, no ONNX file in the fixture
    health = requests.get(f"{server}/healthz").json()
    assert health["status"] == "ok"
    assert health["settings"] == {"max_batch_size": 8, "batch_wait_timeout_s": 0.0,
                                  "spell_hold_s": 0.6}  # the model replica's batching, the demo's hold
    assert requests.get(f"{server}/docs").status_code == 200


def test_errors_over_http(server):
    def post(data, content_type, **headers):
        return requests.post(f"{server}/predict", data=data, headers={"content-type": content_type, **headers})

    cases = [
        (post(b"not an image", "image/png"), 400, "invalid_image"),
        (post(colour_image("A", fmt="JPEG")[:150], "image/jpeg"), 400, "invalid_image"),
        (post(colour_image("A"), "text/plain"), 415, "unsupported_media_type"),
        (post(b"\0" * (300 * 1024), "image/png"), 413, "payload_too_large"),
        (post(iter([b"\0" * 65536] * 8), "image/png"), 413, "payload_too_large"),  # chunked, no length
        (post(png_header_only(30_000, 30_000), "image/png"), 413, "image_too_large"),
        (post(b'{"image": "%%%"}', "application/json"), 400, "invalid_base64"),
        (requests.get(f"{server}/missing"), 404, "not_found"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
    assert post(colour_image("B"), "image/png").json()["label"] == "B"  # still serving


def test_prometheus_metrics_are_scraped_from_rays_endpoint(server):
    """What the application records reaches Ray's metrics endpoint, as Prometheus would scrape it."""
    import time

    import ray

    for _ in range(3):
        assert requests.post(f"{server}/predict", data=colour_image("A"), headers={"content-type": "image/png"}).ok
    assert requests.post(f"{server}/predict", data=b"nope", headers={"content-type": "image/png"}).status_code == 400
    assert requests.post(f"{server}/predict", data=b"\0" * (300 * 1024), headers={"content-type": "image/png"}).status_code == 413
    wanted = ['ray_asl_requests_total{', 'path="/predict"', 'status="200"', 'status="413"',
              'ray_asl_rejections_total{', 'code="invalid_image"', 'code="payload_too_large"',
              'ray_asl_predictions_total{', 'letter="A"', 'hand="none"',
              'ray_asl_stage_seconds_bucket{', 'stage="read"', 'stage="decode"', 'stage="model"']
    ports = sorted({node["MetricsExportPort"] for node in ray.nodes() if node["Alive"]})
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline:  # Ray exports every few seconds
        text = "\n".join(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text for port in ports)
        if all(piece in text for piece in wanted):
            break
        time.sleep(2)
    missing = [piece for piece in wanted if piece not in text]
    assert not missing, missing
    answered = [line for line in text.splitlines() if line.startswith("ray_asl_predictions_total{") and 'letter="A"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in answered) >= 3


def test_many_parallel_clients_all_answered_correctly(server):
    labels = ["A", "B", "C", "space"] * 24
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=32))

    def call(index: int) -> tuple[str, int, str]:
        label = labels[index]
        response = session.post(f"{server}/predict", data=colour_image(label, seed=index),
                                headers={"content-type": "image/png"}, timeout=60)
        return label, response.status_code, response.json().get("label")

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(call, range(len(labels))))
    assert all(status == 200 for _, status, _ in results)
    assert [got for _, _, got in results] == labels


def test_serve_config_yaml_matches_the_serve_defaults_and_builds():
    document = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    assert document == serve_config_document(ServeConfig(model="asl_runs/models/smoke"))
    args = document["applications"][0]["args"]
    with pytest.raises(ConfigError, match="max_batch_sise"):
        build_app({**args, "max_batch_sise": 8})
    with pytest.raises(FileNotFoundError):
        build_app({**args, "model": "/nonexistent/model"})
    # Serve itself types the args (the builder's one parameter is a pydantic model): refused before build_app runs.
    from pydantic import ValidationError
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary as serve_builds

    for bad, why in (({"max_batch_sise": 8}, "max_batch_sise"), ({"metrics_port": 9000}, "ray start"),
                     ({"inference": {"quantization_images": 8}}, "apply to export"),
                     ({"spell_min_probability": 0.5}, "removed")):
        with pytest.raises(ValidationError, match=why):
            serve_builds(build_app, {**args, **bad})
    # The settings that may change while serving are each deployment's user_config, not args (args are part
    # of the application's code version: changing one restarts every replica), and every serve key is somewhere.
    deployments = {d["name"]: d for d in document["applications"][0]["deployments"]}
    live = {**deployments["ASLModel"]["user_config"], **deployments["ASLIngress"]["user_config"]}
    assert set(live) == {"max_batch_size", "batch_wait_timeout_s", "spell_hold_s"}
    assert not set(live) & set(args)
    for name, deployment in deployments.items():
        assert checked_user_config(deployment["user_config"], name) == deployment["user_config"]


def test_user_config_is_checked_like_the_serve_section():
    assert checked_user_config({"max_batch_size": 4}, "ASLModel") == {"max_batch_size": 4, "batch_wait_timeout_s": 0.0}
    assert checked_user_config(None, "ASLIngress") == {"spell_hold_s": 1.0}
    with pytest.raises(ConfigError, match="max_batch_sise"):
        checked_user_config({"max_batch_sise": 4}, "ASLModel")
    with pytest.raises(ConfigError, match="spell_hold_s"):  # a key of the other deployment
        checked_user_config({"spell_hold_s": 2.0}, "ASLModel")
    with pytest.raises(ConfigError, match="max_batch_size"):
        checked_user_config({"max_batch_size": 0}, "ASLModel")
    with pytest.raises(ConfigError, match="spell_hold_s"):
        checked_user_config({"spell_hold_s": -1}, "ASLIngress")
    with pytest.raises(ConfigError, match="spell_min_probability: removed: one \"not sure\" rule"):
        checked_user_config({"spell_min_probability": 0.6}, "ASLIngress")  # a serve config from before: says why


# --------------------------------------------------------------------------- the browser


def test_demo_in_a_real_browser_upload_shows_the_letter(server, playwright_or_skip, tmp_path):
    image_path = tmp_path / "sign_c.png"
    image_path.write_bytes(colour_image("C", size=200, seed=3))
    expected = requests.post(f"{server}/predict", data=image_path.read_bytes(),
                             headers={"content-type": "image/png"}).json()
    assert expected["label"] == "C"
    browser = launch_chromium(playwright_or_skip)
    try:
        page, external = upload_photo_in_the_demo(browser, server, image_path)
        page.wait_for_timeout(500)  # let the label's fade-in finish before the screenshot
        shown = page.locator("#letters").inner_text().split()
        assert "Top 5 letters" in page.locator("#letters").inner_text()
        assert shown[shown.index("letters") + 1] == "C"  # the headline letter
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo_photo.png"), full_page=True)
        assert external == [], f"the demo tried to reach the internet: {external}"
    finally:
        browser.close()


def write_fake_webcam_video(path: Path, labels: list[str], fps: int = 10, size: int = 160) -> Path:
    """A Y4M video (Chromium's fake-webcam format) showing each label's colour for one frame each."""
    import io

    import numpy as np
    from PIL import Image

    with open(path, "wb") as handle:
        handle.write(f"YUV4MPEG2 W{size} H{size} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for label in labels:
            ycbcr = np.asarray(Image.open(io.BytesIO(colour_image(label, size=size))).convert("YCbCr"))
            handle.write(b"FRAME\n" + ycbcr[..., 0].tobytes() + ycbcr[::2, ::2, 1].tobytes() + ycbcr[::2, ::2, 2].tobytes())
    return path


def test_fingerspelling_from_a_live_webcam_stream(server, playwright_or_skip, tmp_path):
    """Chromium's fake webcam plays A for 2 s then C for 2 s, looping: the demo must spell them in turn."""
    video = write_fake_webcam_video(tmp_path / "signs.y4m", ["A"] * 20 + ["C"] * 20)
    browser = chromium_with_fake_webcam(playwright_or_skip, video)
    try:
        page, external = open_demo_tab(browser, server, "Fingerspelling")
        start_webcam(page, "camera")
        text = page.locator("#spelled textarea")
        page.wait_for_function("document.querySelector('#spelled textarea').value.length >= 3", timeout=60_000)
        spelled = text.input_value()
        assert set(spelled) <= {"A", "C"}, spelled
        assert all(a != b for a, b in zip(spelled, spelled[1:])), f"a held letter was committed twice: {spelled}"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo_fingerspelling.png"), full_page=True)
        page.locator("#clear").click()
        page.wait_for_function("document.querySelector('#spelled textarea').value.length <= 1",
                               timeout=60_000)  # the clear waits its turn behind the frames in the queue
        assert external == [], f"the demo tried to reach the internet: {external}"
    finally:
        browser.close()

"""Same landmarks, same model (issue 24): the demo's in-page hand landmarker (MediaPipe Hands for the
browser, ``serving/browser_hands.py``, driven by ``serving/static/live.js`` in headless Chromium) against
the Python detector the model was trained with (``hands.detect.HandDetector``, the card's settings), on
real photos. Both see each photo as decoded upright (EXIF applied), reduced to 640 px, with the card's
border paddings tried in order, each photo on its own (no tracking).

Prints per set: hands found by each, mean landmark distance in palm sizes (x, y; the palm size is the mean
wrist-to-knuckle distance of the Python hand), the landmark model's top-1 agreement on the two hands
(target >= 98%), and how often the landmark model alone (POST /v1/landmarks) gives /predict's answer
(the card's fusion rule, image model included) on the same photos. Run from the repository root::

    python bench/browser_landmarks.py --model asl_runs/models/<run> [--per-set 120] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test and bench tooling, not shipped
from helpers.probe import serve_in_thread  # noqa: E402

logger = logging.getLogger("bench.browser_landmarks")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETS = ("asl-alphabet", "asl-webcam")
PALM = (5, 9, 13, 17)
CHROMIUM = "/usr/bin/chromium"
PAGE = "<!doctype html><html><head><script src='/hands/live.js'></script></head><body></body></html>"


def sample(root: Path, count: int, seed: int = 24) -> list[Path]:
    """``count`` photos of ``root`` (a folder per letter), spread over the letters, in a fixed random order."""
    files = sorted(p for p in root.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    random.Random(seed).shuffle(files)
    return files[:count]


def python_hands(paths: list[Path], settings) -> list:
    """The Python detector on each photo, decoded as /predict decodes it (EXIF applied)."""
    from asl_platform.hands.detect import HandDetector

    detector = HandDetector(settings)
    try:
        return [detector.detect(decoded(path)) for path in paths]
    finally:
        detector.close()


def decoded(path: Path) -> np.ndarray:
    """The photo's pixels as /predict decodes them (EXIF applied, RGB): what the Python detector is given."""
    from asl_platform.serving.protocol import decode_upload

    return np.asarray(decode_upload(path.read_bytes(), 50_000_000).convert("RGB"))


def decoded_png(path: Path) -> bytes:
    """The same pixels, lossless and without a colour profile, for the page: both detectors then see exactly
    the same image (Chromium's JPEG decoder and colour management differ from Pillow's by a level or two, which
    is not what this measures: the live page is given raw camera frames, not JPEGs)."""
    buffer = io.BytesIO()
    Image.fromarray(decoded(path)).save(buffer, format="PNG")
    return buffer.getvalue()


def serve_files(paths: list[Path]) -> tuple[str, object]:
    """A local server for the page: /demo/ (a blank page with live.js), /hands/* (the platform's own routes),
    /photo?i=N (the photos)."""
    from fastapi import FastAPI, Query
    from fastapi.responses import HTMLResponse, Response

    from asl_platform.serving.browser_hands import add_browser_routes, ensure_assets

    if not ensure_assets():
        raise SystemExit("MediaPipe Hands for the browser could not be fetched (see the log)")
    app = FastAPI()
    add_browser_routes(app)

    @app.get("/demo/")
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/photo")
    async def photo(i: int = Query(..., ge=0, lt=len(paths))) -> Response:
        return Response(decoded_png(paths[i]), media_type="image/png")

    return serve_in_thread(app)


FIND = """async (i) => {
  const image = new Image();
  image.src = "/photo?i=" + i;
  await image.decode();
  const started = performance.now();
  const hand = await window.aslLive.findHand(image, image.naturalWidth, image.naturalHeight,
                                             document.createElement("canvas"), true);
  return {hand, ms: performance.now() - started};
}"""


def browser_hands(paths: list[Path]) -> tuple[list, list[float]]:
    """The page's detector on each photo: (hand or None, ms each)."""
    from playwright.sync_api import sync_playwright

    url, server = serve_files(paths)
    hands, times = [], []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(f"{url}/demo/", wait_until="load")
            page.wait_for_function("window.aslLive", timeout=60_000)
            page.evaluate("window.aslLive.landmarker()")  # the graph loads once, outside the timings
            for i in range(len(paths)):
                found = page.evaluate(FIND, i)
                hands.append(found["hand"])
                times.append(found["ms"])
                if (i + 1) % 20 == 0:
                    logger.info("page: %d of %d photos, median %.0f ms each", i + 1, len(paths), np.median(times))
            browser.close()
    finally:
        server.should_exit = True
    return hands, times


def palm_size(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[list(PALM), :2] - points[0, :2], axis=1).mean())


def compare(model_dir: str, name: str, paths: list[Path]) -> dict:
    from asl_platform.hands.rows import landmark_inputs
    from asl_platform.model import Predictor, resolve_model_dir
    from asl_platform.serving.backends import ImageClassifier, confidence_threshold

    directory = resolve_model_dir(model_dir)
    classifier = ImageClassifier(directory)
    predictor: Predictor = classifier.predictor
    settings = predictor.card.hands.detection.settings()
    started = time.perf_counter()
    python = python_hands(paths, settings)
    python_ms = (time.perf_counter() - started) * 1000 / len(paths)
    browser, browser_ms = browser_hands(paths)
    both = [i for i in range(len(paths)) if python[i] is not None and browser[i] is not None]
    distances, agree, same_hand = [], 0, 0
    rows_python, rows_browser = [], []
    for i in both:
        mine = np.asarray(browser[i]["landmarks"], np.float32)
        theirs = python[i].landmarks
        distances.append(float(np.linalg.norm(mine[:, :2] - theirs[:, :2], axis=1).mean() / max(palm_size(theirs), 1e-6)))
        same_hand += browser[i]["handedness"] == python[i].handedness
        rows_python.append(landmark_inputs(theirs, [1.0 if python[i].handedness == "Right" else 0.0])[0])
        rows_browser.append(landmark_inputs(mine, [1.0 if browser[i]["handedness"] == "Right" else 0.0])[0])
    if both:
        probs_python = predictor.predict_landmarks(np.stack(rows_python))
        probs_browser = predictor.predict_landmarks(np.stack(rows_browser))
        top_python, top_browser = probs_python.argmax(1), probs_browser.argmax(1)
        agree = int((top_python == top_browser).sum())
        # where the two differ, is either answer "not sure" (below the card's threshold, as /v1/landmarks says)?
        threshold = confidence_threshold(classifier.info, 0.5)
        sure = (probs_python.max(1) >= threshold) & (probs_browser.max(1) >= threshold)
        differ_sure = int(((top_python != top_browser) & sure).sum())
        flipped = [browser[i]["handedness"] != python[i].handedness for i in both]
        differ_flipped = int(sum(f for f, t, b in zip(flipped, top_python, top_browser) if t != b))
        for i, t, b in zip(both, top_python, top_browser):
            if t != b:
                logger.info("differs: %s (Python %s, page %s; hands %s / %s)", paths[i], predictor.classes[t],
                            predictor.classes[b], python[i].handedness, browser[i]["handedness"])
        # /predict (the card's rule, image model included) beside the landmark model alone, on the page's hands
        answers = classifier([path.read_bytes() for path in (paths[i] for i in both)])
        fused = np.asarray([int(np.argmax(a.probabilities)) for a in answers])
        same_as_predict = int((fused == top_browser).sum())
        labels = [path.parent.name for path in (paths[i] for i in both)]
        right_predict = sum(predictor.classes[f] == label for f, label in zip(fused, labels))
        right_landmarks = sum(predictor.classes[t] == label for t, label in zip(top_browser, labels))
    else:
        same_as_predict = right_predict = right_landmarks = differ_flipped = differ_sure = 0
    found_python = sum(h is not None for h in python)
    found_browser = sum(h is not None for h in browser)
    return {
        "set": name, "photos": len(paths), "found_python": found_python, "found_browser": found_browser,
        "found_both": len(both), "same_handedness": same_hand,
        "distance_palms_mean": float(np.mean(distances)) if distances else None,
        "distance_palms_p50": float(np.median(distances)) if distances else None,
        "distance_palms_p90": float(np.percentile(distances, 90)) if distances else None,
        "top1_agreement": agree / len(both) if both else None,
        "differ_with_handedness_flipped": differ_flipped,
        "differ_both_confident": differ_sure,
        "landmarks_route_same_as_predict": same_as_predict / len(both) if both else None,
        "accuracy_predict": right_predict / len(both) if both else None,
        "accuracy_landmarks_route": right_landmarks / len(both) if both else None,
        "ms_per_photo_python": python_ms, "ms_per_photo_browser_p50": float(np.median(browser_ms)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a hand-aware model directory or models folder")
    parser.add_argument("--per-set", type=int, default=120, help="photos from each of " + ", ".join(SETS))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    figures = [compare(args.model, name, sample(args.data / name, args.per_set)) for name in SETS]
    print("| set | photos | found (Python / page / both) | same hand | distance, palm sizes (mean / p50 / p90) | "
          "top-1 agreement (differing: with the hand flipped, both confident) | /v1/landmarks = /predict | accuracy /predict / landmarks | ms per photo (Python / page) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for f in figures:
        both = f["found_both"]
        pct = (lambda v: "-" if v is None else f"{v:.1%}")
        num = (lambda v: "-" if v is None else f"{v:.3f}")
        print(f"| {f['set']} | {f['photos']} | {f['found_python']} / {f['found_browser']} / {both} | "
              f"{f['same_handedness']}/{both} | {num(f['distance_palms_mean'])} / {num(f['distance_palms_p50'])} / "
              f"{num(f['distance_palms_p90'])} | {pct(f['top1_agreement'])} ({f['differ_with_handedness_flipped']}, "
              f"{f['differ_both_confident']}) | {pct(f['landmarks_route_same_as_predict'])} | "
              f"{pct(f['accuracy_predict'])} / {pct(f['accuracy_landmarks_route'])} | "
              f"{f['ms_per_photo_python']:.0f} / {f['ms_per_photo_browser_p50']:.0f} |")
    both = sum(f["found_both"] for f in figures)
    agreed = sum(round(f["top1_agreement"] * f["found_both"]) for f in figures if f["found_both"])
    print(f"top-1 agreement over both sets: {agreed}/{both} = {agreed / max(both, 1):.1%} (target >= 98%)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()

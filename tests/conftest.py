"""Shared fixtures: the real image sets beside the repo, one local Ray per test session, fixture models
built once; and the markers that let the unit tests run alone (``-m "not ray and not browser"``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
ASL_ALPHABET = SHARED_DATA / "asl-alphabet"
ASL_WEBCAM = SHARED_DATA / "asl-webcam"
ASL_SIGNERS = SHARED_DATA / "asl-signers"
ASL_PEOPLE = SHARED_DATA / "asl-people"


def require_dataset(path: Path) -> Path:
    """Skip (with the reason) when a real dataset is not beside the repo; CI has it."""
    if not path.is_dir():
        pytest.skip(f"real dataset not found at {path} (see ../shared/data/README.md); skipping")
    return path


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


def s3_client(env: dict[str, str]):
    """A boto3 S3 client for the ``s3_server`` environment."""
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def upload_folder(env: dict[str, str], local: Path, bucket: str, prefix: str) -> str:
    """Copy a local folder to ``s3://bucket/prefix`` on the ``s3_server``; returns that URI."""
    client = s3_client(env)
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)
    for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
    return f"s3://{bucket}/{prefix}"


# --------------------------------------------------------------------------- fixture models, built once


def _code_digest(paths: list[Path]) -> str:
    """Every Python file under ``paths`` (folders or files), by content."""
    import hashlib

    digest = hashlib.sha256()
    for path in paths:
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(f"{file.relative_to(REPO_ROOT)}\n".encode() + file.read_bytes())
    return digest.hexdigest()


def fixture_model(request, tmp_path_factory, name: str, build, inputs: list[Path] = (), code: list[Path] = (),
                  folder: str | None = None) -> Path:
    """A fixture model folder that ``build(folder)`` writes, built once per key and kept in pytest's cache
    folder (``.pytest_cache``), so that a second run on the same machine skips the building.

    The key follows the pipeline's own caches (``asl_platform.cache.listing_key``): the settings that
    change the output (the package's code, this file's and ``code``'s, the library versions) and every
    input file's path, size and modification time. The test gets its own copy (tests may add files to a
    model folder), as ``<tmp>/<folder or name>/v1``."""
    import shutil
    from importlib.metadata import version

    import asl_platform
    from asl_platform.cache import listing_key, write_atomically
    from asl_platform.data import ImageIndex

    files = [str(path) for path in inputs]
    header = {"fixture": name,
              "code": _code_digest([Path(asl_platform.__file__).parent, Path(__file__), *code]),
              "versions": {lib: version(lib) for lib in ("torch", "numpy", "mediapipe", "onnxruntime", "onnx")}}
    stamps = [f"{(stat := Path(f).stat()).st_size}:{stat.st_mtime_ns}" for f in files]
    key = listing_key(header, ImageIndex(root="", layout="files", classes=[], paths=files, labels=[0] * len(files),
                                         stamps=stamps))
    copy = tmp_path_factory.mktemp("models") / (folder or name) / "v1"
    cache = request.config.cache.mkdir("asl-fixture-models") if getattr(request.config, "cache", None) else None
    if cache is None:  # pytest's cache is off (-p no:cacheprovider): build where the test reads it
        build(copy)
        return copy
    built = cache / f"{name}-{key}"
    if not (built / "model.json").is_file():
        for stale in cache.glob(f"{name}-*"):  # an earlier key's: never read again
            shutil.rmtree(stale, ignore_errors=True)
        write_atomically(built, build)
    shutil.copytree(built, copy)
    return copy


# --------------------------------------------------------------------------- a small trained model


def train_head(head, train: tuple, val: tuple, lr: float = 1e-3, batch_size: int = 64, epochs: int = 10,
               weight_decay: float = 1e-2) -> list[dict]:
    """Train ``head`` in-process on (features, labels) arrays with the platform's one loop (AdamW,
    no early stopping); returns the per-epoch metrics."""
    import torch

    from asl_platform.training.loop import EarlyStopping, TrainingState, fit
    from asl_platform.training.sources import ArrayBatches

    cpu = torch.device("cpu")
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    state = TrainingState(EarlyStopping(patience=None))
    return list(fit(head, optimizer, ArrayBatches(*train, batch_size, cpu, shuffle=True), ArrayBatches(*val, 1024, cpu),
                    epochs=epochs, state=state))

COLOURS = {"A": (220, 30, 30), "B": (30, 200, 30), "C": (30, 30, 220), "space": (128, 128, 128)}


def colour_image(label: str, size: int = 64, fmt: str = "PNG", seed: int = 0) -> bytes:
    """A noisy solid-colour image the ``colour_model`` fixture classifies as ``label``."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(COLOURS[label], 25, (size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def colour_model(request, tmp_path_factory) -> Path:
    """A real saved model (tiny backbone, head trained in-process) that tells the four colours apart:
    tests can check that a red image comes back as "A" through every path, not just that a letter comes back."""
    return fixture_model(request, tmp_path_factory, "colours", build_colour_model)


def build_colour_model(directory: Path) -> None:
    import io

    import numpy as np
    import torch
    from PIL import Image

    from asl_platform.data import preprocess_images
    from asl_platform.model import build_classifier, get_backbone_spec, save_model_dir

    torch.manual_seed(0)
    classes = list(COLOURS)
    model = build_classifier("tiny", "none", num_classes=len(classes), hidden_size=32, dropout=0.0)
    prep = get_backbone_spec("tiny").preprocessing
    images, labels = [], []
    for index, label in enumerate(classes):
        for seed in range(12):
            images.append(Image.open(io.BytesIO(colour_image(label, seed=seed))).convert("RGB"))
            labels.append(index)
    with torch.inference_mode():
        features = model.backbone(torch.from_numpy(preprocess_images(images, prep))).numpy()
    data = (features, np.asarray(labels, dtype=np.int64))
    history = train_head(model.head, data, data, lr=3e-2, batch_size=16, epochs=40)
    assert history[-1]["val_accuracy"] == 1.0, history[-1]
    save_model_dir(model.eval(), directory, classes, version="v1", metrics={"test_accuracy": 1.0})


# --------------------------------------------------------------------------- a hand-aware model


def alphabet_photos(root: Path, label: str, count: int) -> list[Path]:
    """The first ``count`` photos of a class of asl-alphabet, in a stable order."""
    return sorted(p for p in (root / label).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]


def detected_photos(root: Path, labels: list[str], per_class: int, scan: int = 40, skip: int = 0) -> dict[str, list]:
    """Per label, up to ``per_class`` (path, Hand) pairs of asl-alphabet photos MediaPipe finds a hand in,
    after the first ``skip`` such photos (those the ``hand_model`` fixture was trained on: ``skip=12``)."""
    import numpy as np
    from PIL import Image

    from asl_platform.hands import HandDetector

    detector, found = HandDetector(), {}
    for label in labels:
        found[label], skipped = [], 0
        for path in alphabet_photos(root, label, scan):
            hand = detector.detect(np.asarray(Image.open(path).convert("RGB")))
            if hand is not None and skipped < skip:
                skipped += 1
            elif hand is not None:
                found[label].append((path, hand))
            if len(found[label]) == per_class:
                break
    detector.close()
    return found


HAND_LETTERS, HAND_SCAN = ["A", "B", "C"], 40


@pytest.fixture(scope="session")
def hand_model(request, tmp_path_factory, colour_model, asl_alphabet) -> Path:
    """A real hand-aware model folder: the colour model's image model, and a landmark model trained
    in-process on the MediaPipe landmarks of real asl-alphabet photos of A, B and C (answer rule
    ``landmarks|image``: a photo with a hand is read by its landmarks, one without by its colour)."""
    photos = [p for label in HAND_LETTERS for p in alphabet_photos(asl_alphabet, label, HAND_SCAN)]
    return fixture_model(request, tmp_path_factory, "hands",
                         lambda directory: build_hand_model(directory, colour_model, asl_alphabet), inputs=photos)


def build_hand_model(directory: Path, colour_model: Path, asl_alphabet: Path) -> None:
    import numpy as np
    import torch

    from asl_platform.hands import DetectionSettings, landmark_inputs
    from asl_platform.hands.detect import mediapipe_version
    from asl_platform.hands.shapes import save_shapes, shapes_of
    from asl_platform.model import load_model_dir, save_model_dir
    from asl_platform.model.card import DetectionCard, FusionCard, HandsCard, HeadCard
    from asl_platform.model.landmarks import LandmarkClassifier

    image_model, card = load_model_dir(colour_model)
    photos = detected_photos(asl_alphabet, HAND_LETTERS, per_class=12, scan=HAND_SCAN)
    rows, labels = [], []
    for label, pairs in photos.items():
        for _, hand in pairs:
            rows.append(landmark_inputs(hand.landmarks, [1.0 if hand.handedness == "Right" else 0.0])[0])
            labels.append(card.classes.index(label))
    data = (np.stack(rows).astype(np.float32), np.asarray(labels, dtype=np.int64))
    torch.manual_seed(0)
    landmarks = LandmarkClassifier(len(card.classes), hidden_size=32, dropout=0.0)
    history = train_head(landmarks, data, data, lr=1e-2, batch_size=16, epochs=60)
    assert history[-1]["val_accuracy"] >= 0.9, history[-1]
    settings = DetectionSettings()
    hands = HandsCard(detection=DetectionCard(paddings=list(settings.paddings), min_confidence=settings.min_confidence,
                                              model_complexity=settings.model_complexity, mediapipe=mediapipe_version()),
                      head=HeadCard(hidden_size=32, dropout=0.0))
    save_model_dir(image_model, directory, card.classes, landmarks=landmarks.eval(), version="v1",
                   metrics={"test_accuracy": 1.0, "cross_domain_accuracy": 0.5}, kind="hand_aware", hands=hands,
                   fusion=FusionCard(rule="landmarks|image", selected_on="the test fixture", scores={}))
    save_shapes(shapes_of(data[0], data[1], card.classes), directory)  # practice mode's typical hands, as export writes

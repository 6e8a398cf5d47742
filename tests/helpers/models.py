"""Fixture models: built once per key of the code and files they come from, kept in pytest's cache
folder; a small head trained in-process with the platform's one loop; the colour and hand-aware models."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from helpers.datasets import REPO_ROOT, detected_photos


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

    The key (``listing_key``) covers the settings that
    change the output (the package's code, this file's and ``code``'s, the library versions) and every
    input file's path, size and modification time. The test gets its own copy (tests may add files to a
    model folder), as ``<tmp>/<folder or name>/v1``."""
    import shutil
    from importlib.metadata import version

    import asl_platform
    from asl_platform.data.listing import ImageIndex

    files = [str(path) for path in inputs]
    header = {"fixture": name,
              "code": _code_digest([Path(asl_platform.__file__).parent, Path(__file__).parent, *code]),
              "versions": {lib: version(lib) for lib in ("torch", "numpy", "mediapipe", "onnxruntime", "onnx")}}
    stamps = [f"{(stat := Path(f).stat()).st_size}:{stat.st_mtime_ns}" for f in files]
    key = listing_key(header, ImageIndex(root="", layout="files", classes=[], paths=files, labels=[0] * len(files),
                                         stamps=stamps))
    copy = tmp_path_factory.mktemp("models") / (folder or name) / "v1"
    cache = request.config.cache.mkdir("asl-fixture-models") if getattr(request.config, "cache", None) else None
    if cache is None:  # pytest's cache is off (-p no:cacheprovider): build where the test reads it
        write_atomically(copy, build)
        return copy
    built = cache / f"{name}-{key}"
    if not (built / "model.json").is_file():
        for stale in cache.glob(f"{name}-*"):  # an earlier key's: never read again
            shutil.rmtree(stale, ignore_errors=True)
        write_atomically(built, build)
    shutil.copytree(built, copy)
    return copy


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



def build_colour_model(directory: Path) -> None:
    import io

    import numpy as np
    import torch
    from PIL import Image

    from asl_platform.data.decode import preprocess_images
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


HAND_LETTERS, HAND_SCAN = ["A", "B", "C"], 40


def build_hand_model(directory: Path, colour_model: Path, asl_alphabet: Path) -> None:
    import numpy as np
    import torch

    from asl_platform.hands import DetectionSettings, landmark_inputs
    from asl_platform.hands.shapes import save_shapes, shapes_of
    from asl_platform.model import load_model_dir, save_model_dir
    from asl_platform.model.card import DetectionCard, FusionCard, HandsCard, HeadCard
    from asl_platform.model.landmarks import LandmarkClassifier, save_landmark_weights

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
    hands = HandsCard(detection=DetectionCard.of(DetectionSettings()), head=HeadCard(hidden_size=32, dropout=0.0))
    save_landmark_weights(landmarks.eval(), directory)
    save_model_dir(image_model, directory, card.classes, version="v1",
                   metrics={"test_accuracy": 1.0, "cross_domain_accuracy": 0.5}, kind="hand_aware", hands=hands,
                   fusion=FusionCard(rule="landmarks|image", selected_on="the test fixture", scores={}))
    save_shapes(shapes_of(data[0], data[1], card.classes), directory)  # practice mode's typical hands, as export writes


def listing_key(header: dict, index) -> str:
    """Hash of ``header`` (the settings that change an output) and every file's path, label and
    size:mtime stamp from the listing."""
    digest = hashlib.sha256()
    digest.update(json.dumps(header, sort_keys=True).encode())
    stamps = index.stamps or [""] * len(index.paths)
    for path, label, stamp in zip(index.paths, index.labels, stamps):
        digest.update(f"{path}\t{label}\t{stamp}\n".encode())
    return digest.hexdigest()[:20]


def write_atomically(directory: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` fills a temporary folder, renamed into place only when it returns: a crash
    leaves no half-written cache that a later run would trust."""
    tmp = directory.with_name(directory.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)

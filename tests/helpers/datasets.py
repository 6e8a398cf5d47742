"""The real image sets beside the repo, and photos from them the tests pick."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
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


def hand_shapes(per_class: int, seed: int, jitter: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Landmark rows (``hands.landmark_inputs``) of three prototype hands, each moved, scaled, slightly
    rotated, jittered (``jitter`` pixels) and shown as either hand (mirrored, with the matching handedness):
    what a landmark model must see through."""
    import numpy as np

    from asl_platform.hands import landmark_inputs

    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(99).normal(0, 40, (3, 21, 3)).astype(np.float32)
    prototypes[:, 0] = 0
    rows, labels = [], []
    for label, prototype in enumerate(prototypes):
        for _ in range(per_class):
            angle = rng.uniform(-0.2, 0.2)
            rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
            points = (prototype @ rotation.T) * rng.uniform(0.5, 2) + rng.normal(0, jitter, (21, 3))
            right = float(rng.random() < 0.5)
            if not right:
                points[:, 0] *= -1
            rows.append(landmark_inputs(points + [rng.uniform(0, 500), rng.uniform(0, 400), 0], [right])[0])
            labels.append(label)
    return np.stack(rows).astype(np.float32), np.asarray(labels, dtype=np.int64)

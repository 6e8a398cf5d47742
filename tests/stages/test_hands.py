"""asl_platform.stages.hands: the hands stage through a real Ray Data actor pool, cached as Parquet."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from helpers.datasets import alphabet_photos
from PIL import Image

from asl_platform.data.listing import list_images
from asl_platform.hands import DetectionSettings
from asl_platform.stages.hands import detect_hands

pytestmark = [pytest.mark.e2e, pytest.mark.real_data]


def test_every_file_gets_a_row_hand_or_not_and_the_cache_is_reused(ray_local, asl_alphabet, tmp_path, monkeypatch):
    root = tmp_path / "data"
    for label in ("A", "L"):
        (root / label).mkdir(parents=True)
        for photo in alphabet_photos(asl_alphabet, label, 3):
            shutil.copy(photo, root / label / photo.name)
    (root / "nothing").mkdir()
    Image.new("RGB", (200, 200), (120, 120, 120)).save(root / "nothing" / "blank.png")
    (root / "nothing" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    index = list_images(str(root))
    cache = tmp_path / "cache"

    table = detect_hands(index, DetectionSettings(), cache, batch_size=2)
    assert list(table.paths) == index.paths and not table.from_cache
    by_name = {p.split("/")[-1]: i for i, p in enumerate(table.paths)}
    broken, blank = by_name["broken.jpg"], by_name["blank.png"]
    assert table.errors[broken] and not table.found[broken]
    assert not table.errors[blank] and not table.found[blank] and not table.landmarks[blank].any()
    photos = [i for i, p in enumerate(table.paths) if "/nothing/" not in p]
    assert table.found[photos].sum() >= 4  # MediaPipe finds most of these hands
    for i in np.flatnonzero(table.found):
        assert table.landmarks[i].shape == (21, 3) and table.box[i][2] > table.box[i][0] and table.score[i] >= 0.5
    assert table.inputs().shape == (len(index), 64)
    rates = table.detection_rates(index.classes)
    assert rates["nothing"] == 0.0 and rates["A"] >= 1 / 3

    again = detect_hands(index, DetectionSettings(), cache)
    assert again.from_cache
    np.testing.assert_array_equal(again.found, table.found)
    np.testing.assert_allclose(again.landmarks, table.landmarks)
    assert list(again.errors) == list(table.errors)
    # A photo added to the folder is the only one MediaPipe sees on the next run.
    import asl_platform.stages.hands as stage

    seen = []
    real = stage.find_hands
    monkeypatch.setattr(stage, "find_hands", lambda index, *args: seen.append(list(index.paths)) or real(index, *args))
    shutil.copy(alphabet_photos(asl_alphabet, "L", 4)[-1], root / "L" / "added.jpg")
    grown = detect_hands(list_images(str(root)), DetectionSettings(), cache)
    assert seen == [[str(root / "L" / "added.jpg")]] and not grown.from_cache and len(grown.paths) == len(index) + 1
    same = {p: i for i, p in enumerate(grown.paths)}
    np.testing.assert_allclose(grown.landmarks[[same[p] for p in index.paths]], table.landmarks)
    monkeypatch.undo()
    # Other detection settings are another cache entry, not a stale hit.
    assert not detect_hands(index, DetectionSettings(min_confidence=0.6), cache).from_cache
    assert len(list(cache.iterdir())) == 2

"""Feature extraction through a real Ray Data actor pool, and the Parquet feature cache."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from asl_platform.data.decode import Preprocessing, decode_image, preprocess_images
from asl_platform.data.listing import list_images
from asl_platform.model import build_backbone, get_backbone_spec
from asl_platform.stages.features import cache_header, extract_features


def _make_folder(root, per_class=4):
    rng = np.random.default_rng(0)
    for name in ("A", "B", "C"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    (root / "C" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return root


def test_features_match_the_backbone_and_are_cached(ray_local, tmp_path, tmp_path_factory):
    root = _make_folder(tmp_path / "data")
    index = list_images(str(root))
    weights = tmp_path / "tiny.pth"
    torch.manual_seed(0)
    torch.save(build_backbone("tiny", "none").state_dict(), weights)  # fixed weights: reproducible features
    cache = tmp_path / "cache"

    first = extract_features(index, "tiny", str(weights), cache, batch_size=4)
    assert not first.from_cache
    assert list(first.paths) == index.paths  # aligned with the index order
    assert first.features.shape == (len(index), 64)
    bad = [p for p, e in zip(first.paths, first.errors) if e]
    assert bad == [str(root / "C" / "broken.jpg")]

    # Same features as running the backbone directly on the same files.
    good = [i for i, e in enumerate(first.errors) if not e]
    backbone = build_backbone("tiny", str(weights))
    prep = get_backbone_spec("tiny").preprocessing
    batch = preprocess_images([decode_image(open(index.paths[i], "rb").read()) for i in good], prep)
    with torch.inference_mode():
        direct = backbone(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(first.features[good], direct, rtol=1e-4, atol=1e-5)

    second = extract_features(index, "tiny", str(weights), cache, batch_size=4)
    assert second.from_cache
    np.testing.assert_array_equal(second.features, first.features)
    assert list(second.errors) == list(first.errors)


def test_the_cache_header_changes_with_what_changes_a_feature():
    prep = Preprocessing(64)
    base = cache_header("tiny", "none", prep, 0, "features")
    assert cache_header("tiny", "none", prep, 0, "features") == base
    for other in (cache_header("tiny", "none", Preprocessing(96), 0, "features"),
                  cache_header("resnet50", "none", prep, 0, "features"), cache_header("tiny", "imagenet", prep, 0, "features"),
                  cache_header("tiny", "none", prep, 1000, "features"), cache_header("tiny", "none", prep, 0, "trunk")):
        assert other != base


def test_only_new_or_changed_files_are_extracted(ray_local, tmp_path, monkeypatch):
    """The cache is per file: a second folder's files, one edited file and one added file are extracted;
    everything else comes from the cache, with the same features as a cold run on the same files."""
    import asl_platform.stages.features as stage

    root = _make_folder(tmp_path / "data")
    other = _make_folder(tmp_path / "other", per_class=2)
    cache = tmp_path / "cache"
    weights = str(tmp_path / "tiny.pth")
    torch.manual_seed(0)
    torch.save(build_backbone("tiny", "none").state_dict(), weights)  # fixed weights: reproducible features
    extracted = []
    real = stage._extract
    monkeypatch.setattr(stage, "_extract", lambda index, *args: extracted.append(sorted(index.paths)) or real(index, *args))

    first = extract_features(list_images(str(root)), "tiny", weights, cache, batch_size=4)
    assert len(extracted[0]) == 13 and not first.from_cache
    again = extract_features(list_images(str(root)), "tiny", weights, cache, batch_size=4)
    assert again.from_cache and len(extracted) == 1
    np.testing.assert_array_equal(again.features, first.features)
    assert list(again.errors) == list(first.errors)

    (root / "A" / "0.png").write_bytes((root / "B" / "1.png").read_bytes())  # edited: B's pixels now
    Image.new("RGB", (40, 40), (200, 30, 30)).save(root / "A" / "new.png")  # added
    both = list_images(str(root))
    cross = list_images(str(other))
    grown = extract_features(both, "tiny", weights, cache, batch_size=4)
    assert extracted[1] == sorted([str(root / "A" / "0.png"), str(root / "A" / "new.png")])
    assert not grown.from_cache and list(grown.paths) == both.paths
    row = {p: i for i, p in enumerate(both.paths)}
    np.testing.assert_array_equal(grown.features[row[str(root / "A" / "0.png")]], first.features[list(first.paths).index(str(root / "B" / "1.png"))])
    shared = extract_features(cross, "tiny", weights, cache, batch_size=4)  # another folder: its own rows only
    assert sorted(extracted[2]) == sorted(cross.paths) and shared.features.shape == (len(cross), 64)
    cold = extract_features(both, "tiny", weights, tmp_path / "cold", batch_size=4)
    np.testing.assert_allclose(grown.features, cold.features, rtol=1e-5, atol=1e-6)
    assert list(grown.errors) == list(cold.errors)


def test_trunk_activations_are_extracted_cached_as_float16_and_pool_to_the_features(ray_local, tmp_path):
    """output="trunk": the activations before the last stage, (N, C, H, W), cached as float16 with their
    shape in the cache's meta.json, and kept as float16 in memory; the frozen last stage pools them to the features."""
    import json

    from asl_platform.model import split_backbone
    from asl_platform.stages.features import pool_activations

    root = _make_folder(tmp_path / "data")
    index = list_images(str(root))
    weights = tmp_path / "tiny.pth"
    torch.manual_seed(0)
    torch.save(build_backbone("tiny", "none").state_dict(), weights)
    cache = tmp_path / "cache"

    first = extract_features(index, "tiny", str(weights), cache, batch_size=4, output="trunk")
    assert not first.from_cache and list(first.paths) == index.paths
    assert first.features.shape == (len(index), 32, 16, 16) and first.features.dtype == np.float16
    directory = next(cache.glob("tiny-trunk-*"))
    meta = json.loads((directory / "meta.json").read_text())
    assert meta["header"]["output"] == "trunk" and meta["shapes"]["features"] == [32, 16, 16]
    import pyarrow.parquet as pq

    part = next(directory.glob("part-*.parquet"))
    assert str(pq.read_schema(part).field("features").type.value_type) == "halffloat"

    good = [i for i, e in enumerate(first.errors) if not e]
    backbone = build_backbone("tiny", str(weights))
    trunk, _ = split_backbone("tiny", backbone)
    batch = torch.from_numpy(preprocess_images(
        [decode_image(open(index.paths[i], "rb").read()) for i in good], get_backbone_spec("tiny").preprocessing))
    with torch.inference_mode():
        direct_activations, direct_features = trunk(batch).numpy(), backbone(batch).numpy()
    np.testing.assert_allclose(first.features[good], direct_activations, rtol=2e-3, atol=2e-3)  # float16
    pooled = pool_activations(first.features[good], "tiny", str(weights), batch_size=3)
    np.testing.assert_allclose(pooled, direct_features, rtol=5e-3, atol=5e-3)

    second = extract_features(index, "tiny", str(weights), cache, batch_size=4, output="trunk")
    assert second.from_cache
    np.testing.assert_array_equal(second.features, first.features)  # the same values, fresh or cached
    assert list(second.errors) == list(first.errors)
    # Pooled features keep their own cache entry (and the key they always had).
    features = extract_features(index, "tiny", str(weights), cache, batch_size=4)
    assert not features.from_cache and features.features.shape == (len(index), 64)
    assert len(list(cache.glob("tiny-*"))) == 2

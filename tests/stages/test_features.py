"""Feature extraction through a real Ray Data actor pool, and the Parquet feature cache."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from asl_platform.data.decode import Preprocessing, decode_image, preprocess_images
from asl_platform.data.listing import list_images
from asl_platform.model import build_backbone, get_backbone_spec
from asl_platform.stages.features import cache_key, extract_features


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


def test_cache_key_changes_with_what_changes_a_feature(tmp_path):
    root = _make_folder(tmp_path / "data")
    index = list_images(str(root))
    prep = Preprocessing(64)
    base = cache_key(index, "tiny", "none", prep)
    assert cache_key(index, "tiny", "none", prep) == base
    assert cache_key(index, "tiny", "none", Preprocessing(96)) != base
    assert cache_key(index, "resnet50", "none", prep) != base
    assert cache_key(index, "tiny", "imagenet", prep) != base
    assert cache_key(index, "tiny", "none", prep, max_bytes=1000) != base
    assert cache_key(index, "tiny", "none", prep, output="features") == base  # pooled: the key it always had
    assert cache_key(index, "tiny", "none", prep, output="trunk") != base
    (root / "A" / "0.png").write_bytes((root / "A" / "1.png").read_bytes() + b"\0")  # edited file
    assert cache_key(list_images(str(root)), "tiny", "none", prep) != base


def test_trunk_activations_are_extracted_cached_as_float16_and_pool_to_the_features(ray_local, tmp_path):
    """output="trunk": the activations before the last stage, (N, C, H, W), cached as float16 with their
    shape in meta.json, and kept as float16 in memory; the frozen last stage pools them to the features."""
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
    assert meta["output"] == "trunk" and meta["shape"] == [32, 16, 16] and meta["dtype"] == "float16"
    import pyarrow.parquet as pq

    assert str(pq.read_schema(directory / "table.parquet").field("features").type.value_type) == "halffloat"

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

"""Unit tests for asl_platform.data: listing, splitting, decoding, preprocessing, the Ray dataset."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asl_platform.data.decode import Preprocessing, decode_image, preprocess_images, to_rgb
from asl_platform.data.listing import ImageIndex, list_images, stratified_split
from asl_platform.data.reading import decode_batch, image_dataset, summarize_errors
from asl_platform.errors import DataError

# --------------------------------------------------------------------------- helpers


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _save(path: Path, color=(200, 30, 40), size=(8, 8), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def _make_class_tree(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    """<root>/<CLASS>/<class>_<i><ext> with tiny solid-colour images."""
    for name, n in counts.items():
        for i in range(n):
            _save(root / name / f"{name.lower()}_{i:03d}{ext}", color=(i % 256, 10, 20), size=(4, 4))
    return root


def _noise_jpeg(size=(64, 64), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return _encode(Image.fromarray(array, "RGB"), "JPEG", quality=95)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature + IHDR claiming width x height, then IEND: cheap 'bomb' bytes."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _names(paths) -> list[str]:
    return [os.path.basename(p) for p in paths]


# --------------------------------------------------------------------------- list_images


def test_list_images_class_folders(tmp_path):
    root = tmp_path / "data"
    _make_class_tree(root, {"B": 2, "A": 3})
    _save(root / "C" / "c_000.jpg", fmt="JPEG")
    _save(root / "C" / "c_001.jpg", fmt="JPEG")
    index = list_images(str(root))
    assert index.classes == ["A", "B", "C"]
    assert index.layout == "class folders"
    assert len(index) == 7
    assert index.class_counts() == {"A": 3, "B": 2, "C": 2}
    # Every label matches the folder the file is in.
    for path, label in zip(index.paths, index.labels):
        assert Path(path).parent.name == index.classes[label]
        assert os.path.isabs(path) and os.path.isfile(path)
    # Files in a class are in sorted order; classes are grouped in class order.
    assert index.labels == sorted(index.labels)
    assert _names(index.paths[:3]) == ["a_000.png", "a_001.png", "a_002.png"]


def test_list_images_order_is_stable_and_case_sensitive(tmp_path):
    root = tmp_path / "data"
    _make_class_tree(root, {"space": 1, "B": 1, "nothing": 1, "A": 1, "del": 1})
    first = list_images(root)
    second = list_images(root)
    assert first.classes == ["A", "B", "del", "nothing", "space"]
    assert first.paths == second.paths and first.labels == second.labels
    # A Path object works as well as a str, and a trailing slash is harmless.
    assert list_images(str(root) + "/").paths == first.paths


def test_list_images_ignores_hidden_files_and_folders(tmp_path):
    root = tmp_path / "data"
    _make_class_tree(root, {"A": 2, "B": 2})
    (root / "A" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / ".DS_Store").write_bytes(b"junk")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.png").write_bytes(b"junk")
    (root / "A" / ".ipynb_checkpoints").mkdir()
    _save(root / "A" / ".ipynb_checkpoints" / "copy.png")  # a duplicate that could leak into test
    index = list_images(root)
    assert index.classes == ["A", "B"]
    assert len(index) == 4
    assert not any(os.path.basename(p).startswith(".") or ".ipynb" in p for p in index.paths)


def test_list_images_accepts_file_uris_and_refuses_uri_options(tmp_path):
    root = _make_class_tree(tmp_path / "data", {"A": 2, "B": 2})
    assert list_images(f"file://{root}").paths == list_images(root).paths
    with pytest.raises(DataError, match="options in the URI"):
        list_images("s3://bucket/asl?region=eu-west-1")


def test_listing_records_size_and_mtime_for_cache_keys(tmp_path):
    root = _make_class_tree(tmp_path / "data", {"A": 2, "B": 2})
    index = list_images(root)
    assert len(index.stamps) == len(index.paths)
    size, mtime = index.stamps[0].split(":")
    assert int(size) == os.path.getsize(index.paths[0]) and int(mtime) == os.stat(index.paths[0]).st_mtime_ns


def test_list_images_keeps_non_image_files_in_class_folders(tmp_path):
    root = tmp_path / "data"
    _make_class_tree(root, {"A": 2, "B": 2})
    (root / "A" / "notes.txt").write_text("not an image")
    index = list_images(root)
    assert "notes.txt" in _names(index.paths)
    assert index.labels[_names(index.paths).index("notes.txt")] == index.classes.index("A")
    assert len(index) == 5


def test_list_images_includes_images_in_class_subfolders(tmp_path):
    root = tmp_path / "data"
    _make_class_tree(root, {"A": 1, "B": 1})
    _save(root / "A" / "more" / "deep.png")
    index = list_images(root)
    assert index.class_counts() == {"A": 2, "B": 1}


def test_list_images_kaggle_nested_train_folder(tmp_path):
    root = tmp_path / "download"
    classes = root / "asl_alphabet_train" / "asl_alphabet_train"
    _make_class_tree(classes, {"A": 2, "B": 2, "del": 1, "nothing": 1, "space": 1}, ext=".jpg")
    index = list_images(root)
    assert index.classes == ["A", "B", "del", "nothing", "space"]
    assert len(index) == 7
    for path in index.paths:
        assert Path(path).parent.parent == classes.resolve()


def test_list_images_kaggle_download_root_uses_train_folder(tmp_path):
    root = tmp_path / "download"
    train = root / "asl_alphabet_train" / "asl_alphabet_train"
    _make_class_tree(train, {"A": 2, "B": 3}, ext=".jpg")
    test = root / "asl_alphabet_test" / "asl_alphabet_test"
    _save(test / "A_test.jpg", fmt="JPEG")
    _save(test / "B_test.jpg", fmt="JPEG")
    index = list_images(root)
    assert not index.layout.startswith("flat")
    assert index.classes == ["A", "B"]
    assert index.class_counts() == {"A": 2, "B": 3}
    assert all("asl_alphabet_train" in p for p in index.paths)
    assert not any("asl_alphabet_test" in p for p in index.paths)


def test_list_images_flat_test_folder(tmp_path):
    root = tmp_path / "flat"
    for name in ["A_test.jpg", "nothing_test.jpg", "del_test.jpg"]:
        _save(root / name, fmt="JPEG")
    (root / ".DS_Store").write_bytes(b"junk")
    index = list_images(root)
    assert index.layout.startswith("flat")
    assert index.classes == ["A", "del", "nothing"]
    by_name = dict(zip(_names(index.paths), (index.classes[y] for y in index.labels)))
    assert by_name == {"A_test.jpg": "A", "del_test.jpg": "del", "nothing_test.jpg": "nothing"}


def test_list_images_kaggle_nested_flat_test_folder(tmp_path):
    root = tmp_path / "asl_alphabet_test"
    test = root / "asl_alphabet_test"
    for name in ["A_test.jpg", "B_test.jpg", "space_test.jpg"]:
        _save(test / name, fmt="JPEG")
    index = list_images(root)
    assert index.layout.startswith("flat")
    assert index.classes == ["A", "B", "space"]
    assert len(index) == 3


def test_list_images_missing_root(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as info:
        list_images(missing)
    assert "not found" in str(info.value)
    assert str(missing) in str(info.value)


def test_list_images_root_is_a_file(tmp_path):
    file = _save(tmp_path / "img.png")
    with pytest.raises(DataError) as info:
        list_images(file)
    assert "not a folder" in str(info.value)


def test_list_images_empty_class_folder(tmp_path):
    root = tmp_path / "data"
    _make_class_tree(root, {"A": 2, "B": 2})
    (root / "Empty").mkdir()
    (root / "Hidden").mkdir()
    (root / "Hidden" / ".DS_Store").write_bytes(b"junk")  # only a hidden file: still empty
    with pytest.raises(DataError) as info:
        list_images(root)
    message = str(info.value)
    assert "Empty" in message
    assert "Hidden" in message
    assert "no images" in message
    assert "A," not in message and ", B" not in message  # only the empty classes are named


def test_list_images_only_one_class(tmp_path):
    root = tmp_path / "data"
    _make_class_tree(root, {"A": 3})
    with pytest.raises(DataError) as info:
        list_images(root)
    assert "need at least 2" in str(info.value)


def test_list_images_no_images_at_all(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "readme.txt").write_text("nothing here")
    with pytest.raises(DataError) as info:
        list_images(root)
    assert "found 0 class(es)" in str(info.value)


def test_list_images_single_class_folder_with_arbitrary_file_names(tmp_path):
    root = tmp_path / "data"
    _save(root / "A" / "cat.png")
    _save(root / "A" / "dog.png")
    with pytest.raises(DataError, match=r"found 1 class\(es\) .* need at least 2"):
        list_images(root)


def test_max_per_class_caps_deterministically(tmp_path):
    root = tmp_path / "data"
    _make_class_tree(root, {"A": 10, "B": 3})
    first = list_images(root, max_per_class=4, seed=1)
    second = list_images(root, max_per_class=4, seed=1)
    assert first.class_counts() == {"A": 4, "B": 3}
    assert first.paths == second.paths
    full = list_images(root)
    assert set(first.paths) <= set(full.paths)
    # The kept files are still sorted within a class.
    a_paths = [p for p, y in zip(first.paths, first.labels) if y == 0]
    assert a_paths == sorted(a_paths)
    # Different seeds pick differently (for 4 out of 10 the chance of equal picks is 1/210
    # per seed pair; with seeds 1..6 at least one differs deterministically).
    picks = {tuple(list_images(root, max_per_class=4, seed=s).paths) for s in range(1, 7)}
    assert len(picks) > 1


# --------------------------------------------------------------------------- stratified_split


def _synthetic_index(counts: dict[str, int]) -> ImageIndex:
    classes = sorted(counts)
    paths, labels = [], []
    for label, name in enumerate(classes):
        for i in range(counts[name]):
            paths.append(f"/data/{name}/{name}_{i:03d}.jpg")
            labels.append(label)
    return ImageIndex(root="/data", layout="class folders", classes=classes, paths=paths, labels=labels)


def _split_counts(index: ImageIndex) -> dict[str, Counter]:
    out: dict[str, Counter] = {name: Counter() for name in index.classes}
    for y, split in zip(index.labels, index.splits):
        out[index.classes[y]][split] += 1
    return out


def test_split_same_seed_same_split():
    a = stratified_split(_synthetic_index({"A": 20, "B": 20, "C": 20}), 0.2, 0.2, seed=7)
    b = stratified_split(_synthetic_index({"A": 20, "B": 20, "C": 20}), 0.2, 0.2, seed=7)
    assert a.splits == b.splits
    assert len(a.splits) == 60
    assert set(a.splits) == {"train", "val", "test"}


def test_split_different_seed_different_split():
    a = stratified_split(_synthetic_index({"A": 20, "B": 20, "C": 20}), 0.2, 0.2, seed=1)
    b = stratified_split(_synthetic_index({"A": 20, "B": 20, "C": 20}), 0.2, 0.2, seed=2)
    assert a.splits != b.splits
    # ... but the per-class proportions are the same.
    assert _split_counts(a) == _split_counts(b)


def test_split_is_stratified_with_exact_counts():
    index = stratified_split(_synthetic_index({"A": 20, "B": 20, "C": 20, "D": 20}), 0.2, 0.2, seed=0)
    for name, counts in _split_counts(index).items():
        assert counts == Counter({"train": 12, "val": 4, "test": 4}), name


def test_split_proportions_close_for_uneven_classes():
    index = stratified_split(_synthetic_index({"A": 100, "B": 33, "C": 7}), 0.15, 0.1, seed=3)
    counts = _split_counts(index)
    for name, n in {"A": 100, "B": 33, "C": 7}.items():
        c = counts[name]
        assert sum(c.values()) == n
        assert abs(c["val"] - 0.15 * n) <= 1, (name, c)
        assert abs(c["test"] - 0.1 * n) <= 1, (name, c)
        assert c["train"] >= 1


def test_split_tiny_classes_keep_a_training_image():
    index = stratified_split(_synthetic_index({"A": 1, "B": 2, "C": 3, "D": 20}), 0.45, 0.45, seed=0)
    counts = _split_counts(index)
    for name in ["A", "B", "C", "D"]:
        assert counts[name]["train"] >= 1, (name, counts[name])
    assert counts["A"] == Counter({"train": 1})
    assert sum(counts["B"].values()) == 2
    assert sum(counts["C"].values()) == 3
    assert all(s in {"train", "val", "test"} for s in index.splits)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("fractions", [(0.2, 0.2), (0.5, 0.4), (0.0, 0.9), (0.9, 0.0)])
def test_split_small_classes_always_have_training_data(n, fractions):
    index = stratified_split(_synthetic_index({"A": n, "B": 10}), *fractions, seed=5)
    counts = _split_counts(index)
    assert counts["A"]["train"] >= 1
    assert sum(counts["A"].values()) == n


def test_split_zero_fractions_all_train():
    index = stratified_split(_synthetic_index({"A": 5, "B": 5}), 0.0, 0.0, seed=0)
    assert index.splits == ["train"] * 10


def test_adding_a_class_does_not_move_existing_images():
    before = stratified_split(_synthetic_index({"B": 20, "D": 15}), 0.2, 0.2, seed=11)
    # "A" sorts first, so the labels of B and D shift; their splits must not.
    after = stratified_split(_synthetic_index({"A": 12, "B": 20, "D": 15}), 0.2, 0.2, seed=11)
    before_map = dict(zip(before.paths, before.splits))
    after_map = dict(zip(after.paths, after.splits))
    assert {p: after_map[p] for p in before_map} == before_map


def test_split_independent_of_path_order_in_index():
    index = _synthetic_index({"A": 20, "B": 20})
    reference = dict(zip(index.paths, stratified_split(index, 0.2, 0.2, seed=4).splits))
    order = list(reversed(range(len(index.paths))))
    shuffled = ImageIndex(
        root=index.root,
        layout=index.layout,
        classes=index.classes,
        paths=[index.paths[i] for i in order],
        labels=[index.labels[i] for i in order],
    )
    result = dict(zip(shuffled.paths, stratified_split(shuffled, 0.2, 0.2, seed=4).splits))
    assert result == reference


def test_split_on_real_listing_and_records(tmp_path):
    root = _make_class_tree(tmp_path / "data", {"A": 5, "B": 5})
    index = stratified_split(list_images(root), 0.2, 0.2, seed=0)
    records = index.records()
    assert len(records) == 10
    assert set(records[0]) == {"path", "label", "split"}
    assert [r["split"] for r in records] == index.splits
    assert [r["label"] for r in records] == index.labels


def test_records_without_split_default_to_train():
    index = _synthetic_index({"A": 2, "B": 1})
    assert [r["split"] for r in index.records()] == ["train"] * 3


# --------------------------------------------------------------------------- decode_image


def test_decode_valid_jpeg_and_png():
    for fmt in ["JPEG", "PNG"]:
        image = decode_image(_encode(Image.new("RGB", (10, 6), (0, 128, 255)), fmt))
        assert image.mode == "RGB"
        assert image.size == (10, 6)
        pixel = np.asarray(image)[3, 5]
        assert np.allclose(pixel, (0, 128, 255), atol=4 if fmt == "JPEG" else 0), (fmt, pixel)


def test_decode_empty_bytes():
    with pytest.raises(ValueError, match="empty"):
        decode_image(b"")


def test_decode_random_bytes():
    data = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    with pytest.raises(ValueError, match="not an image"):
        decode_image(data)


def test_decode_text_file():
    with pytest.raises(ValueError, match="not an image"):
        decode_image(b"hello, I am a text file\n" * 10)


def test_decode_truncated_jpeg():
    data = _noise_jpeg()
    decode_image(data)  # the whole file is fine
    with pytest.raises(ValueError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


def test_decode_truncated_png():
    data = _encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


def test_decode_refuses_decompression_bomb_header():
    # 100k x 100k pixels claimed by a ~60-byte file: PIL's own bomb check fires on open.
    with pytest.raises(ValueError, match="decompression bomb"):
        decode_image(_png_header_only(100_000, 100_000))


def test_decode_refuses_image_above_max_pixels_default():
    # 7000 x 7000 = 49M pixels: under PIL's limit, over the module's 40M limit.
    with pytest.raises(ValueError, match=r"too large \(7000x7000"):
        decode_image(_png_header_only(7000, 7000))


def test_decode_respects_lower_max_pixels():
    data = _encode(Image.new("RGB", (20, 20), (1, 2, 3)), "PNG")
    assert decode_image(data, max_pixels=400).size == (20, 20)
    with pytest.raises(ValueError, match=r"too large \(20x20"):
        decode_image(data, max_pixels=399)


def test_decode_cmyk_jpeg():
    data = _encode(Image.new("CMYK", (4, 4), (0, 0, 0, 0)), "JPEG", quality=95)
    image = decode_image(data)
    assert image.mode == "RGB"
    assert np.asarray(image).dtype == np.uint8
    assert np.allclose(np.asarray(image), 255, atol=3)  # no ink -> white


def test_decode_grayscale_png():
    image = decode_image(_encode(Image.new("L", (4, 4), 100), "PNG"))
    assert image.mode == "RGB"
    assert np.all(np.asarray(image) == 100)


def test_decode_rgba_composited_on_white():
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (10, 20, 30, 0))  # fully transparent -> white
    rgba.putpixel((1, 0), (10, 20, 30, 255))  # opaque -> unchanged
    image = decode_image(_encode(rgba, "PNG"))
    assert image.mode == "RGB"
    pixels = np.asarray(image)
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[0, 1]) == (10, 20, 30)


def test_rgba_half_transparent_is_blended_with_white():
    rgba = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    pixel = np.asarray(to_rgb(rgba))[0, 0]
    assert np.all(np.abs(pixel.astype(int) - 127) <= 1), pixel


def test_decode_la_composited_on_white():
    la = Image.new("LA", (1, 1), (0, 0))
    assert tuple(np.asarray(to_rgb(la))[0, 0]) == (255, 255, 255)


def test_decode_palette_png():
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * (256 * 3 - 6))
    out = decode_image(_encode(image, "PNG"))
    assert out.mode == "RGB"
    assert tuple(np.asarray(out)[0, 0]) == (200, 100, 50)


def test_decode_palette_with_transparency_composited_on_white():
    image = Image.new("P", (2, 1), 0)
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    image.putpixel((1, 0), 1)
    data = _encode(image, "GIF", transparency=0)
    out = np.asarray(decode_image(data))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (200, 100, 50)


def test_decode_16_bit_grayscale_png():
    array = np.full((4, 4), 1000, dtype=np.uint16)
    array[0, 0] = 60000
    source = Image.fromarray(array)
    data = _encode(source, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really a 16-bit image
    out = decode_image(data)
    assert out.mode == "RGB"
    pixels = np.asarray(out)
    assert pixels.dtype == np.uint8 and pixels.shape == (4, 4, 3)
    # Scaled by the 16-bit range (65535 -> 255), not by this image's own brightest pixel.
    assert tuple(pixels[0, 0]) == (233, 233, 233)  # round(60000 / 257)
    assert tuple(pixels[1, 1]) == (4, 4, 4)  # round(1000 / 257)


def test_decode_applies_exif_orientation():
    """A phone photo stored sideways with an orientation tag comes out upright."""
    stored = Image.new("RGB", (40, 20), (255, 0, 0))  # wide as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue()).size == (20, 40)


def test_to_rgb_all_black_16_bit_does_not_divide_by_zero():
    out = to_rgb(Image.fromarray(np.zeros((2, 2), dtype=np.uint16)))
    assert out.mode == "RGB"
    assert np.all(np.asarray(out) == 0)


@pytest.mark.parametrize("mode", ["1", "I", "F", "YCbCr", "PA", "RGBX"])
def test_to_rgb_other_modes_come_out_rgb(mode):
    out = to_rgb(Image.new(mode, (3, 2)))
    assert out.mode == "RGB"
    assert np.asarray(out).shape == (2, 3, 3)


# --------------------------------------------------------------------------- preprocess_images


def test_preprocess_shape_dtype_and_normalisation():
    prep = Preprocessing(image_size=16)
    color = (255, 128, 0)
    images = [Image.new("RGB", (16, 16), color), Image.new("RGB", (40, 30), color)]
    batch = preprocess_images(images, prep)
    assert batch.shape == (2, 3, 16, 16)
    assert batch.dtype == np.float32
    assert batch.flags["C_CONTIGUOUS"]
    # By hand: (value / 255 - mean) / std per channel.
    expected = [
        (255 / 255 - 0.485) / 0.229,  # 2.2489...
        (128 / 255 - 0.456) / 0.224,  # 0.2052...
        (0 / 255 - 0.406) / 0.225,  # -1.8044...
    ]
    assert expected[0] == pytest.approx(2.248908, abs=1e-5)
    for channel in range(3):
        assert np.allclose(batch[:, channel], expected[channel], atol=1e-5), channel


def test_preprocess_custom_mean_std_and_channel_order():
    prep = Preprocessing(image_size=4, mean=(0.0, 0.5, 1.0), std=(1.0, 0.5, 0.25))
    image = Image.new("RGB", (4, 4), (51, 102, 255))  # 0.2, 0.4, 1.0
    batch = preprocess_images([image], prep)
    assert batch[0, 0, 0, 0] == pytest.approx(0.2, abs=1e-6)
    assert batch[0, 1, 0, 0] == pytest.approx(-0.2, abs=1e-6)
    assert batch[0, 2, 0, 0] == pytest.approx(0.0, abs=1e-6)


def test_preprocess_keeps_spatial_layout():
    # Left half red, right half blue: channel 0 is high on the left, channel 2 on the right.
    array = np.zeros((8, 8, 3), dtype=np.uint8)
    array[:, :4, 0] = 255
    array[:, 4:, 2] = 255
    batch = preprocess_images([Image.fromarray(array)], Preprocessing(image_size=8))
    assert batch[0, 0, 3, 0] > batch[0, 0, 3, 7]
    assert batch[0, 2, 3, 7] > batch[0, 2, 3, 0]


def test_preprocess_decoded_jpeg_larger_than_target():
    data = _encode(Image.new("RGB", (300, 200), (10, 200, 30)), "JPEG", quality=95)
    batch = preprocess_images([decode_image(data)], Preprocessing(image_size=32))
    assert batch.shape == (1, 3, 32, 32)
    expected_g = (200 / 255 - 0.456) / 0.224
    assert np.allclose(batch[0, 1], expected_g, atol=0.05)


def test_preprocess_empty_input():
    batch = preprocess_images([], Preprocessing(image_size=8))
    assert batch.shape == (0, 3, 8, 8)
    assert batch.dtype == np.float32


def test_preprocessing_dict_round_trip():
    prep = Preprocessing(image_size=96, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    assert Preprocessing.from_dict(prep.to_dict()) == prep


# --------------------------------------------------------------------------- decode_batch


def test_decode_batch_reports_bad_files(tmp_path):
    good = _save(tmp_path / "good.png", color=(255, 255, 255))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(_noise_jpeg()[:400])
    text = tmp_path / "notes.jpg"
    text.write_text("definitely not a jpeg")
    missing = tmp_path / "missing.png"
    paths = [str(good), str(corrupt), str(text), str(missing)]
    batch = {"path": np.asarray(paths), "label": np.asarray([0, 1, 2, 3])}
    prep = Preprocessing(image_size=8)
    out = decode_batch(batch, prep, max_bytes=1 << 20)
    assert list(out["path"]) == paths
    assert list(out["label"]) == [0, 1, 2, 3]
    assert out["image"].shape == (4, 3, 8, 8)
    assert out["image"].dtype == np.float32
    errors = list(out["error"])
    assert len(errors) == 4
    assert errors[0] == ""
    assert all(errors[1:]), errors
    assert "corrupt or truncated" in errors[1]
    assert "not an image" in errors[2]
    assert "No such file" in errors[3] or "missing.png" in errors[3]
    # The good white image is normalised; the failed rows hold a placeholder of the right shape.
    assert np.allclose(out["image"][0, 0], (1 - 0.485) / 0.229, atol=1e-5)


def test_decode_batch_file_larger_than_max_bytes(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(_encode(Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG"))
    small = _save(tmp_path / "small.png", size=(2, 2))
    size = big.stat().st_size
    assert small.stat().st_size < 2048 < size
    out = decode_batch({"path": np.asarray([str(big), str(small)])}, Preprocessing(image_size=4), max_bytes=2048)
    assert "larger than the 2048-byte limit" in out["error"][0]
    assert out["error"][1] == ""
    # Exactly at the limit is accepted.
    out = decode_batch({"path": np.asarray([str(big)])}, Preprocessing(image_size=4), max_bytes=size)
    assert out["error"][0] == ""


# --------------------------------------------------------------------------- summarize_errors


def test_summarize_errors_lists_bad_paths_and_counts():
    paths = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    errors = ["", "empty file", "", "not an image (unrecognised format)"]
    report = summarize_errors(paths, errors)
    assert report.splitlines()[0] == "skipped 2 unreadable file(s):"
    assert "b.jpg: empty file" in report
    assert "d.jpg: not an image (unrecognised format)" in report
    assert "a.jpg" not in report and "c.jpg" not in report


def test_summarize_errors_limit():
    paths = [f"{i}.jpg" for i in range(15)]
    report = summarize_errors(paths, ["bad"] * 15, limit=10)
    lines = report.splitlines()
    assert lines[0] == "skipped 15 unreadable file(s):"
    assert len(lines) == 1 + 10 + 1
    assert "and 5 more" in lines[-1]
    assert "14.jpg" not in report


def test_summarize_errors_none():
    assert summarize_errors(["a.jpg"], [""]) == "no unreadable files"
    assert summarize_errors([], []) == "no unreadable files"


# --------------------------------------------------------------------------- image_dataset (Ray)


# ray_local: the session-wide local Ray from conftest.py


def test_image_dataset_end_to_end(ray_local, tmp_path):
    root = _make_class_tree(tmp_path / "data", {"A": 3, "B": 3})
    corrupt = root / "B" / "b_broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    index = stratified_split(list_images(root), 0.2, 0.2, seed=0)
    assert len(index) == 7
    prep = Preprocessing(image_size=16)
    rows = image_dataset(index, prep, batch_size=4).take_all()
    assert len(rows) == 7
    for row in rows:
        assert set(row) == {"path", "label", "split", "image", "error"}
        assert np.asarray(row["image"]).shape == (3, 16, 16)
        assert row["split"] in {"train", "val", "test"}
    assert sorted(str(r["path"]) for r in rows) == sorted(index.paths)
    bad = [str(r["path"]) for r in rows if r["error"]]
    assert bad == [str(corrupt.resolve())]
    by_path = {str(r["path"]): r for r in rows}
    for path, label, split in zip(index.paths, index.labels, index.splits):
        assert int(by_path[path]["label"]) == label
        assert by_path[path]["split"] == split


def test_several_sources_merge_by_class_name_and_split_each_on_its_own(tmp_path):
    from asl_platform.data.listing import list_sources

    def folder(name: str, counts: dict[str, int]) -> str:
        for label, count in counts.items():
            (tmp_path / name / label).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8)).save(tmp_path / name / label / f"{i}.png")
        return str(tmp_path / name)

    kaggle = folder("kaggle", {"A": 20, "B": 20, "nothing": 20})
    mine = folder("mine", {"B": 10, "A": 10, "C": 10})  # another class order, a class the first lacks
    index, sources = list_sources([kaggle, mine], None, 42, 0.2, 0.2)
    assert index.classes == ["A", "B", "C", "nothing"]
    assert [s["images"] for s in sources] == [60, 30]
    assert sources[1]["split"] == {"train": 18, "val": 6, "test": 6}
    for source, per_class in ((kaggle, 20), (mine, 10)):
        for label in ("A", "B"):
            rows = [i for i, p in enumerate(index.paths) if p.startswith(source) and f"/{label}/" in p]
            assert len(rows) == per_class
            assert {index.classes[index.labels[i]] for i in rows} == {label}  # matched by name, not position
            assert [index.splits[i] for i in rows].count("test") == round(per_class * 0.2)  # each source in test
    # A folder split alone is split the same way when it is one of several.
    alone, _ = list_sources([mine], None, 42, 0.2, 0.2)
    together = dict(zip(index.paths, index.splits))
    assert all(together[p] == s for p, s in zip(alone.paths, alone.splits))
    # Each file knows its folder, also in a split's subset (what balancing the folders in training reads).
    assert index.sources == [0] * 60 + [1] * 30
    test = index.subset("test")
    assert test.sources == [0 if p.startswith(kaggle) else 1 for p in test.paths] and set(test.sources) == {0, 1}


def test_each_training_folder_weighs_the_same_when_balanced(tmp_path):
    """data.balance_sources: a row's weight is 1 / the rows of its folder in that split, so both folders
    weigh the same however many images each has; off, or with one folder, every row counts once."""
    from asl_platform.data.listing import ImageIndex
    from asl_platform.stages.features import FeatureTable
    from asl_platform.stages.ingest import PreparedData

    n = 8
    index = ImageIndex(root="", layout="", classes=["A", "B"], paths=[f"{i}.png" for i in range(n)],
                       labels=[0, 1] * 4, splits=["train"] * 7 + ["val"], sources=[0, 0, 0, 0, 0, 1, 1, 1])
    table = FeatureTable(np.asarray(index.paths), np.asarray(index.labels), np.zeros((n, 2), np.float32),
                         np.asarray([""] * 4 + ["unreadable"] + [""] * 3))  # one bad file: not a row
    sources = [{"root": "one"}, {"root": "many"}]
    prepared = PreparedData("", index, {}, table=table, sources=sources, balance_sources=True)
    weights = prepared.source_weights("train")
    assert weights.tolist() == [0.25] * 4 + [0.5] * 2  # 4 readable rows of folder 0, 2 of folder 1 in train
    assert len(weights) == len(prepared.features("train")[1])
    assert PreparedData("", index, {}, table=table, sources=sources, balance_sources=False).source_weights("train") is None
    assert PreparedData("", index, {}, table=table, balance_sources=True).source_weights("train") is None


def test_data_root_takes_one_folder_or_a_list_of_distinct_ones():
    from asl_platform.config import ConfigError, load_config

    assert load_config(None, ["data.root=[a, b]"]).data.roots == ["a", "b"]
    assert load_config(None, ["data.root=[a]"]).data.root == "a"
    assert load_config(None, ["data.root=a"]).data.roots == ["a"]
    with pytest.raises(ConfigError, match="listed twice"):
        load_config(None, ["data.root=[a, a]"])
    with pytest.raises(ConfigError, match="empty list"):
        load_config(None, ["data.root=[]"])

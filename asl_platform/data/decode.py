"""Bytes to model input: decode an image safely (size limits, EXIF orientation, any colour mode to
RGB), augment it for training, resize and normalise it as the backbone wants. Everything that serves a
model imports this module alone: no filesystem, no Ray, no pyarrow."""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from asl_platform.limits import MAX_IMAGE_PIXELS


class ImageTooLargeError(ValueError):
    """An image whose pixel count is over the limit, or a decompression bomb: refused before decoding."""



@dataclass(frozen=True)
class Preprocessing:
    """How a backbone wants its input: square resize, then per-channel normalisation."""

    image_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        return cls(int(values["image_size"]), tuple(values["mean"]), tuple(values["std"]))



def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Decode bytes to an upright RGB image; raise ValueError with a short reason for anything unusable.

    ``draft_size`` lets JPEG decode at a reduced scale when the image is much larger than needed.
    """
    if not data:
        raise ValueError("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(f"image too large ({width}x{height} pixels, limit {max_pixels})")
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            image = ImageOps.exif_transpose(image)  # phone photos: apply the orientation tag
        except UnidentifiedImageError:
            raise ValueError("not an image (unrecognised format)") from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ImageTooLargeError(f"refused as a decompression bomb: {exc}") from None
        except (OSError, SyntaxError) as exc:  # truncated or corrupt data
            raise ValueError(f"corrupt or truncated image: {exc}") from None
    return to_rgb(image)



def oriented_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image as ``decode_image`` shows it (EXIF rotation applied),
    from its header only; a decode at reduced (draft) scale is smaller than this."""
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    orientation = image.getexif().get(0x0112, 1)  # 5-8: rotated a quarter turn
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)



def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode (CMYK, 16-bit, palette, alpha) to 8-bit RGB; alpha is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: full range 0..65535 -> 0..255
        array = np.asarray(image, dtype=np.float32)
        image = Image.fromarray((array / 257.0).round().clip(0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image



# The ImageNet mean colour: what a small rotation reveals at the corners (no black wedges).
_FILL = (124, 116, 104)



@functools.lru_cache(maxsize=8)
def augmentation(image_size: int) -> Callable[[Image.Image], Image.Image]:
    """Training augmentation that keeps a letter a letter (torchvision.transforms.v2): a random
    resized crop that keeps most of the hand in view, a small rotation and colour jitter. No flips:
    a mirrored hand can read as another letter or as the other hand's sign. Randomness comes from
    torch's generator, so each epoch (and each Ray Data task) draws new variants."""
    from torchvision.transforms import InterpolationMode, v2

    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=(0.75, 1.0), ratio=(0.85, 1.18), antialias=True),
        v2.RandomRotation(10, interpolation=InterpolationMode.BILINEAR, fill=_FILL),
        v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3),
    ])



def resize_for_model(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """RGB image -> uint8 HWC array at the backbone's input size (what serving sends to the model:
    4x smaller than floats)."""
    size = (prep.image_size, prep.image_size)
    return np.asarray(image if image.size == size else image.resize(size, Image.BILINEAR))



def normalize_batch(batch: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 NHWC batch -> normalised float32 NCHW, as the backbone expects.

    One copy to float32 NCHW, then torchvision.transforms.v2's ``normalize`` in place, with the mean
    and std in pixel units (x 255): the [0, 1] scaling folds into it, one pass fewer over the batch."""
    import torch
    from torchvision.transforms.v2 import functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
    tensor = tensor.to(torch.float32, memory_format=torch.contiguous_format)
    return F.normalize(tensor, [255.0 * m for m in prep.mean], [255.0 * s for s in prep.std], inplace=True).numpy()



def preprocess_images(images: Iterable[Image.Image], prep: Preprocessing) -> np.ndarray:
    """RGB images -> normalised float32 NCHW batch."""
    arrays = [resize_for_model(image, prep) for image in images]
    if not arrays:
        return np.zeros((0, 3, prep.image_size, prep.image_size), dtype=np.float32)
    return normalize_batch(np.stack(arrays), prep)



def error_text(exc: Exception) -> str:
    """Our own ValueErrors already read well; anything else (a PIL plugin, I/O) keeps its type name."""
    return str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"

"""Input limits shared by ingest, training, serving and batch inference (one place for each number)."""

from __future__ import annotations

# Above this many pixels PIL warns of a decompression bomb; we treat the warning as an error.
MAX_IMAGE_PIXELS = 40_000_000
# Larger files are skipped as unreadable (a 200x200 JPEG is ~10 KB; a phone photo a few MB).
MAX_IMAGE_BYTES = 20 << 20

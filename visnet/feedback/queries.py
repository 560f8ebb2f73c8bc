"""Search query crops kept for feedback triplets: INDEX/queries/<content id>.jpg, capped, pruned.

A "more like this" list has its anchor product's image for a query; a search has only the
shopper's photo. So the service keeps the crop it searched with (`store_query_crop`), named by
its content: the same crop searched twice is one file, and its id goes back to the page in the
search answer, which echoes it in the list's impression (``query_image``). `visnet triplets
feedback` reads the crop back by that id (`query_crop_path`). The crop is re-encoded (no EXIF,
nothing but pixels) and shrunk to `MAX_SIDE`, so a file is at most a few hundred kilobytes; a
crop searched again is touched, and `prune_query_crops` removes crops unused for longer than an
age, oldest first beyond a total size. Prune with an age longer than a review-and-train cycle:
a triplet whose crop is gone is skipped (and counted) when triplets are made.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Collection
from pathlib import Path

from PIL import Image

from visnet.io import atomic_path, make_folders

__all__ = [
    "CROP_ID_PATTERN",
    "MAX_SIDE",
    "QUERIES",
    "crop_id",
    "prune_query_crops",
    "query_crop_path",
    "store_query_crop",
]

log = logging.getLogger(__name__)

QUERIES = "queries"  # the index folder's subfolder of search crops
CROP_ID_PATTERN = r"^[0-9a-f]{32}$"
MAX_SIDE = 512  # the longest side a stored crop keeps (the model looks at 224-ish pixels)
JPEG_QUALITY = 90


def crop_id(image: Image.Image) -> str:
    """The content id of an RGB image: its size and pixels hashed (the encoder plays no part)."""
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.convert("RGB").tobytes())
    return digest.hexdigest()[:32]


def query_crop_path(index_dir: Path | str, crop: str) -> Path:
    """INDEX/queries/<crop>.jpg; a `crop` that is not a content id raises ValueError."""
    if not isinstance(crop, str) or not re.fullmatch(CROP_ID_PATTERN, crop):
        raise ValueError(f"query crop id must match {CROP_ID_PATTERN}; got {crop!r}")
    return Path(index_dir) / QUERIES / f"{crop}.jpg"


def store_query_crop(index_dir: Path | str, image: Image.Image, max_side: int = MAX_SIDE) -> str:
    """Keep the crop a search used (shrunk to `max_side`, JPEG, durable); returns its id."""
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1; got {max_side}")
    kept = image.convert("RGB")
    if max(kept.size) > max_side:
        kept.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    crop = crop_id(kept)
    path = query_crop_path(index_dir, crop)
    try:
        os.utime(path)  # searched again: pruning counts its age from now
        return crop
    except FileNotFoundError:
        pass
    make_folders(path.parent)
    with atomic_path(path) as tmp:
        kept.save(tmp, format="JPEG", quality=JPEG_QUALITY)
    return crop


def prune_query_crops(
    index_dir: Path | str,
    max_age_s: float,
    max_total_bytes: int | None = None,
    keep: Collection[str] = (),
    now: float | None = None,
) -> dict[str, int]:
    """Remove crops unused for more than `max_age_s`, then the oldest beyond `max_total_bytes`;
    crops whose ids are in `keep` (say, those a review queue still names) stay. Returns counts."""
    folder = Path(index_dir) / QUERIES
    if not folder.is_dir():
        return {"removed": 0, "kept": 0, "bytes": 0}
    now = time.time() if now is None else now
    files = []
    for path in folder.glob("*.jpg"):
        try:
            stat = path.stat()
        except FileNotFoundError:  # removed meanwhile
            continue
        files.append((stat.st_mtime, stat.st_size, path))
    files.sort(reverse=True)  # newest first: the oldest are beyond the size cap
    removed, total, kept = 0, 0, 0
    for mtime, size, path in files:
        old = now - mtime > max_age_s
        over = max_total_bytes is not None and total + size > max_total_bytes
        if (old or over) and path.stem not in keep:
            path.unlink(missing_ok=True)
            removed += 1
            continue
        total, kept = total + size, kept + 1
    if removed:
        log.info("query crops: removed %d, kept %d (%d bytes)", removed, kept, total)
    return {"removed": removed, "kept": kept, "bytes": total}

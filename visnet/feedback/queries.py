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

The service keeps crops through a `QueryCropWriter`: a search shrinks and hashes its crop (the
id is the hash of the shrunk pixels, so it needs the shrink; both take milliseconds), and one
background thread encodes, writes durably (two fsyncs) and prunes, so no search waits for the
disk. When the writer is that far behind (its queue full), a crop is dropped, not waited for.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

from PIL import Image

from visnet.io import atomic_path, make_folders

__all__ = [
    "CROP_ID_PATTERN",
    "MAX_SIDE",
    "QUERIES",
    "QueryCropWriter",
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


def shrink_crop(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """The crop as it is kept: an RGB copy at most `max_side` a side (its id is `crop_id`)."""
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1; got {max_side}")
    kept = image.convert("RGB")
    if max(kept.size) > max_side:
        kept.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return kept


def write_query_crop(index_dir: Path | str, crop: str, kept: Image.Image) -> bool:
    """Write a shrunk crop under its id (JPEG, durable), or touch it when it is there (searched
    again: pruning counts its age from now); True when it was written."""
    path = query_crop_path(index_dir, crop)
    try:
        os.utime(path)
        return False
    except FileNotFoundError:
        pass
    make_folders(path.parent)
    with atomic_path(path) as tmp:
        kept.save(tmp, format="JPEG", quality=JPEG_QUALITY)
    return True


def store_query_crop(index_dir: Path | str, image: Image.Image, max_side: int = MAX_SIDE) -> str:
    """Keep the crop a search used (shrunk to `max_side`, JPEG, durable); returns its id."""
    kept = shrink_crop(image, max_side)
    crop = crop_id(kept)
    write_query_crop(index_dir, crop, kept)
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


_PRUNE, _STOP = "prune", "stop"


class QueryCropWriter:
    """Keeps search crops from one background thread (see the module docstring).

    `keep(image)` shrinks and hashes on the caller's thread and returns the id, or None when
    the queue already holds `queue_size` crops (the crop is dropped). The thread writes each
    crop, prunes the folder (`prune_query_crops`) when it starts and after every `prune_every`
    crops written, and stops after what was queued before `close`. `count(outcome)` hears each
    crop's fate: ``written``, ``touched`` (there already), ``dropped`` or ``failed``.
    """

    def __init__(
        self,
        index_dir: Path | str,
        max_age_s: float,
        max_total_bytes: int | None = None,
        queue_size: int = 64,
        prune_every: int = 1000,
        count: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        if queue_size < 1 or prune_every < 1:
            raise ValueError(f"need queue_size, prune_every >= 1; got {queue_size}, {prune_every}")
        self.index_dir, self.max_age_s, self.max_total_bytes = index_dir, max_age_s, max_total_bytes
        self.prune_every, self.count = prune_every, count
        self._queue: queue.Queue[tuple[str, Image.Image] | str] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._run, name="query-crops", daemon=True)
        self._thread.start()
        self._queue.put(_PRUNE)

    def keep(self, image: Image.Image) -> str | None:
        """The id of the crop this search used, to be written soon; None when it is dropped."""
        kept = shrink_crop(image)
        crop = crop_id(kept)
        try:
            self._queue.put_nowait((crop, kept))
        except queue.Full:
            self.count("dropped")
            return None
        return crop

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the thread (waiting at most `timeout` seconds)."""
        if self._thread.is_alive():
            self._queue.put(_STOP, timeout=timeout)
            self._thread.join(timeout)

    def _run(self) -> None:
        written = 0
        while True:
            job = self._queue.get()
            if job == _STOP:
                return
            if isinstance(job, str):  # _PRUNE
                self._prune()
                continue
            crop, kept = job
            try:
                fresh = write_query_crop(self.index_dir, crop, kept)
            except (OSError, ValueError):
                log.exception("could not keep search crop %s under %s", crop, self.index_dir)
                self.count("failed")
                continue
            self.count("written" if fresh else "touched")
            written += fresh
            if fresh and written % self.prune_every == 0:
                self._prune()

    def _prune(self) -> None:
        try:
            prune_query_crops(self.index_dir, self.max_age_s, self.max_total_bytes)
        except OSError:
            log.exception("could not prune the search crops under %s", self.index_dir)

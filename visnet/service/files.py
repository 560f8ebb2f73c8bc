"""The service's image files: uploads written and removed under the index folder, media types.

Refs map to files in one place, `visnet.index.refs` (the index reads them too): under a fixed
root, or refused."""

from __future__ import annotations

import logging
import re
import shutil
import uuid
from pathlib import Path, PurePosixPath

from PIL import Image

from visnet.index.refs import MEDIA_TYPES, UPLOAD_PREFIX, UPLOADS, resolve_under
from visnet.io import atomic_path
from visnet.service.schemas import PRODUCT_ID_PATTERN

__all__ = ["UPLOAD_PREFIX", "media_type", "remove_uploads", "resolve_under", "save_uploads"]

log = logging.getLogger(__name__)


def media_type(path: Path) -> str:
    return MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")


def _upload_folder(index_dir: Path, product_id: str) -> Path:
    if not re.fullmatch(PRODUCT_ID_PATTERN, product_id):  # no "..", no "/": stays in uploads/
        raise ValueError(f"product id {product_id!r} does not match {PRODUCT_ID_PATTERN}")
    return index_dir / UPLOADS / product_id


def save_uploads(index_dir: Path, product_id: str, images: list[Image.Image]) -> tuple[str, ...]:
    """Write decoded images as fresh JPEG files (no EXIF, upright) and return their refs.

    Re-encoding drops metadata (camera, location) and anything a crafted file carried besides
    pixels. Names are new on every call, so a replaced product's old files stay valid until
    ``remove_uploads`` runs after the index write.
    """
    folder = _upload_folder(index_dir, product_id)
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    refs = []
    for view, image in enumerate(images):
        name = f"{token}-{view}.jpg"
        with atomic_path(folder / name) as tmp:
            image.save(tmp, format="JPEG", quality=92)
        refs.append(f"{UPLOAD_PREFIX}{UPLOADS}/{product_id}/{name}")
    return tuple(refs)


def remove_uploads(index_dir: Path, product_id: str, keep: tuple[str, ...] = ()) -> None:
    """Delete a product's uploaded files except ``keep`` (its current refs)."""
    folder = _upload_folder(index_dir, product_id)
    if not folder.is_dir():
        return
    kept = {PurePosixPath(ref).name for ref in keep if ref.startswith(UPLOAD_PREFIX)}
    if not kept:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for path in folder.iterdir():
        if path.name not in kept:
            path.unlink(missing_ok=True)

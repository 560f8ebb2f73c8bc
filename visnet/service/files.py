"""The service's image files: uploads written and removed under the index folder, media types,
and the litter a killed write leaves, removed at startup.

Refs map to files in one place, `visnet.index.refs` (the index reads them too): under a fixed
root, or refused."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from visnet.index.catalog_index import CatalogIndex
from visnet.index.refs import MEDIA_TYPES, UPLOAD_PREFIX, UPLOADS, resolve_under
from visnet.io import atomic_path, is_temp_name, make_folders
from visnet.service.schemas import PRODUCT_ID_PATTERN

__all__ = [
    "UPLOAD_PREFIX",
    "Litter",
    "media_type",
    "remove_litter",
    "remove_uploads",
    "resolve_under",
    "save_uploads",
]

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
    ``remove_uploads`` runs after the index write. Each file and its folder are fsync'd before
    this returns (so before the write is acknowledged); on an error the files this call wrote,
    and the folder if it made it, are removed.
    """
    folder = _upload_folder(index_dir, product_id)
    made = not folder.is_dir()
    make_folders(folder)
    token = uuid.uuid4().hex[:12]
    names = [f"{token}-{view}.jpg" for view in range(len(images))]
    try:
        for name, image in zip(names, images, strict=True):
            with atomic_path(folder / name) as tmp:
                image.save(tmp, format="JPEG", quality=92)
    except BaseException:
        for name in names:
            (folder / name).unlink(missing_ok=True)
        if made:
            with contextlib.suppress(OSError):  # only if empty: never another write's files
                folder.rmdir()
        raise
    return tuple(f"{UPLOAD_PREFIX}{UPLOADS}/{product_id}/{name}" for name in names)


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


@dataclass(frozen=True)
class Litter:
    """What `remove_litter` removed from an index folder."""

    orphan_folders: int = 0  # upload folders of products the database does not hold
    stale_images: int = 0  # files in held products' folders that no product references
    temp_files: int = 0  # `visnet.io` temporary files of writes killed before their rename

    def __str__(self) -> str:
        return (
            f"{self.orphan_folders} orphan upload folders, {self.stale_images} stale images, "
            f"{self.temp_files} temporary files"
        )


def remove_litter(index: CatalogIndex, before: float) -> Litter:
    """Remove what writes killed midway left in the index folder; never a referenced file.

    Call with the index open (its lock held) and before any write is served: every upload
    folder of a product the database does not hold, every uploaded file that no product's
    refs name (a replaced image, a write killed before its commit), and every temporary file
    older than ``before`` (a Unix time taken before the index opened: newer ones may belong
    to this process's own writes in progress). An uploads tree holding symbolic links (the
    service makes none) is left alone: a ref may reach a file through one.
    """
    temp = _remove_temp_files(index.path, before)
    uploads = index.path / UPLOADS
    if not uploads.is_dir() or uploads.is_symlink():
        return Litter(temp_files=temp)
    if _holds_links(uploads):
        log.warning("%s holds symbolic links; its files are left as they are", uploads)
        return Litter(temp_files=temp)
    referenced = {_normal(ref) for ref in index.image_refs(f"{UPLOAD_PREFIX}{UPLOADS}/")}
    stale = orphans = 0
    for entry in sorted(uploads.iterdir()):
        if entry.is_dir():
            held = entry.name in index
            removed = _remove_unreferenced(entry, index.path, referenced)
            if _remove_if_empty(entry) and not held:
                orphans += 1
            else:  # a held product's folder, or one kept for a file another product names
                stale += removed
        elif not is_temp_name(entry.name) and _relative(entry, index.path) not in referenced:
            entry.unlink()  # a stray file beside the product folders
            stale += 1
    return Litter(orphans, stale, temp)


def _normal(ref: str) -> str:
    """An upload ref as a path relative to the index folder, spelled as `resolve_under` reads it."""
    return PurePosixPath(ref[len(UPLOAD_PREFIX) :].replace("\\", "/")).as_posix()


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _holds_links(folder: Path) -> bool:
    for parent, dirs, names in os.walk(folder):
        if any(os.path.islink(os.path.join(parent, name)) for name in [*dirs, *names]):
            return True
    return False


def _remove_unreferenced(folder: Path, index_dir: Path, referenced: set[str]) -> int:
    """Delete the files under ``folder`` that no ref names (temporary files are not counted:
    `_remove_temp_files` judged them). Returns how many it deleted."""
    removed = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            path = Path(parent, name)
            if is_temp_name(name) or _relative(path, index_dir) in referenced:
                continue
            path.unlink()
            removed += 1
    return removed


def _remove_if_empty(folder: Path) -> bool:
    """Remove ``folder`` and its empty subfolders if no file is left in them; True if it went."""
    for parent, dirs, _ in os.walk(folder, topdown=False):
        for name in dirs:
            with contextlib.suppress(OSError):  # not empty: a kept file lives there
                os.rmdir(os.path.join(parent, name))
    try:
        folder.rmdir()
    except OSError:
        return False
    return True


def _remove_temp_files(index_dir: Path, before: float) -> int:
    """Delete `visnet.io` temporary files under the index folder last changed before ``before``."""
    removed = 0
    for parent, _, names in os.walk(index_dir):
        for name in names:
            path = Path(parent, name)
            try:
                if is_temp_name(name) and path.lstat().st_mtime < before:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # renamed meanwhile by a write of this process
                continue
    return removed

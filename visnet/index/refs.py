"""Product image refs -> files: uploads under the index folder, the rest under the catalog root.

A product's ``images`` are refs, never absolute paths: ``photos/12.jpg`` is relative to the
catalog root (``build.json``'s ``catalog_root``), ``index:uploads/<id>/<name>.jpg`` relative to
the index folder (images uploaded through the service). Every reader (the service's image
route, `visnet index rebuild`) maps them here, so a ref can never name a file outside its root.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

__all__ = [
    "MEDIA_TYPES",
    "UPLOADS",
    "UPLOAD_PREFIX",
    "product_image",
    "recorded_catalog_root",
    "resolve_under",
]

UPLOAD_PREFIX = "index:"  # an image ref relative to the index folder (uploads), not the catalog
UPLOADS = "uploads"  # the index folder's subfolder of uploaded images
BUILD_FILE = "build.json"  # the index folder's build summary, which records the catalog root
MEDIA_TYPES = {  # the image files a ref may name, by suffix
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
}


def resolve_under(root: Path | None, ref: str) -> Path | None:
    """``root/ref`` if it is an existing image file inside ``root`` (symlinks resolved), else None.

    Absolute refs, ``..`` escapes, symlinks pointing out, and other file types are all refused.
    """
    if root is None or not ref or "\x00" in ref:
        return None
    relative = PurePosixPath(ref.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        return None
    base = root.resolve()
    target = (base / relative).resolve()
    if not target.is_relative_to(base) or target.suffix.lower() not in MEDIA_TYPES:
        return None
    return target if target.is_file() else None


def product_image(ref: str, catalog_root: Path | None, index_dir: Path) -> Path | None:
    """A product image ref -> its file: uploads live under the index folder, the rest under the
    catalog root. None when the ref is refused or its file is missing."""
    if ref.startswith(UPLOAD_PREFIX):
        rest = ref[len(UPLOAD_PREFIX) :]
        return resolve_under(index_dir, rest) if rest.startswith(f"{UPLOADS}/") else None
    return resolve_under(catalog_root, ref)


def recorded_catalog_root(index_dir: Path) -> Path | None:
    """The catalog root the index folder's ``build.json`` records; None when it records none."""
    build = index_dir / BUILD_FILE
    root = json.loads(build.read_text()).get("catalog_root") if build.is_file() else None
    if not root:
        return None
    # indexes built from a CSV or JSONL file before 2026-12 recorded the file, whose folder
    # the image refs are relative to
    return Path(root).parent if Path(root).is_file() else Path(root)

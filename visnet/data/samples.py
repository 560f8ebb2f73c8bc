"""Sample photos for the web page's "try one" strip: chosen and copied by `visnet samples`,
listed and served by the service (`GET /v1/samples`, `GET /v1/samples/{name}`).

A samples folder holds image files and, optionally, ``samples.json``: ``{"samples": [{"name",
"title", "credit"}, ...]}`` in the order to show them. Without one, every image file directly in
the folder is listed by name. A folder anyone can fill: drop photos in, and the page offers them.

`write_samples` fills one from a Street2Shop-layout set (a dozen street photos of its test split,
one category after another, preferring photos that show two or three products, so each shows
shop the look) and the real photographs scikit-image and scikit-learn ship.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visnet.index.refs import MEDIA_TYPES, resolve_under
from visnet.io import make_folders, replace_folder, staging_folder, write_json_atomic

__all__ = [
    "MANIFEST",
    "REAL_SAMPLES",
    "SAMPLE_NAME_PATTERN",
    "Sample",
    "list_samples",
    "sample_file",
    "write_samples",
]

log = logging.getLogger(__name__)

MANIFEST = "samples.json"
# a file directly in the folder: no separators, no leading dot (never "." or ".."), an image suffix
SAMPLE_NAME_PATTERN = r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,99}$"
# (package, file, title, credit): real photographs no demo street photo was made from
REAL_SAMPLES = (
    ("scikit-image", "coffee.png", "A cup of coffee", "Rachel Michetti, CC0 (scikit-image)"),
    (
        "scikit-image",
        "astronaut.png",
        "Astronaut Eileen Collins",
        "NASA, public domain (scikit-image)",
    ),
    ("scikit-image", "rocket.jpg", "A rocket launch", "SpaceX, public domain (scikit-image)"),
    (
        "scikit-learn",
        "china.jpg",
        "A temple in China",
        "danielbuechele on Flickr, CC BY 2.0 (scikit-learn)",
    ),
)
# a street photo's own product must fill at least this share of it to be a clear sample
MIN_BOX_SHARE = 0.04


@dataclass(frozen=True)
class Sample:
    name: str  # the file name in the samples folder
    title: str
    credit: str


def _valid_name(name: str) -> bool:
    return bool(re.fullmatch(SAMPLE_NAME_PATTERN, name)) and (
        Path(name).suffix.lower() in MEDIA_TYPES
    )


def sample_file(folder: Path | None, name: str) -> Path | None:
    """The image file ``name`` directly in ``folder``; None for any other name (a path, a
    hidden or non-image file, a link out of the folder, a missing file)."""
    if folder is None or not _valid_name(name):
        return None
    return resolve_under(folder, name)


def list_samples(folder: Path | None) -> list[Sample]:
    """The samples of ``folder`` in the manifest's order (entries whose file is missing are left
    out), else every image file in it by name; an empty list when there is no such folder."""
    if folder is None or not folder.is_dir():
        return []
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            entries = json.loads(manifest.read_text(encoding="utf-8")).get("samples", [])
        except (OSError, ValueError, AttributeError):
            log.warning("%s is not a samples manifest; listing the folder instead", manifest)
        else:
            return [s for s in map(_entry, entries) if s and sample_file(folder, s.name)]
    names = sorted(p.name for p in folder.iterdir() if sample_file(folder, p.name))
    return [Sample(name, Path(name).stem.replace("_", " ").replace("-", " "), "") for name in names]


def _entry(entry: Any) -> Sample | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        return None
    title, credit = entry.get("title"), entry.get("credit")
    return Sample(
        entry["name"],
        title if isinstance(title, str) else entry["name"],
        credit if isinstance(credit, str) else "",
    )


# ---------------------------------------------------------------------------------------- write


def write_samples(
    data: Path | str | None, out: Path | str, count: int = 12, real: bool = True
) -> list[Sample]:
    """Fill ``out`` (replaced whole, built in ``OUT.partial``) with ``count`` street photos of the
    test split of the Street2Shop-layout set ``data`` (None: none) and, with ``real``, the real
    photographs of `REAL_SAMPLES` that are installed; write its manifest; return the samples."""
    out = Path(out)
    staging = make_folders(staging_folder(out))
    chosen: list[Sample] = []
    if data is not None and count > 0:
        for path, sample in _street_samples(Path(data), count):
            shutil.copyfile(path, staging / sample.name)
            chosen.append(sample)
    if real:
        for path, sample in _real_samples():
            shutil.copyfile(path, staging / sample.name)
            chosen.append(sample)
    if not chosen:
        shutil.rmtree(staging, ignore_errors=True)
        raise ValueError("no sample photos found: no test street photos and no real photographs")
    entries = [{"name": s.name, "title": s.title, "credit": s.credit} for s in chosen]
    write_json_atomic(staging / MANIFEST, {"samples": entries})
    replace_folder(staging, out)
    return chosen


def _street_samples(data: Path, count: int) -> list[tuple[Path, Sample]]:
    """``count`` test street photos, one category after another (in name order, evenly spaced
    when there are more categories than photos), each category's best first: two or three
    products in view, then the larger own product."""
    from PIL import Image

    from visnet.data.street2shop import read_set

    found = read_set(data, check_boxes=False)
    licences = " (licences: its LICENSES.md)" if (data / "LICENSES.md").is_file() else ""
    others = found.objects_by_photo(min_visible=0.5)
    by_category: dict[str, list[tuple[tuple[float, ...], Path, Sample]]] = {}
    for pair in found.pairs["test"]:
        path = found.photo_path(pair.photo)
        if path is None:
            continue
        with Image.open(path) as image:
            share = pair.bbox.width * pair.bbox.height / (image.width * image.height)
        if share < MIN_BOX_SHARE:
            continue
        shown = 1 + len(others.get(pair.photo, []))
        rank = (0 if 2 <= shown <= 3 else 1, -share, pair.photo)
        more = f" + {shown - 1} more" if shown > 1 else ""
        slug = re.sub(r"[^A-Za-z0-9_\-]+", "-", pair.category).strip("-")[:40] or "photo"
        sample = Sample(
            f"street-{slug}-{pair.photo}{path.suffix.lower()}",
            f"Street: {pair.category}{more}",
            f"test street photo {pair.photo} of the {data.resolve().name} data set{licences}",
        )
        by_category.setdefault(pair.category, []).append((rank, path, sample))
    queues = [sorted(items, key=lambda item: item[0]) for _, items in sorted(by_category.items())]
    if 0 < count < len(queues):  # fewer photos than categories: evenly spaced categories first
        first = [i * len(queues) // count for i in range(count)]
        queues = [queues[i] for i in first] + [q for i, q in enumerate(queues) if i not in first]
    picked: list[tuple[Path, Sample]] = []
    seen: set[str] = set()
    while len(picked) < count and any(queues):
        for queue in queues:
            while queue and len(picked) < count:
                _, path, sample = queue.pop(0)
                if sample.name not in seen:  # a photo in two pairs: once
                    seen.add(sample.name)
                    picked.append((path, sample))
                    break
    return picked


def _real_samples() -> list[tuple[Path, Sample]]:
    from visnet.data.sources import sample_photo_dirs

    try:
        dirs = sample_photo_dirs()
    except ImportError:  # scikit-image or scikit-learn missing: no real photographs
        return []
    found = []
    for package, name, title, credit in REAL_SAMPLES:
        path = dirs[package] / name
        if path.is_file():
            found.append((path, Sample(name, title, credit)))
    return found

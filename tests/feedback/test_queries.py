"""Stored search crops: content ids, the size cap, clean pixels, pruning by age and size."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from visnet.feedback import prune_query_crops, query_crop_path, store_query_crop


def photo(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_a_crop_is_kept_once_by_content_and_shrunk(tmp_path: Path) -> None:
    big = photo((200, 10, 10), (1200, 600))
    exif = Image.Exif()
    exif[0x010F] = "camera maker"
    big.info["exif"] = exif.tobytes()
    first = store_query_crop(tmp_path, big, max_side=100)
    assert store_query_crop(tmp_path, big.copy(), max_side=100) == first
    path = query_crop_path(tmp_path, first)
    assert path.parent == tmp_path / "queries" and path.is_file()
    with Image.open(path) as kept:
        assert kept.size == (100, 50) and kept.format == "JPEG"
        assert not kept.getexif()
    assert store_query_crop(tmp_path, photo((10, 200, 10))) != first
    assert len(list((tmp_path / "queries").iterdir())) == 2


@pytest.mark.parametrize("crop", ["../../etc/passwd", "ABC", "0" * 31, None])
def test_a_crop_id_cannot_name_another_file(tmp_path: Path, crop: object) -> None:
    with pytest.raises(ValueError, match="query crop id"):
        query_crop_path(tmp_path, crop)  # type: ignore[arg-type]


def test_prune_removes_old_crops_then_the_oldest_beyond_the_size(tmp_path: Path) -> None:
    ids = [store_query_crop(tmp_path, photo((30 * i, 0, 0))) for i in range(4)]
    paths = [query_crop_path(tmp_path, i) for i in ids]
    for age, path in zip((1000, 300, 200, 100), paths, strict=True):
        os.utime(path, (10_000 - age, 10_000 - age))
    found = prune_query_crops(tmp_path, max_age_s=500, keep=(), now=10_000)
    assert found["removed"] == 1 and not paths[0].exists()
    size = paths[3].stat().st_size
    found = prune_query_crops(tmp_path, 500, max_total_bytes=size, keep={ids[1]}, now=10_000)
    assert found == {"removed": 1, "kept": 2, "bytes": size + paths[1].stat().st_size}
    assert [p.exists() for p in paths] == [False, True, False, True]
    store_query_crop(tmp_path, photo((30, 0, 0)))  # searched again: young again
    assert prune_query_crops(tmp_path, 500)["removed"] == 1  # today: only the untouched one
    assert [p.exists() for p in paths] == [False, True, False, False]
    assert prune_query_crops(tmp_path / "nothing", 1) == {"removed": 0, "kept": 0, "bytes": 0}

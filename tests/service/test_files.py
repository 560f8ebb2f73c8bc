"""Upload files: durable writes, nothing left by a failed one, and startup's litter removal
(orphan folders, replaced images, temporary files), also through a real server restart."""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from service_helpers import build_tiny_catalog, running_server, service_settings

from visnet import io as vio
from visnet.index.catalog_index import CatalogIndex
from visnet.index.products import Product
from visnet.service import create_app
from visnet.service.files import Litter, remove_litter, save_uploads

KEY = "files-key-0123456789"
PAST = time.time() - 3600  # a temporary file a killed process left an hour ago


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_tiny_catalog(tmp_path_factory.mktemp("files"))


@pytest.fixture
def index_dir(tiny: tuple[Path, Path], tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny[1], tmp_path / "index"))


@pytest.fixture
def index(index_dir: Path) -> Iterator[CatalogIndex]:
    manifest = json.loads((index_dir / "manifest.json").read_text())
    opened = CatalogIndex.open(index_dir, model_fingerprint=manifest["model_fingerprint"])
    try:
        yield opened
    finally:
        opened.close()


def _image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _touch(path: Path, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"litter")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def _upload(index: CatalogIndex, pid: str, refs: tuple[str, ...]) -> None:
    dim = index.manifest["embedding_dim"]
    vectors = np.random.default_rng(0).normal(size=(len(refs), dim))
    index.upsert(Product(pid, "circle", pid, refs), vectors)


# ---- writing ---------------------------------------------------------------------------------


def test_uploads_are_fsynced_file_and_folders_before_returning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files: list[str] = []
    folders: list[Path] = []
    real_file, real_dir = vio.fsync_file, vio.fsync_dir
    monkeypatch.setattr(vio, "fsync_file", lambda p: (files.append(Path(p).suffix), real_file(p)))
    monkeypatch.setattr(vio, "fsync_dir", lambda p: (folders.append(Path(p)), real_dir(p)))
    refs = save_uploads(tmp_path, "p-1", [_image(1), _image(2)])
    assert len(refs) == 2 and files == [".jpg", ".jpg"]
    uploads = tmp_path / "uploads"
    assert folders == [tmp_path, uploads, uploads / "p-1", uploads / "p-1"]
    names = sorted(p.name for p in (uploads / "p-1").iterdir())
    assert names == sorted(ref.rsplit("/", 1)[1] for ref in refs)


def test_a_failed_upload_leaves_no_file_and_no_new_folder(tmp_path: Path) -> None:
    unsavable = Image.new("RGBA", (8, 8))  # JPEG has no alpha: the second save fails
    with pytest.raises(OSError):
        save_uploads(tmp_path, "p-2", [_image(1), unsavable])
    assert list((tmp_path / "uploads").iterdir()) == []
    kept = save_uploads(tmp_path, "p-3", [_image(1)])
    with pytest.raises(OSError):
        save_uploads(tmp_path, "p-3", [_image(2), unsavable])
    assert [p.name for p in (tmp_path / "uploads" / "p-3").iterdir()] == [kept[0].rsplit("/", 1)[1]]


# ---- startup's litter removal ----------------------------------------------------------------


def test_litter_goes_and_every_referenced_file_stays(index: CatalogIndex) -> None:
    root, uploads = index.path, index.path / "uploads"
    refs = save_uploads(root, "held-1", [_image(1), _image(2)])
    shared = save_uploads(root, "gone-2", [_image(3)])  # a folder whose product is gone, but
    _upload(index, "held-1", refs)  # whose file another product names: kept
    _upload(index, "other-3", shared)
    stale = _touch(uploads / "held-1" / "replaced-0.jpg")
    orphans = [_touch(uploads / "ghost-4" / "abc-0.jpg"), _touch(uploads / "ghost-4" / "sub" / "1")]
    stray = _touch(uploads / "stray.jpg")
    temps = [
        _touch(uploads / "held-1" / ".abc-0.0123456789ab.tmp.jpg", PAST),
        _touch(uploads / "ghost-5" / ".abc-0.0123456789ab.tmp.jpg", PAST),
        _touch(root / ".service-state.0123456789ab.tmp.json", PAST),
        _touch(root / "vectors" / ".CURRENT.0123456789ab.tmp", PAST),
    ]
    fresh = _touch(root / ".manifest.fedcba987654.tmp.json")  # this process's write: kept
    before = {p for p in root.rglob("*") if p.is_file()}

    litter = remove_litter(index, before=time.time() - 60)

    assert litter == Litter(orphan_folders=2, stale_images=2, temp_files=4)
    gone = {stale, stray, *temps, *orphans}
    assert not any(p.exists() for p in [*gone, uploads / "ghost-4", uploads / "ghost-5"])
    after = {p for p in root.rglob("*") if p.is_file()}
    assert after == before - gone and fresh in after
    for ref in (*refs, *shared):
        assert (root / ref.removeprefix("index:")).is_file()
    assert remove_litter(index, before=time.time() - 60) == Litter()  # nothing left to remove


def test_an_uploads_tree_with_links_is_left_alone(index: CatalogIndex, tmp_path: Path) -> None:
    uploads = index.path / "uploads"
    orphan = _touch(uploads / "ghost-1" / "a.jpg")
    (uploads / "held-2").mkdir()
    (uploads / "held-2" / "link.jpg").symlink_to(orphan)
    temp = _touch(uploads / ".x.0123456789ab.tmp.jpg", PAST)
    assert remove_litter(index, before=time.time()) == Litter(temp_files=1)
    assert orphan.is_file() and not temp.exists()


# ---- through a real restart ------------------------------------------------------------------


def _post(client: httpx.Client, pid: str, seeds: list[int]) -> httpx.Response:
    files = []
    for i, seed in enumerate(seeds):
        out = io.BytesIO()
        _image(seed).save(out, format="PNG")
        files.append(("images", (f"v{i}.png", out.getvalue())))
    fields = {"id": pid, "category": "circle", "title": pid}
    return client.post("/v1/products", data=fields, files=files, headers={"X-API-Key": KEY})


def test_a_restart_removes_litter_and_the_product_still_serves_its_images(
    index_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = service_settings(index=index_dir, model="colour-histogram", api_key=KEY)
    with running_server(create_app(settings)) as url, httpx.Client(base_url=url) as client:
        assert _post(client, "kept-1", [1, 2]).status_code == 201
        served = [client.get(f"/v1/images/kept-1/{view}").content for view in (0, 1)]
    uploads = index_dir / "uploads"
    kept = sorted(p.name for p in (uploads / "kept-1").iterdir())
    litter = [
        _touch(uploads / "orphan-2" / "0123456789ab-0.jpg"),  # killed before the commit
        _touch(uploads / "kept-1" / "00000000dead-0.jpg"),  # killed before the old ones went
        _touch(uploads / "kept-1" / ".0123456789ab-1.0123456789ab.tmp.jpg", PAST),
    ]

    with (
        caplog.at_level(logging.INFO, logger="visnet.service.app"),
        running_server(create_app(settings)) as url,
        httpx.Client(base_url=url) as client,
    ):
        assert not any(p.exists() for p in litter) and not (uploads / "orphan-2").exists()
        assert sorted(p.name for p in (uploads / "kept-1").iterdir()) == kept
        for view, data in enumerate(served):
            image = client.get(f"/v1/images/kept-1/{view}")
            assert image.status_code == 200 and image.content == data
        metrics = client.get("/metrics").text
    for kind in ("orphan_folders", "stale_images", "temp_files"):
        assert f'visnet_startup_litter_removed{{kind="{kind}"}} 1.0' in metrics
    said = [r.getMessage() for r in caplog.records if "startup removed" in r.getMessage()]
    assert said and "1 orphan upload folders, 1 stale images, 1 temporary files" in said[-1]

"""Sample photos: `visnet samples` fills a folder; `GET /v1/samples` lists it and
`GET /v1/samples/{name}` serves its files, by name only (never a path out of the folder)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_helpers import service_settings
from typer.testing import CliRunner

from visnet.cli import app as cli
from visnet.data.samples import MANIFEST, list_samples, sample_file, write_samples
from visnet.data.synthetic import make_synthetic_set
from visnet.service import create_app
from visnet.service.schemas import SamplesOut


@pytest.fixture(scope="module")
def data_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("samples") / "set"
    make_synthetic_set(root, seed=0)
    return root


@pytest.fixture(scope="module")
def index_dir(data_set: Path) -> Path:
    """An index folder that only needs to exist: the sample routes never open the index."""
    index = data_set.parent / "index"
    write_samples(data_set, index / "samples", count=4, real=False)
    secret = data_set.parent / "secret.jpg"  # beside the samples folder: never served
    Image.new("RGB", (8, 8), "red").save(secret)
    (index / "samples" / "link-out.jpg").symlink_to(secret)
    return index


def _client(**settings: object) -> TestClient:
    # no `with`: the lifespan (model and index loading) never runs; samples need neither
    return TestClient(create_app(service_settings(model="colour-histogram", **settings)))


@pytest.fixture(scope="module")
def client(index_dir: Path) -> Iterator[TestClient]:
    yield _client(index=index_dir)


def test_listing_follows_the_manifest_and_serves_each_image(client: TestClient) -> None:
    response = client.get("/v1/samples")
    assert response.status_code == 200
    listed = SamplesOut.model_validate(response.json()).samples
    assert [s.name for s in listed] == [
        "street-circle-27.jpg",
        "street-square-38.jpg",
        "street-triangle-47.jpg",
        "street-circle-28.jpg",
    ]  # one category after another, in the manifest's order; the link is not listed
    assert listed[0].title == "Street: circle"
    assert "test street photo 27" in listed[0].credit
    for sample in listed:
        image = client.get(sample.image_url)
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/jpeg"
        assert image.headers["x-content-type-options"] == "nosniff"
        assert image.content[:2] == b"\xff\xd8"


@pytest.mark.parametrize(
    "name",
    [
        "..",
        "%2e%2e",
        "..%2Fsecret.jpg",
        "%2e%2e%2fsecret.jpg",
        "..%5Csecret.jpg",
        "%2Fetc%2Fpasswd",
        ".hidden.jpg",
        MANIFEST,  # in the folder, but no image
        "link-out.jpg",  # a symbolic link to a file outside the folder
        "missing.jpg",
        "street-circle-27.jpg%00.png",
    ],
)
def test_a_name_that_is_no_sample_file_is_refused(client: TestClient, name: str) -> None:
    response = client.get(f"/v1/samples/{name}")
    assert response.status_code in (400, 404), (name, response.status_code)
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"error", "message"}
    assert not response.content.startswith(b"\xff\xd8")


def test_the_path_helper_refuses_escapes(index_dir: Path) -> None:
    folder = index_dir / "samples"
    assert (
        sample_file(folder, "street-circle-27.jpg") == (folder / "street-circle-27.jpg").resolve()
    )
    for name in ["../secret.jpg", "/etc/passwd", "link-out.jpg", "a/b.jpg", "x\x00.jpg", ""]:
        assert sample_file(folder, name) is None, name


def test_a_missing_folder_gives_an_empty_list(tmp_path: Path) -> None:
    client = _client(index=tmp_path / "no-index")
    assert client.get("/v1/samples").json() == {"samples": []}
    assert client.get("/v1/samples/coffee.png").status_code == 404
    assert list_samples(None) == [] and list_samples(tmp_path / "nothing") == []


def test_the_samples_dir_setting_wins_and_a_folder_without_manifest_is_listed_by_name(
    tmp_path: Path, index_dir: Path
) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ["b_shoe.png", "a-bag.jpg"]:
        Image.new("RGB", (8, 8), "blue").save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    client = _client(index=index_dir, samples_dir=folder)
    listed = client.get("/v1/samples").json()["samples"]
    assert [(s["name"], s["title"]) for s in listed] == [
        ("a-bag.jpg", "a bag"),
        ("b_shoe.png", "b shoe"),
    ]
    assert client.get("/v1/samples/b_shoe.png").headers["content-type"] == "image/png"
    assert client.get("/v1/samples/street-circle-27.jpg").status_code == 404  # not this folder


def test_a_broken_manifest_falls_back_to_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "one.jpg")
    (folder / MANIFEST).write_text("{not json")
    assert [s.name for s in list_samples(folder)] == ["one.jpg"]
    (folder / MANIFEST).write_text(
        json.dumps({"samples": [{"name": "gone.jpg"}, 7, {"name": "one.jpg"}]})
    )
    assert [(s.name, s.title) for s in list_samples(folder)] == [("one.jpg", "one.jpg")]


def test_the_cli_writes_street_photos_and_the_real_photographs(
    data_set: Path, tmp_path: Path
) -> None:
    out = tmp_path / "index" / "samples"
    result = CliRunner().invoke(
        cli, ["samples", "--data", str(data_set), "--out", str(out), "--count", "2"]
    )
    assert result.exit_code == 0, result.output
    names = [s.name for s in list_samples(out)]
    assert names[:2] == ["street-circle-27.jpg", "street-square-38.jpg"]
    real = names[2:]  # the photographs scikit-image and scikit-learn ship, where installed
    assert set(real) <= {"coffee.png", "astronaut.png", "rocket.jpg", "china.jpg"}
    assert f"wrote {len(names)} sample photos" in result.output
    assert not (out.parent / "samples.partial").exists()
    again = CliRunner().invoke(cli, ["samples", "--out", str(out), "--no-real", "--count", "0"])
    assert again.exit_code == 2 and "no sample photos" in again.output
    assert [s.name for s in list_samples(out)] == names  # a failed run keeps the old folder

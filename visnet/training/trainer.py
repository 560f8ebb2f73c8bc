"""The embedding trainer: settings in, a self-describing checkpoint out; resumable, reproducible.

It configures the one training loop (`loop.py`): what a step is, what OUT/last.pt holds, validation.

Two objectives:
- `contrastive` (default): in-batch symmetric InfoNCE between street crops (or other catalog views)
  and catalog views of distinct products; every other product in the batch is a negative.
- `triplet`: the paper's hinge on squared distance over (q, p, n) triplets, read from a triplet
  file or drawn from the data set as wild triplets; `batch-hard` adds online hard-negative mining.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visnet.data.splits import validation_products, variant_groups
from visnet.data.street2shop import read_set
from visnet.detect.street_boxes import read_street_boxes
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
from visnet.training import loop
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
    add_jittered_boxes,
    add_street_boxes,
    drop_unreadable,
    product_table,
    read_triplets,
    wild_triplets,
)
from visnet.training.history import plot_history
from visnet.training.optim import Schedule, cosine, warmup_then
from visnet.training.settings import TrainSettings
from visnet.training.validate import validation_recall

log = logging.getLogger(__name__)

# settings that may change between a run and its resumption without changing the result
_RESUMABLE = ("max_minutes", "threads", "val_every", "checkpoint_every", "cache_dir")


def train(settings: TrainSettings) -> Path:
    """Train (or resume) a model; return the path of the final weights (`OUT/model.pt`)."""
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(settings.threads or os.cpu_count() or 1)
    preprocess = get_config(settings.preset).preprocess()
    bank, train_rows, val_rows = _rows(settings, preprocess)
    train_tf = preprocess.train_transform()
    run = loop.start_run(out, _new_run(settings), functools.partial(_load, settings))
    sampler = (
        _cached(settings, run, train_rows, val_rows, bank, preprocess)
        if settings.freeze
        else _sampler(settings, train_rows, val_rows, bank, train_tf)
    )
    validate = _validation(settings, run.model, train_rows, val_rows, bank, preprocess)
    if isinstance(sampler, CachedTraining):  # validation images are in the cache: no trunk pass
        validate = functools.partial(validate, embed_refs=sampler.embed_clean)
    return loop.train(run, settings, out, _hooks(settings, out, sampler, validate))


def _hooks(
    settings: TrainSettings, out: Path, sampler: Any, validate: Callable[[], dict[str, float]]
) -> loop.Hooks[VisNet]:
    """The loop configured: fine-tuning (a frozen trunk) is validated at step 0 too."""
    return loop.Hooks(
        step=functools.partial(_step, sampler=sampler, settings=settings),
        save=functools.partial(_save, settings=settings, out=out),
        export=functools.partial(_export, settings=settings, out=out),
        validate=validate,
        val_every=settings.val_every,
        validate_first=bool(settings.freeze),
        postfix=lambda figures: {"acc": f"{figures['accuracy']:.2f}"},
        bar={"desc": "train", "unit": "step"},
    )


def validate_checkpoint(settings: TrainSettings, checkpoint: Path | str) -> dict[str, float]:
    """`checkpoint`'s figures on the validation split `settings` define (the split a run with
    these settings holds out), from the full network: to compare finished runs or models."""
    torch.set_num_threads(settings.threads or os.cpu_count() or 1)
    model, _ = load_model(checkpoint)
    preprocess = model.config.preprocess()
    bank, train_rows, val_rows = _rows(settings, preprocess)
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


def _rows(
    settings: TrainSettings, preprocess: Any
) -> tuple[ImageBank, list[ProductViews], list[ProductViews]]:
    """The train split's images at the working size, and its training and validation products
    (those whose images load)."""
    bank = ImageBank(side=int(preprocess.resize * 1.15), margin=settings.street_margin)
    train_rows, val_rows = _split(read_set(settings.data), settings)
    bank.load([r for p in train_rows + val_rows for r in p.views + p.street])
    return bank, drop_unreadable(train_rows, bank), drop_unreadable(val_rows, bank)


def _split(data: Any, settings: TrainSettings) -> tuple[list[ProductViews], list[ProductViews]]:
    """Train products, less a validation share held out by shape (colour variants together)."""
    held = validation_products(data, settings.val_fraction, settings.seed, settings.val_categories)
    products = {p.product for p in data.pairs["train"]}
    rows = product_table(data, products - held)
    add_jittered_boxes(rows, settings.box_jitter, settings.seed)  # before the detected boxes
    if settings.street_boxes:  # training products only: validation reads labelled boxes
        add_street_boxes(rows, data, read_street_boxes(settings.street_boxes))
    return rows, product_table(data, held)


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


def _new_run(settings: TrainSettings) -> loop.Run[VisNet]:
    """A fresh run: the preset's network (seeded), its loss (with the temperature it learns)."""
    torch.manual_seed(settings.seed)
    model = create_model(settings.preset, seed=settings.seed, pretrained=settings.pretrained)
    criterion: torch.nn.Module = (
        InBatchContrastive(settings.temperature)
        if settings.loss == "contrastive"
        else TripletLoss(settings.margin, reduction="mean")
    )
    params = list(model.parameters()) + list(criterion.parameters())
    return loop.new_run(settings, model.train(), params, _schedule(settings), criterion=criterion)


def _schedule(settings: TrainSettings) -> Schedule:
    """Warm-up from 1/warmup_steps, then a cosine to 0.02 or steps of x0.1 at 60% and 85%."""
    decay = cosine(0.02) if settings.schedule == "cosine" else _step_decay
    return warmup_then(decay, settings.steps, settings.warmup_steps, ahead=1)


def _step_decay(progress: float) -> float:
    return 1.0 if progress < 0.6 else 0.1 if progress < 0.85 else 0.01


def _load(settings: TrainSettings, run: loop.Run[VisNet], last: Path) -> dict[str, Any]:
    """Check OUT/last.pt's settings, load its weights into `run`; its resume state and step."""
    model, meta = load_model(last)
    extra = meta["extra"]
    loop.refuse_other_settings(last, extra.get("settings"), loop.comparable(settings, _RESUMABLE))
    run.model.load_state_dict(model.state_dict())
    state = extra.get("resume")
    if state is None:  # written before the state moved into last.pt
        state = torch.load(last.parent / "last-state.pt", weights_only=False)
    return {**state, "step": extra["step"]}


def _extra(settings: TrainSettings, step: int) -> dict[str, Any]:
    fingerprint = data_fingerprint(settings.data)
    return loop.run_facts(loop.comparable(settings, _RESUMABLE), step, data_fingerprint=fingerprint)


def _save(run: loop.Run[VisNet], settings: TrainSettings, out: Path) -> None:
    """OUT/last.pt: the weights, with the state to resume them under extra["resume"]."""
    # Weights and the state to resume them travel in one atomically replaced file: a kill at
    # any moment leaves either the old pair or the new pair, never weights of one step with
    # the optimizer or random state of another (which would make the resumed run diverge).
    extra = {**_extra(settings, run.step), "resume": loop.resume_state(run)}
    save_checkpoint(out / loop.LAST, run.model, extra=extra)


def _export(run: loop.Run[VisNet], settings: TrainSettings, out: Path) -> Path:
    """OUT/model.pt (float16, self-describing) and the history plotted beside it."""
    final = save_checkpoint(
        out / "model.pt", run.model, extra=_extra(settings, run.step), half=True
    )
    plot_history(out / loop.HISTORY, out / "training.png")
    return final


def _descend(run: loop.Run[VisNet], loss: torch.Tensor) -> float:
    """One optimiser step down `loss`; its value."""
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return float(loss.detach())


def _step(run: loop.Run[VisNet], sampler: Any, settings: TrainSettings) -> dict[str, float]:
    """One step on a batch of pairs or triplets: the loss and the in-batch accuracy."""
    if isinstance(sampler, CachedTraining):
        return _cached_step(run, sampler, settings)
    criterion = run.modules["criterion"]
    batch = sampler.batch(settings.batch_size, run.rng)
    if isinstance(sampler, PairSampler):
        queries, positives, labels = batch
        embedded = run.model(torch.cat([queries, positives]))
        q, p = embedded[: len(queries)], embedded[len(queries) :]
        loss = criterion(q, p, labels)
        accuracy = float(((q @ p.T).argmax(dim=1) == torch.arange(len(q))).float().mean())
    else:
        q, p, n = run.model(torch.cat(batch)).split(len(batch[0]))
        loss = criterion(q, p, n)
        if settings.loss == "batch-hard":
            labels = torch.arange(len(q)).repeat(2)
            loss = loss + batch_hard_triplet_loss(torch.cat([q, p]), labels, settings.margin)
        accuracy = float((((q - p) ** 2).sum(1) < ((q - n) ** 2).sum(1)).float().mean())
    return {"loss": _descend(run, loss), "accuracy": accuracy}


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
    run: loop.Run[VisNet],
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


def _cached_step(
    run: loop.Run[VisNet], cached: CachedTraining, settings: TrainSettings
) -> dict[str, float]:
    """One step from the frozen trunk's cached output: contrastive pairs (and triplets)."""
    batchnorm_on_running_stats(run.model)
    cache = cached.cache
    queries, positives, labels, families = cached.pairs.batch(settings.batch_size, run.rng)
    rows = np.concatenate([queries, positives])
    embedded = cached.forward(cache.features[rows], cache.quarters[rows])
    q, p = embedded[: len(queries)], embedded[len(queries) :]
    loss = run.modules["criterion"](q, p, labels, families, settings.variant_offset)
    accuracy = float(((q @ p.T).argmax(dim=1) == torch.arange(len(q))).float().mean())
    if cached.triplets and settings.triplet_weight > 0:
        parts = triplet_rows(cached.triplets, cache, settings.batch_size // 2, run.rng)
        rows = np.concatenate(parts)
        tq, tp, tn = cached.forward(cache.features[rows], cache.quarters[rows]).split(len(parts[0]))
        hinge = TripletLoss(settings.margin, reduction="mean")(tq, tp, tn)
        loss = loss + settings.triplet_weight * hinge
    return {"loss": _descend(run, loss), "accuracy": accuracy}

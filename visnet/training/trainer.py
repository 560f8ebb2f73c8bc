"""The training loop: settings in, a self-describing checkpoint out; resumable and reproducible.

Two objectives:
- `contrastive` (default): in-batch symmetric InfoNCE between street crops (or other catalog views)
  and catalog views of distinct products; every other product in the batch is a negative.
- `triplet`: the paper's hinge on squared distance over (q, p, n) triplets, read from a triplet
  file or drawn from the data set as wild triplets; `batch-hard` adds online hard-negative mining.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from visnet.data.catalog import read_side_info, side_attribute
from visnet.data.street2shop import read_set
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
from visnet.training.datasets import (
    ImageBank,
    PairSampler,
    ProductViews,
    TripletSampler,
    drop_unreadable,
    product_table,
    read_triplets,
    wild_triplets,
)
from visnet.training.validate import validation_recall

log = logging.getLogger(__name__)
LOSSES = ("contrastive", "triplet", "batch-hard")


@dataclass(frozen=True)
class TrainSettings:
    data: str  # a Street2Shop-layout folder
    out: str  # the run folder: last.pt, model.pt, history.jsonl, training.png
    preset: str = "default"
    triplets: str | None = None  # a triplet file or review queue; None: read the data set
    include_pending: bool = False  # from a review queue, also train on unreviewed triplets
    loss: str = "contrastive"
    steps: int = 900
    batch_size: int = 48
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    schedule: str = "cosine"  # or "step" (x0.1 at 60% and 85% of the steps)
    warmup_steps: int = 30
    margin: float = 0.2
    temperature: float = 0.07
    street_fraction: float = 0.75
    same_category_fraction: float = 0.25
    val_fraction: float = 0.1
    val_every: int = 100
    checkpoint_every: int = 25
    seed: int = 0
    pretrained: str | None = None
    max_minutes: float = 0.0  # stop (and save) after this long; 0: no limit
    threads: int = 0  # torch threads; 0: every core

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use 'adamw' or 'sgd'")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"unknown schedule {self.schedule!r}; use 'cosine' or 'step'")
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError("steps must be >= 1 and batch_size >= 2")


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
    sampler = _sampler(settings, train_rows, bank, train_tf)
    run = _start(settings, out)
    history = out / "history.jsonl"
    started, eval_tf = time.time(), preprocess.eval_transform()
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
            record.update(
                validation_recall(run.model, val_rows, train_rows + val_rows, bank, eval_tf)
            )
            bar.write(
                f"step {run.step}: "
                + ", ".join(f"{k} {v:.3f}" for k, v in record.items() if k.startswith("recall"))
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


def _split(data: Any, settings: TrainSettings) -> tuple[list[ProductViews], list[ProductViews]]:
    """Train products, less a validation share held out by shape (colour variants together)."""
    products = sorted({p.product for p in data.pairs["train"]})
    if not products:
        raise ValueError(f"{settings.data}: the train split has no street photos to learn from")
    groups = _variant_groups(Path(settings.data), products)
    names = sorted(set(groups.values()))
    rng = np.random.default_rng(settings.seed + 1)
    count = int(round(settings.val_fraction * len(names)))
    held_groups = set(rng.choice(names, count, replace=False).tolist()) if count else set()
    held = {p for p in products if groups[p] in held_groups}
    return product_table(data, set(products) - held), product_table(data, held)


def _variant_groups(root: Path, products: list[int]) -> dict[int, str]:
    """Product -> shape group, from catalog.jsonl's `variant_of` where the set has one."""
    bases = side_attribute(read_side_info(root), "variant_of")
    return {p: bases.get(p, str(p)) for p in products}


def _sampler(settings: TrainSettings, rows: list[ProductViews], bank: ImageBank, tf: Any) -> Any:
    if settings.triplets:
        triplets = read_triplets(settings.triplets, settings.data, settings.include_pending)
        bank.load([r for t in triplets for r in (t.query, t.positive, t.negative)], "load triplets")
        return TripletSampler(triplets, bank, tf)
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
    if settings.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            params, lr=settings.lr, weight_decay=settings.weight_decay
        )
    else:
        optimizer = torch.optim.SGD(
            params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
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


def truncate_history(path: Path, step: int) -> None:
    """Drop lines past the checkpoint: those steps are about to be run again."""
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in lines))


def _comparable(settings: TrainSettings) -> dict[str, Any]:
    values = dataclasses.asdict(settings)
    for key in ("max_minutes", "threads", "val_every", "checkpoint_every"):
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


def _plot_history(history: Path, path: Path) -> None:
    """Loss and validation recall against steps, as a PNG beside the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in history.read_text().splitlines()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot([r["step"] for r in records], [r["loss"] for r in records], lw=0.6)
    left.set(xlabel="step", ylabel="loss", title="training loss")
    for key in ("recall@1", "recall@5", "recall@20"):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            right.plot(*zip(*points, strict=True), marker="o", label=key)
    right.set(xlabel="step", ylabel="recall", title="validation street-to-shop recall", ylim=(0, 1))
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""Train a detector on the boxes of a set's street photos; resumable from OUT/last.pt.

OUT/last.pt        the whole run (weights, optimizer, schedule, random states, step), rewritten
                   atomically every `checkpoint_every` steps; rerunning with the same settings
                   continues from it (a larger --steps extends the run)
OUT/detector.pt    the final weights, float16, self-describing (`Detector.load`)
OUT/history.jsonl  one line per step: the loss and its four parts
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

from visnet.data.splits import validation_pairs, validation_products
from visnet.data.street2shop import Street2ShopSet, read_set
from visnet.detect.detector import (
    Detector,
    DetectorConfig,
    atomic_save,
    build_model,
    freeze_batchnorm,
    get_arch,
    load_backbone_weights,
    to_tensor,
)
from visnet.detect.settings import DetectTrainSettings
from visnet.images import ImageError, load_image
from visnet.training.history import truncate_history
from visnet.training.optim import make_optimizer

log = logging.getLogger(__name__)

RUN_FORMAT = "visnet-detector-run"
# Settings that may change between a run and its resumption without changing what is learnt.
_RESUMABLE = ("steps", "checkpoint_every", "max_minutes", "threads", "progress")


@dataclass
class _Run:
    detector: Detector
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    rng: np.random.Generator
    step: int = 0


@dataclass(frozen=True)
class _Photo:
    path: Path
    boxes: np.ndarray  # float32 (n, 4) xyxy
    labels: np.ndarray  # int64 (n,), 1-based category index


class TrainPhotos:
    """The street photos of one split with their boxes; draws augmented batches."""

    def __init__(
        self,
        data: Street2ShopSet,
        categories: list[str],
        split: str = "train",
        pairs: list[Any] | None = None,
        others_min_visible: float = 0.5,
    ) -> None:
        """`pairs` (default: all of `split`) are the pairs whose photos are drawn. The other
        products a photo shows (the set's street objects) at least `others_min_visible` in view
        are boxes to learn too; the rest are neither products nor background to the loss, which
        only sees boxes, so a half-hidden one simply goes unlabelled."""
        index = {c: i + 1 for i, c in enumerate(categories)}
        grouped: dict[int, list[Any]] = {}
        for pair in data.pairs[split] if pairs is None else pairs:
            grouped.setdefault(pair.photo, []).append(pair)
        others = data.objects_by_photo(others_min_visible)
        self.photos: list[_Photo] = []
        for photo, pairs in grouped.items():
            path = data.photo_path(photo)
            if path is None:
                log.warning("skipping street photo %d: file missing", photo)
                continue
            seen = [*pairs, *(o for o in others.get(photo, []) if o.category in index)]
            boxes = np.asarray([p.bbox.as_xyxy() for p in seen], np.float32)
            labels = np.asarray([index[p.category] for p in seen], np.int64)
            self.photos.append(_Photo(path, boxes, labels))
        if not self.photos:
            raise ValueError(f"{data.root}: the {split} split has no street photos with boxes")

    def batch(
        self, size: int, rng: np.random.Generator, flip: float
    ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        images: list[torch.Tensor] = []
        targets: list[dict[str, torch.Tensor]] = []
        while len(images) < size:
            if not self.photos:
                raise ValueError("no readable street photo is left to train on")
            i = int(rng.integers(len(self.photos)))
            try:
                image = load_image(self.photos[i].path)
            except ImageError as exc:
                log.warning("dropping %s: %s", self.photos[i].path, exc)
                self.photos.pop(i)
                continue
            tensor, target = _sample(image, self.photos[i], bool(rng.random() < flip))
            images.append(tensor)
            targets.append(target)
        return images, targets


def _sample(image: Any, photo: _Photo, flip: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    tensor = to_tensor(image)
    width, height = image.size
    boxes = photo.boxes.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    if flip:
        tensor = tensor.flip(-1)
        boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
    return tensor, {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(photo.labels)}


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    clip_grad: float = 10.0,
) -> dict[str, float]:
    """One optimiser step on a batch; returns the total loss and its parts."""
    model.train()
    parts = model(images, targets)
    loss = sum(parts.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()
    return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}}


def train_detector(data_dir: str | Path, out: str | Path, **options: Any) -> Path:
    """Train (or resume) a detector; return the path of its final weights (OUT/detector.pt).

    `options` are fields of DetectTrainSettings (arch, steps, lr, ...); the rest keep its defaults.
    """
    settings = DetectTrainSettings(**options)
    return run_training(data_dir, out, settings)


def run_training(data_dir: str | Path, out: str | Path, settings: DetectTrainSettings) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(settings.threads or os.cpu_count() or 1)
    data = read_set(data_dir)
    categories = data.categories
    held = validation_products(data, settings.val_fraction, settings.seed)
    train_pairs, val_pairs = validation_pairs(data, held)
    if held:
        photos_held = len({p.photo for p in val_pairs})
        log.info("held out for validation: %d photos of %d products", photos_held, len(held))
    photos = TrainPhotos(data, categories, pairs=train_pairs, others_min_visible=settings.others)
    run = _start(settings, categories, data_dir, out)
    started, history = time.time(), out / "history.jsonl"
    bar = tqdm(total=settings.steps, initial=run.step, desc="detect", disable=not settings.progress)
    while run.step < settings.steps:
        images, targets = photos.batch(settings.batch_size, run.rng, settings.flip)
        losses = train_step(run.detector.model, run.optimizer, images, targets, settings.clip_grad)
        run.scheduler.step()
        run.step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{run.scheduler.get_last_lr()[0]:.1e}")
        with history.open("a") as f:
            f.write(json.dumps({"step": run.step, **losses}) + "\n")
        out_of_time = settings.max_minutes and time.time() - started > settings.max_minutes * 60
        if run.step % settings.checkpoint_every == 0 or run.step == settings.steps or out_of_time:
            _save_run(run, settings, data_dir, out)
        if out_of_time:
            log.info("stopping at step %d: max_minutes=%s reached", run.step, settings.max_minutes)
            break
    bar.close()
    run.detector.model.eval()
    return run.detector.save(
        out / "detector.pt", extra=_extra(settings, data_dir, run.step), half=True
    )


def _config(settings: DetectTrainSettings, categories: list[str]) -> DetectorConfig:
    return DetectorConfig(
        categories=tuple(categories),
        arch=settings.arch,
        min_size=settings.min_size,
        max_size=settings.max_size,
        box_head_dim=settings.box_head_dim,
        frozen_batchnorm=backbone_source(settings) is not None,
    )


def backbone_source(settings: DetectTrainSettings) -> str | None:
    """Where a new run's backbone weights come from; None: random (trained from scratch).

    Unset, an architecture with packaged ImageNet weights starts from them; "none" opts out.
    """
    source = settings.pretrained_backbone
    if source is None:
        return get_arch(settings.arch).packaged_backbone or None
    return None if source.strip().lower() in ("", "none") else source


def _new_run(settings: DetectTrainSettings, categories: list[str]) -> _Run:
    torch.manual_seed(settings.seed)
    config = _config(settings, categories)
    model = build_model(dataclasses.replace(config, frozen_batchnorm=False))
    source = backbone_source(settings)
    if source is not None:
        # load into plain BatchNorm first, then freeze it with the loaded statistics
        load_backbone_weights(model, settings.arch, source)
        freeze_batchnorm(model.backbone.body)
    model.roi_heads.fg_bg_sampler.batch_size_per_image = settings.box_samples
    detector = Detector(config, model)
    params = [p for p in detector.model.parameters() if p.requires_grad]
    optimizer = make_optimizer(
        params, settings.optimizer, settings.lr, settings.weight_decay, settings.momentum
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(settings))
    return _Run(detector, optimizer, scheduler, np.random.default_rng(settings.seed))


def _schedule(settings: DetectTrainSettings) -> Any:
    warmup = min(settings.warmup_steps, settings.steps // 4)

    def factor(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        progress = min(1.0, (step - warmup) / max(1, settings.steps - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _comparable(settings: DetectTrainSettings, data_dir: str | Path) -> dict[str, Any]:
    values = dataclasses.asdict(settings)
    for key in _RESUMABLE:
        values.pop(key)
    values["data"] = str(Path(data_dir).resolve())
    return values


def _extra(settings: DetectTrainSettings, data_dir: str | Path, step: int) -> dict[str, Any]:
    return {
        "settings": _comparable(settings, data_dir),
        "steps": settings.steps,
        "step": step,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _start(
    settings: DetectTrainSettings, categories: list[str], data_dir: str | Path, out: Path
) -> _Run:
    """A fresh run, or the run saved in OUT/last.pt when its settings match."""
    run = _new_run(settings, categories)
    last = out / "last.pt"
    if not last.is_file():
        return run
    saved = torch.load(last, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != RUN_FORMAT:
        raise ValueError(f"{last} is not a detector training run; use another --out")
    expected = _comparable(settings, data_dir)
    if saved["settings"] != expected or saved["config"] != run.detector.config.to_dict():
        changed = sorted(k for k in expected if saved["settings"].get(k) != expected[k])
        what = ", ".join(changed) or "the categories or detector config"
        raise ValueError(
            f"{last} was written with other settings (differing: {what}); rerun with the same "
            f"settings, use another --out, or delete {last} to start over"
        )
    run.detector.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    run.rng.bit_generator.state = saved["numpy_rng"]
    torch.set_rng_state(saved["torch_rng"])
    run.step = int(saved["step"])
    log.info("resumed from %s at step %d", last, run.step)
    truncate_history(out / "history.jsonl", run.step)
    return run


def _save_run(run: _Run, settings: DetectTrainSettings, data_dir: str | Path, out: Path) -> None:
    payload = {
        "format": RUN_FORMAT,
        "settings": _comparable(settings, data_dir),
        "config": run.detector.config.to_dict(),
        "step": run.step,
        "model": run.detector.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "numpy_rng": run.rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
    }
    atomic_save(payload, out / "last.pt")

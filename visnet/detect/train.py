"""Train a detector on the boxes of a set's street photos; resumable from OUT/last.pt.

OUT/last.pt        the whole run (weights, optimizer, schedule, random states, step), rewritten
                   atomically every `checkpoint_every` steps; rerunning with the same settings
                   continues from it (a larger --steps extends the run)
OUT/detector.pt    the final weights, float16, self-describing (`Detector.load`)
OUT/history.jsonl  one line per step: the loss and its four parts
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visnet.data.splits import validation_pairs, validation_products
from visnet.data.street2shop import Street2ShopSet, read_set
from visnet.detect.detector import (
    Detector,
    DetectorConfig,
    build_model,
    freeze_batchnorm,
    get_arch,
    load_backbone_weights,
    to_tensor,
)
from visnet.detect.settings import DetectTrainSettings
from visnet.images import ImageError, load_image
from visnet.model.checkpoint import atomic_torch_save
from visnet.training import loop
from visnet.training.optim import Schedule, cosine, warmup_then

log = logging.getLogger(__name__)

RUN_FORMAT = "visnet-detector-run"
# Settings that may change between a run and its resumption without changing what is learnt.
_RESUMABLE = ("steps", "checkpoint_every", "max_minutes", "threads", "progress")
_CONFIG = "detector config"  # compared on resume beside the settings: it holds the categories


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
    """Train (or resume) a detector on `data_dir` into `out`; the path of OUT/detector.pt."""
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
    load = functools.partial(_load, settings, data_dir)
    run = loop.start_run(out, _new_run(settings, categories), load)
    hooks: loop.Hooks[Detector] = loop.Hooks(
        step=functools.partial(_step, photos=photos, settings=settings),
        save=functools.partial(_save_run, settings=settings, data_dir=data_dir, out=out),
        export=functools.partial(_export, settings=settings, data_dir=data_dir, out=out),
        bar={"desc": "detect", "disable": not settings.progress},
    )
    return loop.train(run, settings, out, hooks)


def _step(
    run: loop.Run[Detector], photos: TrainPhotos, settings: DetectTrainSettings
) -> dict[str, float]:
    """One step on a batch of augmented photos: the loss and its four parts."""
    images, targets = photos.batch(settings.batch_size, run.rng, settings.flip)
    return train_step(run.model.model, run.optimizer, images, targets, settings.clip_grad)


def _export(
    run: loop.Run[Detector], settings: DetectTrainSettings, data_dir: str | Path, out: Path
) -> Path:
    """OUT/detector.pt: the final weights, float16, self-describing."""
    extra = loop.run_facts(_comparable(settings, data_dir), run.step, steps=settings.steps)
    run.model.model.eval()
    return run.model.save(out / "detector.pt", extra=extra, half=True)


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


def _new_run(settings: DetectTrainSettings, categories: list[str]) -> loop.Run[Detector]:
    """A fresh run: the architecture (seeded), its backbone from `backbone_source`."""
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
    return loop.new_run(settings, detector, params, _schedule(settings))


def _schedule(settings: DetectTrainSettings) -> Schedule:
    """Warm-up from 0.1 (at most a quarter of the steps), then a cosine to 0.05."""
    warmup = min(settings.warmup_steps, settings.steps // 4)
    return warmup_then(cosine(0.05), settings.steps, warmup, start=0.1)


def _comparable(settings: DetectTrainSettings, data_dir: str | Path) -> dict[str, Any]:
    return {**loop.comparable(settings, _RESUMABLE), "data": str(Path(data_dir).resolve())}


def _load(
    settings: DetectTrainSettings, data_dir: str | Path, run: loop.Run[Detector], last: Path
) -> dict[str, Any]:
    """Check OUT/last.pt's settings and categories, load its weights into `run`; the whole run."""
    saved = torch.load(last, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != RUN_FORMAT:
        raise ValueError(f"{last} is not a detector training run; use another --out")
    expected = {**_comparable(settings, data_dir), _CONFIG: run.model.config.to_dict()}
    # through from_dict, so a run saved before a config field was added compares with its default
    found = DetectorConfig.from_dict(saved["config"]).to_dict()
    loop.refuse_other_settings(last, {**saved["settings"], _CONFIG: found}, expected)
    run.model.model.load_state_dict(saved["model"])
    return saved


def _save_run(
    run: loop.Run[Detector], settings: DetectTrainSettings, data_dir: str | Path, out: Path
) -> None:
    """OUT/last.pt: the whole run, replaced atomically."""
    payload = {
        "format": RUN_FORMAT,
        "settings": _comparable(settings, data_dir),
        "config": run.model.config.to_dict(),
        "step": run.step,
        "model": run.model.model.state_dict(),
        **loop.resume_state(run),
    }
    atomic_torch_save(payload, out / loop.LAST)

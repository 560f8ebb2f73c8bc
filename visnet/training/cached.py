"""Fine-tuning the top of a pretrained trunk on cached features of its frozen bottom.

Backward passes through the early depthwise blocks are what make a pretrained EfficientNet slow to
train on a CPU (SPEC.md: 2.8 images/s for the whole network at 224 px). Those blocks stay frozen
anyway, so their output is computed once, for a few augmented versions of every training image,
and kept in memory in float16; each step then runs only the trainable stages. The shallow branches
need pixels: they start with a max-pool of the input, and a max-pool commutes with the per-channel
normalisation, so the input pooled by 4 is cached for them (`ShallowBranches.from_quarter`).

`FrozenSplit` cuts a VisNet's trunk into the frozen prefix and the trainable rest; `FeatureCache`
holds the cached versions; `CachedForward` runs the model from the cache, sharing its parameters,
so checkpoints, validation and export see the same model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from visnet.model.visnet import VisNet
from visnet.training.datasets import (
    ImageBank,
    ImageRef,
    PairSampler,
    ProductViews,
    Transform,
    Triplet,
)

log = logging.getLogger(__name__)


def trunk_stages(trunk: nn.Module) -> list[tuple[str, nn.Module]]:
    """The trunk's stages in order, with nested Sequentials (`blocks`, `features`) opened once."""
    stages: list[tuple[str, nn.Module]] = []
    for name, child in trunk.named_children():
        if isinstance(child, nn.Sequential):
            stages.extend((f"{name}.{i}", sub) for i, sub in child.named_children())
        else:
            stages.append((name, child))
    return stages


class FrozenSplit:
    """The first `frozen` trunk stages (frozen, eval mode) and the rest (trained)."""

    def __init__(self, model: VisNet, frozen: int) -> None:
        stages = trunk_stages(model.deep.trunk)
        if not 0 < frozen < len(stages):
            names = ", ".join(f"{i + 1}: {n}" for i, (n, _) in enumerate(stages))
            raise ValueError(f"freeze must be in 1..{len(stages) - 1}; the stages are {names}")
        self.names = [n for n, _ in stages]
        self.prefix = nn.Sequential(*(m for _, m in stages[:frozen]))
        self.suffix = nn.Sequential(*(m for _, m in stages[frozen:]))
        for parameter in self.prefix.parameters():
            parameter.requires_grad_(False)
        self.prefix.eval()
        log.info("frozen: %s; trained: %s", self.names[:frozen], self.names[frozen:])


def freeze_batchnorm(module: nn.Module) -> None:
    """Keep BatchNorm layers on their pretrained running statistics (small, few-class batches
    would skew them); their affine weights still train."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()


class FeatureCache:
    """`versions` augmented views of each image, as (frozen-prefix features, quarter image).

    Version 0 of every image is its deterministic eval view (what search embeds); the others
    are drawn from `train_transform` with a generator seeded by `seed`, so a rebuilt cache (on
    resume) is the same cache.
    """

    def __init__(
        self,
        split: FrozenSplit,
        bank: ImageBank,
        refs: Sequence[ImageRef],
        eval_transform: Transform,
        train_transform: Transform,
        versions: int,
        seed: int,
        batch_size: int = 64,
    ) -> None:
        if versions < 1:
            raise ValueError(f"cache versions must be at least 1; got {versions}")
        self.refs = sorted(set(refs), key=str)
        self.row = {ref: i for i, ref in enumerate(self.refs)}
        self.versions = versions
        generator = torch.Generator().manual_seed(seed)
        features, quarters = [], []
        jobs = [(ref, v) for v in range(versions) for ref in self.refs]
        with torch.inference_mode():
            for start in tqdm(range(0, len(jobs), batch_size), desc="cache features", unit="batch"):
                chunk = jobs[start : start + batch_size]
                images = []
                for ref, version in chunk:
                    if version == 0:
                        images.append(eval_transform(bank[ref]))
                    else:
                        with torch.random.fork_rng(devices=[]):
                            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
                            images.append(train_transform(bank[ref]))
                batch = torch.stack(images).contiguous(memory_format=torch.channels_last)
                features.append(split.prefix(batch).half())
                quarters.append(F.max_pool2d(batch, 4, 4, ceil_mode=True).half())
        # rows: version-major, so version v of image i is at v * len(refs) + i
        self.features = torch.cat(features)
        self.quarters = torch.cat(quarters)
        megabytes = (self.features.nbytes + self.quarters.nbytes) / 2**20
        log.info("cached %d views of %d images: %.0f MB", len(jobs), len(self.refs), megabytes)

    def rows(self, refs: Sequence[ImageRef], rng: np.random.Generator, clean: bool) -> np.ndarray:
        """Cache rows of a random version of each ref (version 0, the eval view, if `clean`)."""
        index = np.array([self.row[r] for r in refs])
        if clean:
            return index
        version = rng.integers(self.versions, size=len(index))
        return version * len(self.refs) + index

    def __contains__(self, ref: ImageRef) -> bool:
        return ref in self.row


class CachedForward(nn.Module):
    """The rest of a VisNet, from cached prefix features and quarter images to embeddings."""

    def __init__(self, model: VisNet, split: FrozenSplit) -> None:
        super().__init__()
        self.model, self.suffix = model, split.suffix

    def forward(self, features: torch.Tensor, quarters: torch.Tensor) -> torch.Tensor:
        model = self.model
        deep = model.deep.head(self.suffix(features.float()))
        parts = [F.normalize(deep, dim=1)]
        if model.shallow is not None:
            parts.append(model.shallow.from_quarter(quarters.float()))
        return F.normalize(model.projection(torch.cat(parts, dim=1)), dim=1)


class CachedPairSampler(PairSampler):
    """`PairSampler`'s batches (same products, same street/view mix) as cache rows."""

    def __init__(self, table: list[ProductViews], cache: FeatureCache, **kwargs: float) -> None:
        super().__init__(table, cache, lambda image: image, **kwargs)  # type: ignore[arg-type]
        self.cache = cache

    def batch(  # type: ignore[override]
        self, size: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        rows = self._rows(min(size, len(self.table)), rng)
        queries, positives = [], []
        for r in rows:
            entry = self.table[r]
            positive = entry.views[int(rng.integers(len(entry.views)))]
            use_street = entry.street and (
                rng.random() < self.street_fraction or len(entry.views) < 2
            )
            if use_street:
                query = entry.street[int(rng.integers(len(entry.street)))]
            else:
                others = [v for v in entry.views if v != positive] or entry.views
                query = others[int(rng.integers(len(others)))]
            queries.append(query)
            positives.append(positive)
        labels = torch.tensor([self.table[r].product for r in rows])
        return self.cache.rows(queries, rng, False), self.cache.rows(positives, rng, False), labels


def triplet_rows(
    triplets: Sequence[Triplet], cache: FeatureCache, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cache rows of `size` random triplets (query, positive, negative), random versions."""
    picked = [triplets[int(i)] for i in rng.choice(len(triplets), min(size, len(triplets)), False)]
    return tuple(  # type: ignore[return-value]
        cache.rows([getattr(t, part) for t in picked], rng, False)
        for part in ("query", "positive", "negative")
    )

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

import hashlib
import json
import logging
import pickle
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from visnet.model.checkpoint import atomic_torch_save, fingerprint
from visnet.model.visnet import VisNet
from visnet.training.datasets import (
    JITTER_MARGIN,
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


def batchnorm_on_running_stats(module: nn.Module) -> None:
    """Keep BatchNorm layers on their pretrained running statistics (small, few-class batches
    would skew them); their affine weights still train."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()


class FeatureCache:
    """`versions` augmented views of each image, as (frozen-prefix features, quarter image).

    Version 0 of every image is its deterministic eval view (what search embeds); the others
    are drawn from `train_transform` with a generator seeded by `seed`, so a rebuilt cache (on
    resume) is the same cache. Given a `store` folder, the cache is saved there under a key of
    everything it depends on (images, transforms, prefix weights, versions, seed), and the next
    run with the same key (another loss, another split, a resume) loads it instead.
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
        store: Path | None = None,
    ) -> None:
        if versions < 1:
            raise ValueError(f"cache versions must be at least 1; got {versions}")
        if not refs:
            raise ValueError("nothing to cache: no readable training image")
        self.refs = sorted(set(refs), key=str)
        self.row = {ref: i for i, ref in enumerate(self.refs)}
        self.versions = versions
        parts = [[str(r) for r in self.refs], versions, seed, repr(eval_transform)]
        parts += [repr(train_transform), fingerprint(split.prefix)]
        if bank.margin != JITTER_MARGIN:  # (caches made before the margin was a setting hold)
            parts.append(f"street margin {bank.margin}")
        key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
        saved = store / f"features-{key}.pt" if store is not None else None
        if saved is not None and saved.is_file():
            try:
                self.features, self.quarters = torch.load(saved, weights_only=True)
                log.info("loaded cached features from %s", saved)
                return
            except (RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError) as exc:
                # a damaged file (a full disk, say): compute the features again
                log.warning("cached features %s unreadable (%s); computing them again", saved, exc)
        self._compute(split, bank, eval_transform, train_transform, seed, batch_size)
        if saved is not None:
            atomic_torch_save((self.features, self.quarters), saved)

    def _compute(
        self,
        split: FrozenSplit,
        bank: ImageBank,
        eval_transform: Transform,
        train_transform: Transform,
        seed: int,
        batch_size: int,
    ) -> None:
        versions = self.versions
        generator = torch.Generator().manual_seed(seed)
        features, quarters = [], []
        jobs = [(ref, v) for v in range(versions) for ref in self.refs]
        prefix = _onnx_runner(split.prefix, eval_transform(bank[self.refs[0]]).shape)
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
                batch = torch.stack(images)
                features.append(prefix(batch).half())
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


def _onnx_runner(module: nn.Module, shape: torch.Size) -> Callable[[torch.Tensor], torch.Tensor]:
    """`module` (frozen, eval mode) as an onnxruntime session: 2.4x torch's speed on the whole
    default model here (benchmarks/embed.py, 2026-12-02). Falls back to torch if export fails."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "prefix.onnx"
        try:
            torch.onnx.export(
                module,
                (torch.zeros(1, *shape),),
                str(path),
                dynamo=False,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
            )
        except Exception as exc:  # noqa: BLE001 - any exporter failure: torch still works
            log.warning("onnx export of the frozen prefix failed (%s); caching with torch", exc)
            return lambda x: module(x.contiguous(memory_format=torch.channels_last))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])

    return run


class CachedForward(nn.Module):
    """The rest of a VisNet, from cached prefix features and quarter images to embeddings."""

    def __init__(self, model: VisNet, split: FrozenSplit) -> None:
        super().__init__()
        self.model, self.suffix = model, split.suffix

    @torch.inference_mode()
    def embed_clean(self, cache: FeatureCache, refs: Sequence[ImageRef]) -> np.ndarray:
        """Embeddings of the eval views (version 0) of cached images, in batches."""
        rows = cache.rows(refs, np.random.default_rng(0), clean=True)
        out = [
            self(cache.features[rows[i : i + 256]], cache.quarters[rows[i : i + 256]]).numpy()
            for i in range(0, len(rows), 256)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.model.config.embed_dim))

    def forward(self, features: torch.Tensor, quarters: torch.Tensor) -> torch.Tensor:
        model = self.model
        deep = model.deep.head(self.suffix(features.float()))
        parts = [F.normalize(deep, dim=1)]
        if model.shallow is not None:
            parts.append(model.shallow.from_quarter(quarters.float()))
        return F.normalize(model.projection(torch.cat(parts, dim=1)), dim=1)


class CachedPairSampler(PairSampler):
    """`PairSampler`'s batches (same products, same street/view mix) as cache rows."""

    def __init__(
        self,
        table: list[ProductViews],
        cache: FeatureCache,
        groups: dict[int, str] | None = None,
        variant_fraction: float = 0.0,
        **kwargs: float,
    ) -> None:
        # the transform is never called: batches are cache rows, not pixels
        super().__init__(table, cache, lambda image: image, **kwargs)  # type: ignore[arg-type,return-value]
        self.cache, self.variant_fraction = cache, variant_fraction
        by_group: dict[str, list[int]] = {}
        for i, entry in enumerate(table):
            by_group.setdefault((groups or {}).get(entry.product, str(entry.product)), []).append(i)
        self.families = [rows for rows in by_group.values() if len(rows) > 1]
        self.family_of = {r: i for i, rows in enumerate(by_group.values()) for r in rows}

    def _rows(self, size: int, rng: np.random.Generator) -> list[int]:
        """Like PairSampler's, plus whole families of colour variants for a `variant_fraction`
        of the batch: the hardest negatives (same shape, other colour) sit in the same batch."""
        chosen: list[int] = []
        wanted = int(size * self.variant_fraction)
        while self.families and len(chosen) < wanted:
            family = self.families[int(rng.integers(len(self.families)))]
            chosen += [r for r in family[: max(0, size - len(chosen))] if r not in chosen]
        rest = [r for r in super()._rows(size, rng) if r not in chosen]
        return (chosen + rest)[:size]

    def batch(  # type: ignore[override]
        self, size: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
        """Cache rows of the queries and of their positives, the product of each pair, and its
        colour-variant family (an id shared by the variants of one product)."""
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
        families = torch.tensor([self.family_of[r] for r in rows])
        queries_rows = self.cache.rows(queries, rng, False)
        return queries_rows, self.cache.rows(positives, rng, False), labels, families


def triplet_rows(
    triplets: Sequence[Triplet], cache: FeatureCache, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cache rows of `size` random triplets (query, positive, negative), random versions."""
    picked = [triplets[int(i)] for i in rng.choice(len(triplets), min(size, len(triplets)), False)]
    return tuple(  # type: ignore[return-value]
        cache.rows([getattr(t, part) for t in picked], rng, False)
        for part in ("query", "positive", "negative")
    )

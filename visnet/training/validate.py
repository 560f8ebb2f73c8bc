"""Validation during training, on held-out training products: street-to-shop recall@k, and the
recommendation figures among their catalog views (other view recall@1, colour-variant AUC)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from visnet.embed.pipeline import Item, PipelineSettings, embed_items
from visnet.eval.metrics import dedupe_products, recall_at_k
from visnet.eval.recommend import recommendation_quality
from visnet.model.visnet import VisNet
from visnet.training.datasets import ImageBank, ImageRef, ProductViews, Transform

BATCH_SIZE = 128


class _TrainingModel:
    """The model being trained as an `Embedder` for the embedding pipeline: the given transform,
    no copy of the weights, no fingerprint (they change every step)."""

    name = "model-in-training"

    def __init__(self, model: VisNet, transform: Transform) -> None:
        self.model, self.transform, self.dim = model, transform, model.config.embed_dim

    @torch.inference_mode()
    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.model(torch.stack([self.transform(im) for im in images])).float().numpy()


def _embed(refs: Sequence[ImageRef], bank: ImageBank, embedder: _TrainingModel) -> np.ndarray:
    # the bank holds decoded, cropped images: the pipeline's reader passes them through
    items = [Item(i, bank[ref]) for i, ref in enumerate(refs)]
    settings = PipelineSettings(batch_size=BATCH_SIZE, threads=1, desc="validate")
    return embed_items(items, embedder, settings).single()


def validation_recall(
    model: VisNet,
    queries: list[ProductViews],
    gallery: list[ProductViews],
    bank: ImageBank,
    transform: Transform,
    ks: Sequence[int] = (1, 5, 20),
    embed_refs: Callable[[Sequence[ImageRef]], np.ndarray] | None = None,
    variants: Mapping[int, str] | None = None,
) -> dict[str, float]:
    """Street crops of `queries` searched, within their category, over the views of `gallery`.

    With `variants` (product -> colour-variant group), also the recommendation figures of
    `visnet eval` among the queries' own catalog views: `val_other_view@1` and `val_variant_auc`
    (the share of unrelated products of its category ranked below a product's best variant).

    `embed_refs` replaces the model's forward on the bank's images (the cached trainer embeds
    from its cache of the frozen layers' output: the same vectors, a fraction of the time)."""
    was_training = model.training
    model.eval()
    if embed_refs is None:
        embedder = _TrainingModel(model, transform)

        def embed_refs(refs: Sequence[ImageRef]) -> np.ndarray:
            return _embed(refs, bank, embedder)

    refs = [v for g in gallery for v in g.views]
    owners = np.array([g.product for g in gallery for _ in g.views])
    cats = np.array([g.category for g in gallery for _ in g.views])
    database = embed_refs(refs)
    q_refs = [(s, q.product, q.category) for q in queries for s in q.street]
    vectors = embed_refs([r for r, _, _ in q_refs])
    rankings, truth = [], []
    for vector, (_, product, category) in zip(vectors, q_refs, strict=True):
        rows = np.flatnonzero(cats == category)
        order = rows[np.argsort(-(database[rows] @ vector), kind="stable")]
        rankings.append(dedupe_products(owners[order].tolist(), limit=max(ks)))
        truth.append(product)
    model.train(was_training)
    if not truth:
        return {f"recall@{k}": 0.0 for k in ks}
    result = {f"recall@{k}": float(v) for k, v in recall_at_k(rankings, truth, ks).items()}
    if variants is not None:
        own = np.isin(owners, [q.product for q in queries])
        reco = recommendation_quality(
            database[own], owners[own].tolist(), cats[own].tolist(), variants
        )
        for key, name in (
            ("other_view_recall@1", "val_other_view@1"),
            ("variant_auc", "val_variant_auc"),
        ):
            if reco.get(key) is not None:
                result[name] = float(reco[key])
    return result

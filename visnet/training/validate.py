"""Validation during training: street-to-shop recall@k on held-out training products."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from visnet.eval.metrics import dedupe_products, recall_at_k
from visnet.model.visnet import VisNet
from visnet.training.datasets import ImageBank, ImageRef, ProductViews, Transform


@torch.inference_mode()
def _embed(
    model: VisNet, refs: Sequence[ImageRef], bank: ImageBank, transform: Transform
) -> np.ndarray:
    out = []
    for start in range(0, len(refs), 128):
        batch = torch.stack([transform(bank[r]) for r in refs[start : start + 128]])
        out.append(model(batch).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.embed_dim), np.float32)


def validation_recall(
    model: VisNet,
    queries: list[ProductViews],
    gallery: list[ProductViews],
    bank: ImageBank,
    transform: Transform,
    ks: Sequence[int] = (1, 5, 20),
) -> dict[str, float]:
    """Street crops of `queries` searched, within their category, over the views of `gallery`."""
    was_training = model.training
    model.eval()
    refs = [v for g in gallery for v in g.views]
    owners = np.array([g.product for g in gallery for _ in g.views])
    cats = np.array([g.category for g in gallery for _ in g.views])
    database = _embed(model, refs, bank, transform)
    q_refs = [(s, q.product, q.category) for q in queries for s in q.street]
    vectors = _embed(model, [r for r, _, _ in q_refs], bank, transform)
    rankings, truth = [], []
    for vector, (_, product, category) in zip(vectors, q_refs, strict=True):
        rows = np.flatnonzero(cats == category)
        order = rows[np.argsort(-(database[rows] @ vector), kind="stable")]
        rankings.append(dedupe_products(owners[order].tolist(), limit=max(ks)))
        truth.append(product)
    model.train(was_training)
    if not truth:
        return {f"recall@{k}": 0.0 for k in ks}
    return {f"recall@{k}": float(v) for k, v in recall_at_k(rankings, truth, ks).items()}

"""Judging: pure metrics, the Street2Shop retrieval protocol, the embedding cache and reports."""

from visnet.eval.metrics import (
    average_precision,
    dedupe_products,
    mean_average_precision,
    precision_at_k,
    recall_at_k,
)

__all__ = [
    "average_precision",
    "dedupe_products",
    "mean_average_precision",
    "precision_at_k",
    "recall_at_k",
]

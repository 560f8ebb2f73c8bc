"""Retrieval metrics against hand-worked examples and a library reference."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from visnet.eval.metrics import (
    average_precision,
    dedupe_products,
    mean_average_precision,
    precision_at_k,
    recall_at_k,
)

RANKED = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
TRUTH = [2, 10, 9]  # found at rank 2, never, at rank 3


def test_dedupe_keeps_first_occurrence_in_order() -> None:
    assert dedupe_products([7, 3, 7, 5, 3]) == [7, 3, 5]
    assert dedupe_products([7, 3, 7, 5, 3], limit=2) == [7, 3]
    assert dedupe_products([]) == []


def test_recall_at_k_hand_worked() -> None:
    assert recall_at_k(RANKED, TRUTH, ks=(1, 2, 3, 20)) == {1: 0.0, 2: 1 / 3, 3: 2 / 3, 20: 2 / 3}


def test_recall_counts_a_product_once_after_dedupe() -> None:
    photos_as_products = [5, 5, 5, 8]  # four photos, two products
    ranking = dedupe_products(photos_as_products)
    assert recall_at_k([ranking], [8], ks=(1, 2)) == {1: 0.0, 2: 1.0}


def test_precision_at_k_hand_worked() -> None:
    result = precision_at_k(RANKED, TRUTH, ks=(1, 2, 3))
    assert result[1] == 0.0
    assert result[2] == pytest.approx((1 / 2) / 3)
    assert result[3] == pytest.approx((1 / 3 + 1 / 3) / 3)


def test_average_precision_hand_worked() -> None:
    assert average_precision([1, 2, 3, 4], {2, 4}) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert average_precision([1, 2, 3], {1, 5}) == pytest.approx(0.5)  # 5 never found
    assert average_precision([9, 9, 3], 3) == pytest.approx(0.5)  # duplicates collapse first
    assert average_precision([1, 2], 7) == 0.0


def test_mean_average_precision_hand_worked() -> None:
    assert mean_average_precision([[1, 2], [3, 4]], [1, 4]) == pytest.approx((1.0 + 0.5) / 2)


def test_average_precision_matches_sklearn_on_full_rankings() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        ranking = rng.permutation(30).tolist()
        relevant = set(rng.choice(30, size=int(rng.integers(1, 6)), replace=False).tolist())
        labels = [item in relevant for item in ranking]
        scores = -np.arange(len(ranking))
        assert average_precision(ranking, relevant) == pytest.approx(
            average_precision_score(labels, scores)
        )


@pytest.mark.parametrize(
    ("ranked", "truth", "ks"),
    [([[1]], [1, 2], (1,)), ([], [], (1,)), ([[1]], [1], (0,)), ([[1]], [1], ())],
)
def test_bad_inputs_raise(ranked: list, truth: list, ks: tuple) -> None:
    with pytest.raises(ValueError):
        recall_at_k(ranked, truth, ks)


def test_average_precision_needs_a_relevant_item() -> None:
    with pytest.raises(ValueError, match="relevant"):
        average_precision([1, 2], set())

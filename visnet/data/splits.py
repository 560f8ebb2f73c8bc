"""Validation splits of a set's training products, the same for every trainer.

The embedding trainer and the detector trainer both hold out whole colour-variant groups of
training products (a variant shares its shape, so it must not train while its sibling
validates), drawn with one seeded rule: a run's validation products are a function of the data
set, the fraction and the seed, so a later command (`visnet train --validate`,
`visnet detect eval --split val`) can name the same products.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from visnet.data.catalog import read_side_info, side_attribute
from visnet.data.street2shop import Street2ShopSet

__all__ = ["VAL", "validation_pairs", "validation_products", "variant_groups"]

VAL = "val"  # the name commands give the held-out part of the train split


def variant_groups(root: Path | str, products: list[int]) -> dict[int, str]:
    """Product -> shape group, from catalog.jsonl's `variant_of` where the set has one."""
    bases = side_attribute(read_side_info(Path(root)), "variant_of")
    return {p: bases.get(p, str(p)) for p in products}


def validation_products(
    data: Street2ShopSet, fraction: float, seed: int, categories: str = ""
) -> set[int]:
    """Training products held out for validation: `fraction` of the shape groups (seeded), or,
    with `categories` (comma-separated), every product of those whole categories."""
    products = sorted({p.product for p in data.pairs.get("train", [])})
    if not products:
        raise ValueError(f"{data.root}: the train split has no street photos to learn from")
    if categories:  # whole categories held out: does it generalise to new kinds?
        wanted = {c.strip() for c in categories.split(",") if c.strip()}
        category = {pair.product: pair.category for pair in data.pairs["train"]}
        unknown = wanted - set(category.values())
        if unknown:
            raise ValueError(f"val_categories {sorted(unknown)} not in the train split")
        return {p for p in products if category[p] in wanted}
    groups = variant_groups(data.root, products)
    names = sorted(set(groups.values()))
    rng = np.random.default_rng(seed + 1)
    count = int(round(fraction * len(names)))
    held_groups = set(rng.choice(names, count, replace=False).tolist()) if count else set()
    return {p for p in products if groups[p] in held_groups}


def validation_pairs(data: Street2ShopSet, held: set[int]) -> tuple[list, list]:
    """The train split's pairs as (train, validation): a street photo that shows a held-out
    product goes to validation with all its pairs, so no trained photo shows one."""
    shown = {pair.photo for pair in data.pairs.get("train", []) if pair.product in held}
    train = [pair for pair in data.pairs.get("train", []) if pair.photo not in shown]
    val = [pair for pair in data.pairs.get("train", []) if pair.photo in shown]
    return train, val

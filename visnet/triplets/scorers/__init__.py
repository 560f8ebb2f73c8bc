"""BISS scorers (colour, texture, deep, pHash): catalog images -> unit vectors, fused by rank."""

from visnet.triplets.scorers.fusion import FUSION_METHODS, fuse_ranks, fused_order, similarity_ranks
from visnet.triplets.scorers.registry import (
    get_scorer,
    known_scorers,
    parse_weights,
    register_scorer,
)

__all__ = [
    "FUSION_METHODS",
    "fuse_ranks",
    "fused_order",
    "get_scorer",
    "known_scorers",
    "parse_weights",
    "register_scorer",
    "similarity_ranks",
]

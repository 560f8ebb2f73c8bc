"""Image embedders: the cheap hand-made ones (baselines and BISS scorers) and the trained model.

Every embedder satisfies `Embedder`: a name, a dimension, and `embed(images) -> (n, dim)` float32
rows with unit L2 norm, so search, evaluation and triplet scoring treat them all alike.
"""

from visnet.features.base import Embedder

__all__ = ["Embedder"]

"""PCA fitted on the catalog's embeddings, applied before k-NN, saved with the index as one .npy.

The fit is scikit-learn's (`sklearn.decomposition.PCA`, exact SVD); `PCA` keeps what it learnt
(the mean and the components), so an index folder holds it as plain numbers and names it by a
fingerprint. The evaluation reduces with this same class, so it measures what serving runs.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA as SklearnPCA

from visnet.features.base import l2_normalise
from visnet.io import atomic_open

__all__ = ["PCA", "fit_pca", "l2_normalise", "max_components"]

log = logging.getLogger(__name__)

FILE_NAME = "pca.npy"


@dataclass(frozen=True)
class PCA:
    """``apply(x) = normalise((x - mean) @ components.T)``; components are (out_dim, in_dim).

    Before normalising, that is scikit-learn's ``PCA.transform`` (no whitening) of the fitted
    model, which `tests/index/test_index.py` checks.
    """

    mean: np.ndarray
    components: np.ndarray

    @property
    def in_dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def fingerprint(self) -> str:
        """16 hex digits of a hash of the mean and the components."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.mean, dtype="<f4").tobytes())
        digest.update(np.ascontiguousarray(self.components, dtype="<f4").tobytes())
        return digest.hexdigest()[:16]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Project (n, in_dim) vectors to (n, out_dim) and re-normalise them."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"PCA expects vectors of shape (n, {self.in_dim}); got {x.shape}")
        return l2_normalise((x - self.mean) @ self.components.T)

    def save(self, folder: str | Path) -> Path:
        """Write ``pca.npy``: row 0 is the mean, the other rows the components."""
        path = Path(folder) / FILE_NAME
        table = np.vstack([self.mean[None, :], self.components]).astype(np.float32)
        with atomic_open(path, "wb") as f:
            np.save(f, table)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> PCA:
        """Read ``pca.npy`` written by ``save``."""
        table = np.load(Path(folder) / FILE_NAME)
        return cls(mean=table[0].copy(), components=table[1:].copy())


def max_components(samples: int, in_dim: int) -> int:
    """The most components a PCA of `samples` centred vectors of `in_dim` can keep."""
    return max(0, min(in_dim, samples - 1))


MAX_SAMPLES = 100_000  # a PCA is fitted on at most this many vectors
SAMPLE_SEED = 0


def sample_rows(n: int, max_samples: int | None = None, seed: int = SAMPLE_SEED) -> np.ndarray:
    """The rows (ascending) of `n` that `fit_pca` fits on: all of them, or a seeded sample of
    `max_samples` (default `MAX_SAMPLES`). A caller holding vectors on disk gathers just these
    and gets the same fit."""
    max_samples = max_samples or MAX_SAMPLES
    if n <= max_samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))


def fit_pca(
    vectors: np.ndarray, dim: int = 512, *, max_samples: int | None = None, seed: int = SAMPLE_SEED
) -> PCA:
    """Fit scikit-learn's PCA to ``dim`` components on the rows `sample_rows` picks (a seeded
    sample of at most ``max_samples``).

    ``dim`` is clamped to `max_components` with a logged warning. The fit is deterministic
    (the eigendecomposition of the covariance matrix, `svd_solver="covariance_eigh"`: memory
    of one d x d matrix beside the sample, where a full SVD of 100,000 x 1,280 took gigabytes),
    so equal data gives an equal fingerprint.
    """
    x = np.asarray(vectors)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"fit_pca needs at least 2 vectors of shape (n, d); got {x.shape}")
    if len(x) > (max_samples or MAX_SAMPLES):
        x = x[sample_rows(len(x), max_samples, seed)]
    x = np.asarray(x, dtype=np.float64)
    out = max_components(len(x), x.shape[1])
    if out < dim:
        log.warning(
            "PCA to %d dims asked for %d-D input and %d samples; using %d dims",
            dim,
            x.shape[1],
            len(x),
            out,
        )
    fitted = SklearnPCA(n_components=min(dim, out), svd_solver="covariance_eigh").fit(x)
    return PCA(
        mean=fitted.mean_.astype(np.float32), components=fitted.components_.astype(np.float32)
    )

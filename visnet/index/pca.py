"""PCA fitted on the catalog's embeddings, applied before k-NN, saved with the index as one .npy."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["PCA", "fit_pca", "l2_normalise"]

log = logging.getLogger(__name__)

FILE_NAME = "pca.npy"


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class PCA:
    """``apply(x) = normalise((x - mean) @ components.T)``; components are (out_dim, in_dim)."""

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
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.vstack([self.mean[None, :], self.components]).astype(np.float32))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> PCA:
        """Read ``pca.npy`` written by ``save``."""
        table = np.load(Path(folder) / FILE_NAME)
        return cls(mean=table[0].copy(), components=table[1:].copy())


def _clamp(dim: int, n: int, in_dim: int) -> int:
    out = min(dim, in_dim, n - 1)
    if out < dim:
        log.warning(
            "PCA to %d dims asked for %d-D input and %d samples; using %d dims", dim, in_dim, n, out
        )
    return out


def fit_pca(
    vectors: np.ndarray, dim: int = 512, *, max_samples: int = 100_000, seed: int = 0
) -> PCA:
    """Fit a PCA to ``dim`` components on (a seeded sample of at most ``max_samples``) rows.

    ``dim`` is clamped to the input dimension and to ``samples - 1`` with a logged warning.
    Component signs are fixed (largest entry positive) so equal data gives an equal fingerprint.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"fit_pca needs at least 2 vectors of shape (n, d); got {x.shape}")
    if len(x) > max_samples:
        rows = np.random.default_rng(seed).choice(len(x), max_samples, replace=False)
        x = x[np.sort(rows)]
    out = _clamp(dim, len(x), x.shape[1])
    mean = x.mean(axis=0)
    centred = x - mean
    if len(x) >= x.shape[1]:
        values, vecs = np.linalg.eigh(centred.T @ centred)
        components = vecs[:, np.argsort(values)[::-1][:out]].T
    else:
        components = np.linalg.svd(centred, full_matrices=False)[2][:out]
    signs = np.sign(components[np.arange(out), np.abs(components).argmax(axis=1)])
    components = components * np.where(signs == 0, 1.0, signs)[:, None]
    return PCA(mean=mean.astype(np.float32), components=components.astype(np.float32))

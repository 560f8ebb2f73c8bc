"""The Ray engine of the feature-vector job: the embedding pipeline on Ray Data actors.

``visnet embed --engine ray`` embeds the catalog views still to do as a Ray Data dataset of
(key, image path) rows, mapped by ``map_batches`` over a pool of actors; each actor resolves the
model once (`create_embedder`: onnxruntime by default, `threads` intra-op threads) and runs the
same pipeline as the local job on its batches (`run_pipeline`: decode, crop, embed; a bad image
skipped with its reason). The driver turns the answers back into pipeline `Batch`es, and the
job's own writer (`visnet.embed.job`) writes the same resumable shards, in catalog order, so
``visnet index build`` reads either job's output and either job resumes the other's.

Every worker must reach the model file and the images at the paths the driver names (a shared
file system, or the same layout on every node). Each answer carries the worker's weights
fingerprint; one that differs from the driver's (another file at that path) stops the job.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visnet.embed.pipeline import Batch, Item, PipelineSettings, Skipped, run_pipeline
from visnet.embed.registry import Backend, create_embedder, embedder_fingerprint
from visnet.features.base import Embedder

__all__ = ["RayEngine", "RaySettings", "WorkerStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RaySettings:
    """How the job runs on Ray.

    ``model`` and ``backend``: what each actor passes to `create_embedder` (``auto`` is not
    allowed: nodes of a cluster could pick different arithmetic). ``workers`` actors of
    ``cpus_per_worker`` CPUs each (CPU only: `create_embedder` has no GPU device yet);
    ``threads``: onnxruntime's intra-op threads in an actor (0: its CPUs); ``batch_size`` images
    a call. ``memory_per_worker``: GiB of memory each actor asks Ray for (0: none, Ray's
    default), so a node runs no more actors than its memory holds: the default model's actor
    used 2.9 GiB at batches of 64 (Ray's own report, `benchmarks/ray_embed.py`). ``address``: the
    cluster (``auto``, ``ray://head:10001``), None for ``RAY_ADDRESS`` or a local instance.
    """

    model: str
    backend: Backend = "onnx"
    workers: int = 2
    cpus_per_worker: float = 1.0
    threads: int = 0
    batch_size: int = 64
    memory_per_worker: float = 0.0
    address: str | None = None

    def __post_init__(self) -> None:
        if self.backend == "auto":
            raise ValueError("the Ray engine needs an explicit backend (onnx, torch, torch-bf16)")
        if self.workers < 1 or self.batch_size < 1 or self.cpus_per_worker <= 0:
            raise ValueError(
                "need workers >= 1, batch_size >= 1 and cpus_per_worker > 0; got "
                f"{self.workers}, {self.batch_size}, {self.cpus_per_worker}"
            )
        if self.memory_per_worker < 0:
            raise ValueError(f"memory_per_worker must be >= 0 GiB; got {self.memory_per_worker}")

    @property
    def intra_threads(self) -> int:
        return self.threads or max(1, int(self.cpus_per_worker))


@dataclass
class WorkerStats:
    """What one actor did: images embedded or skipped, and seconds spent in its calls."""

    images: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Images a second while busy (the per-worker throughput a cluster multiplies)."""
        return self.images / self.seconds if self.seconds else 0.0


class _EmbedActor:
    """A Ray Data actor: holds one embedder and runs the pipeline over each batch it is given."""

    def __init__(self, settings: RaySettings) -> None:
        if settings.backend != "onnx":
            import torch

            torch.set_num_threads(settings.intra_threads)
        self.embedder = create_embedder(
            settings.model, settings.backend, settings.batch_size, settings.intra_threads
        )
        self.fingerprint = embedder_fingerprint(self.embedder)
        # one decode thread beside the forward pass, as the local job on one core
        self.pipeline = PipelineSettings(batch_size=settings.batch_size, threads=1, prefetch=0)
        self.worker = f"{os.uname().nodename}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        pairs = zip(batch["key"], batch["image"], strict=True)
        items = [Item(int(key), str(image) or None) for key, image in pairs]
        name = self.embedder.name
        vectors = np.zeros((len(items), self.embedder.dim), np.float32)
        reasons, details = [""] * len(items), [""] * len(items)
        row = {item.key: i for i, item in enumerate(items)}
        for done in run_pipeline(items, {name: self.embedder}, self.pipeline):
            for key, vector in zip(done.keys, done.vectors[name], strict=True):
                vectors[row[key]] = vector
            for skipped in done.skipped:
                reasons[row[skipped.key]] = skipped.reason
                details[row[skipped.key]] = skipped.detail
        n = len(items)
        return {
            "key": np.asarray(batch["key"], np.int64),
            "vector": vectors,
            "reason": np.asarray(reasons, dtype=object),
            "detail": np.asarray(details, dtype=object),
            "worker": np.asarray([self.worker] * n, dtype=object),
            "fingerprint": np.asarray([self.fingerprint] * n, dtype=object),
            "seconds": np.full(n, (time.perf_counter() - start) / max(n, 1)),
        }


@dataclass
class RayEngine:
    """An `Engine` for `run_embed_job`: the items embedded by Ray Data actors.

    ``stats``: per worker, what it embedded and how long it was busy (after a run)."""

    settings: RaySettings
    stats: dict[str, WorkerStats] = field(default_factory=dict)

    def __call__(
        self, items: list[Item], embedder: Embedder, settings: PipelineSettings
    ) -> Iterator[Batch]:
        if not items:
            return
        import ray

        started = self._connect(ray)
        try:
            yield from self._embed(ray, items, embedder)
        finally:
            if started:  # a local instance this job started ends with it
                ray.shutdown()

    def _embed(self, ray: Any, items: list[Item], embedder: Embedder) -> Iterator[Batch]:
        rows = [{"key": int(item.key), "image": str(item.source or "")} for item in items]
        dataset = ray.data.from_items(rows, override_num_blocks=self._blocks(len(rows)))
        gib = self.settings.memory_per_worker
        reserve = {"memory": int(gib * 2**30)} if gib else {}  # Ray's scheduling, not a limit
        mapped = dataset.map_batches(
            _EmbedActor,
            fn_constructor_kwargs={"settings": self.settings},
            batch_size=self.settings.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.settings.workers),
            num_cpus=self.settings.cpus_per_worker,
            **reserve,
        )
        expected = embedder_fingerprint(embedder)
        for answer in mapped.iter_batches(batch_size=None, batch_format="numpy"):
            yield self._batch(answer, embedder.name, expected)

    def _connect(self, ray: Any) -> bool:
        """Join the cluster, or start a local instance; True when this call started one."""
        if ray.is_initialized():
            return False
        ray.data.DataContext.get_current().enable_progress_bars = False
        if self.settings.address is None and not os.environ.get("RAY_ADDRESS"):
            cpus = int(np.ceil(self.settings.workers * self.settings.cpus_per_worker))
            ray.init(num_cpus=cpus, include_dashboard=False)
            return True
        ray.init(address=self.settings.address)
        return False

    def _blocks(self, rows: int) -> int:
        """Enough blocks for every worker to have a few (a block is Ray's unit of work)."""
        per_block = max(self.settings.batch_size, rows // (4 * self.settings.workers) or 1)
        return max(1, -(-rows // per_block))

    def _batch(self, answer: dict[str, np.ndarray], name: str, expected: str) -> Batch:
        wrong = set(answer["fingerprint"]) - {expected}
        if wrong:
            raise RuntimeError(
                f"a Ray worker loaded another model (fingerprint {wrong.pop()}) than the driver "
                f"({expected}): every node must read the same file at {self.settings.model}"
            )
        for worker, seconds in zip(answer["worker"], answer["seconds"], strict=True):
            stats = self.stats.setdefault(str(worker), WorkerStats())
            stats.images += 1
            stats.seconds += float(seconds)
        good = answer["reason"] == ""
        keys = answer["key"]
        skipped = [
            Skipped(int(key), str(reason), str(detail))
            for key, reason, detail in zip(
                keys[~good], answer["reason"][~good], answer["detail"][~good], strict=True
            )
        ]
        return Batch([int(k) for k in keys[good]], {name: answer["vector"][good]}, skipped)

"""The one batch embedding runner: reader (parallel decode + crop) -> mapper (embed) -> writer.

Every batch of images in the package is embedded here: the feature-vector job and the index
build (catalog files), the evaluation (catalog photos and street crops), training validation
(images already decoded in memory) and the BISS scorers (several embedders over one decode).

- reader: `read_batches` decodes items through `visnet.images` (the safe decoder) on a few
  threads, a couple of batches ahead of the mapper, and cuts each item's crop with the one crop
  function (`visnet.detect.crops.crop_with_margin`);
- mapper: `embed_batch` runs one embedder over a batch and checks the shape it returns. A run
  with one embedder that offers `prepare(image)` and `embed_prepared(inputs)` (the networks:
  resize and normalise) has its readers run `prepare` too, so that work overlaps the forward
  pass instead of following it;
- runner: `run_pipeline` joins them and yields `Batch`es in input order; a writer consumes them
  (`collect` keeps them in memory; `visnet.embed.job` writes shards).

A bad item (missing file, undecodable bytes, a box outside the photo) is skipped with a short,
countable reason; it is never fatal. The runner logs how many it skipped.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from visnet.features.base import Embedder
from visnet.images import ImageError, load_image

__all__ = [
    "MISSING",
    "OUTSIDE",
    "Batch",
    "Embedded",
    "Item",
    "PipelineSettings",
    "Skipped",
    "collect",
    "embed_batch",
    "embed_items",
    "read_batches",
    "read_item",
    "run_pipeline",
]

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]
Source = str | Path | bytes | Image.Image

MISSING = "missing image file"
OUTSIDE = "box outside the photo"


@dataclass(frozen=True)
class Item:
    """One image to embed.

    `key` is the caller's name for it (a photo id, a row); `source` a file, raw bytes, an
    already-decoded image, or None for a file known to be missing; `box` an optional crop
    (xyxy pixels) grown by `margin` of its width and height on each side.
    """

    key: Any
    source: Source | None
    box: Box | None = None
    margin: float = 0.0


@dataclass(frozen=True)
class Skipped:
    """An item that could not be embedded: a short countable `reason` and the full `detail`."""

    key: Any
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class PipelineSettings:
    """How the runner works: images per embedder call, reader threads, batches read ahead."""

    batch_size: int = 64
    threads: int = 2
    prefetch: int = 2
    progress: bool = False
    desc: str = "embed"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.threads < 1 or self.prefetch < 0:
            raise ValueError(
                "need batch_size >= 1, threads >= 1 and prefetch >= 0; got "
                f"{self.batch_size}, {self.threads}, {self.prefetch}"
            )


@dataclass
class Batch:
    """One mapped batch: the keys embedded (input order), their vectors per embedder, the skips."""

    keys: list[Any]
    vectors: dict[str, np.ndarray]
    skipped: list[Skipped]


@dataclass
class Embedded:
    """Everything a run embedded: keys in input order, vectors per embedder, the skipped items."""

    keys: list[Any]
    vectors: dict[str, np.ndarray]
    skipped: list[Skipped] = field(default_factory=list)

    def single(self) -> np.ndarray:
        """The vectors of the run's only embedder."""
        if len(self.vectors) != 1:
            raise ValueError(f"this run had {len(self.vectors)} embedders; pick one by name")
        return next(iter(self.vectors.values()))


# ------------------------------------------------------------------------------------ reader


def read_item(item: Item) -> Image.Image | Skipped:
    """Decode and crop one item, or say why it cannot be embedded (never raises ImageError)."""
    if item.source is None:
        return Skipped(item.key, MISSING)
    if isinstance(item.source, Image.Image):
        image = item.source
    else:
        try:
            image = load_image(item.source)
        except ImageError as exc:
            detail = f"{type(exc).__name__}: {exc}"
            return Skipped(item.key, f"unreadable image ({exc.code})", detail)
    if item.box is None:
        return image
    # imported here: visnet.detect's package import loads torchvision (seconds), which an
    # uncropped run (the index build of a baseline) never needs
    from visnet.images import box_overlaps, crop_with_margin

    if not box_overlaps(item.box, image.size):
        return Skipped(item.key, OUTSIDE, f"box {item.box} outside the {image.size} photo")
    return crop_with_margin(image, item.box, item.margin)


def read_batches(
    items: Iterable[Item],
    batch_size: int = 64,
    threads: int = 2,
    prefetch: int = 2,
    prepare: Callable[[Image.Image], Any] | None = None,
) -> Iterator[list[tuple[Item, Any]]]:
    """Batches of (item, image or Skipped) in input order, decoded on `threads` threads while
    the consumer works on earlier batches (at most `prefetch` batches ahead). With `prepare`,
    each decoded image goes through it on the same threads: (item, prepared or Skipped)."""
    read = read_item if prepare is None else functools.partial(_read_prepared, prepare=prepare)
    source = iter(items)
    ahead = batch_size * (prefetch + 1)
    pending: deque[tuple[Item, Future]] = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="visnet-read") as pool:

        def fill() -> None:
            while len(pending) < ahead:
                item = next(source, None)
                if item is None:
                    return
                pending.append((item, pool.submit(read, item)))

        fill()
        while pending:
            count = min(batch_size, len(pending))
            batch = [pending.popleft() for _ in range(count)]
            fill()  # queue the next reads before handing this batch over
            yield [(item, future.result()) for item, future in batch]


def _read_prepared(item: Item, prepare: Callable[[Image.Image], Any]) -> Any:
    image = read_item(item)
    return image if isinstance(image, Skipped) else prepare(image)


# ------------------------------------------------------------------------------------ mapper


def embed_batch(embedder: Embedder, images: list[Any], prepared: bool = False) -> np.ndarray:
    """`embedder` over `images` (inputs from its `prepare` if `prepared`): float32
    (len(images), dim); a wrong shape is a ValueError."""
    if not images:
        return np.zeros((0, embedder.dim), np.float32)
    run = embedder.embed_prepared if prepared else embedder.embed  # type: ignore[attr-defined]
    vectors = np.asarray(run(images), dtype=np.float32)
    if vectors.shape != (len(images), embedder.dim):
        raise ValueError(
            f"embedder {embedder.name!r} returned shape {vectors.shape} for {len(images)} images; "
            f"expected ({len(images)}, {embedder.dim})"
        )
    return vectors


def map_batch(
    read: list[tuple[Item, Any]], embedders: Mapping[str, Embedder], prepared: bool = False
) -> Batch:
    """The mapper: every embedder over the images (or, `prepared`, the one embedder over the
    prepared inputs) of one read batch; the skips pass through."""
    good = [(item.key, image) for item, image in read if not isinstance(image, Skipped)]
    images = [image for _, image in good]
    vectors = {
        name: embed_batch(embedder, images, prepared) for name, embedder in embedders.items()
    }
    skipped = [image for _, image in read if isinstance(image, Skipped)]
    return Batch([key for key, _ in good], vectors, skipped)


def _preparer(embedders: Mapping[str, Embedder]) -> Callable[[Image.Image], Any] | None:
    """The one embedder's `prepare`, if it has one and `embed_prepared` (else None)."""
    if len(embedders) != 1:
        return None  # several embedders share one decode, each with its own preprocessing
    embedder = next(iter(embedders.values()))
    ready = callable(getattr(embedder, "embed_prepared", None))
    return getattr(embedder, "prepare", None) if ready else None


# ------------------------------------------------------------------------------------ runner


def run_pipeline(
    items: Iterable[Item],
    embedders: Mapping[str, Embedder],
    settings: PipelineSettings = PipelineSettings(),
) -> Iterator[Batch]:
    """Read, decode and embed `items` with every embedder of `embedders` (one decode each);
    yield one `Batch` per `settings.batch_size` items read, in input order."""
    if not embedders:
        raise ValueError("run_pipeline needs at least one embedder")
    total = len(items) if isinstance(items, list | tuple) else None
    reasons: Counter[str] = Counter()
    seen = 0
    bar = tqdm(total=total, desc=settings.desc, unit="img", disable=not settings.progress)
    prepare = _preparer(embedders)
    with bar:
        for read in read_batches(
            items, settings.batch_size, settings.threads, settings.prefetch, prepare
        ):
            batch = map_batch(read, embedders, prepared=prepare is not None)
            reasons.update(skipped.reason for skipped in batch.skipped)
            seen += len(read)
            bar.update(len(read))
            yield batch
    _report_skips(settings.desc, reasons, seen)


def _report_skips(desc: str, reasons: Counter[str], seen: int) -> None:
    if reasons:
        counts = ", ".join(f"{why}: {n}" for why, n in reasons.most_common())
        log.warning("%s: skipped %d of %d images (%s)", desc, reasons.total(), seen, counts)


# ------------------------------------------------------------------------------------ writer


def collect(batches: Iterable[Batch], dims: Mapping[str, int]) -> Embedded:
    """The in-memory writer: every batch joined, in order (`dims` sizes empty results)."""
    keys: list[Any] = []
    parts: dict[str, list[np.ndarray]] = {name: [] for name in dims}
    skipped: list[Skipped] = []
    for batch in batches:
        keys += batch.keys
        skipped += batch.skipped
        for name in dims:
            parts[name].append(batch.vectors[name])
    vectors = {
        name: np.concatenate(parts[name]) if parts[name] else np.zeros((0, dim), np.float32)
        for name, dim in dims.items()
    }
    return Embedded(keys, vectors, skipped)


def embed_items(
    items: Iterable[Item],
    embedders: Embedder | Mapping[str, Embedder],
    settings: PipelineSettings = PipelineSettings(),
) -> Embedded:
    """Run the pipeline and keep every vector in memory (`Embedded.single()` for one embedder)."""
    named = {embedders.name: embedders} if isinstance(embedders, Embedder) else dict(embedders)
    dims = {name: e.dim for name, e in named.items()}
    return collect(run_pipeline(items, named, settings), dims)

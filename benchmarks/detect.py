"""Detection time per photo for each registered architecture, untrained weights (speed only).

    .venv/bin/python benchmarks/detect.py --photos 20 --sizes 384 480 --threads 2
    .venv/bin/python benchmarks/detect.py --archs mobilenet_v3_large_fpn efficientnet_lite0_fpn \
        --min-sizes 320 352 384

Each architecture runs at its registered input size (the detector resizes every photo so its
shorter side is `min_size`, shown in the table, and keeps `proposals` region proposals) unless
--min-size (or several, --min-sizes: one row each) is given. Prints the median
time per photo over --photos photos after --warmup untimed ones, one photo per call, the
parameter count and the float16 size of its weight file (`*` marks the default architecture).
Weights are random: speed does not depend on them (a pretrained trunk is not loaded).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from visnet.detect import DEFAULT_ARCH, Detector, DetectorConfig, get_arch, list_archs

CATEGORIES = tuple(f"category-{i}" for i in range(17))  # as many as the demo set has


def _photos(n: int, side: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)
    ]


def _median_ms(detector: Detector, photos: list[Image.Image], warmup: int) -> float:
    for photo in photos[:warmup]:
        detector.detect([photo])
    times = []
    for photo in photos[warmup:]:
        start = time.perf_counter()
        detector.detect([photo])
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _fp16_megabytes(detector: Detector) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = detector.save(Path(tmp) / "d.pt", half=True)
        return path.stat().st_size / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--archs", nargs="*", default=list_archs(), help=f"default: all, {', '.join(list_archs())}"
    )
    parser.add_argument("--sizes", nargs="*", type=int, default=[384, 480])
    parser.add_argument("--photos", type=int, default=20, help="timed photos per cell")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-size", type=int, default=0, help="override every arch's min_size")
    parser.add_argument(
        "--min-sizes", nargs="*", type=int, default=[], help="min_size overrides, a row each"
    )
    args = parser.parse_args()
    min_sizes = args.min_sizes or [args.min_size]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"{args.photos} photos per cell after {args.warmup} warm-up, one per call, "
        f"threads {torch.get_num_threads()}, untrained weights, {len(CATEGORIES)} categories"
    )
    header = "".join(f"{f'{side}x{side} ms':>14}" for side in args.sizes)
    print(
        f"{'architecture':<28}{'min_size':>9}{'proposals':>10}{header}{'params M':>9}{'fp16 MB':>9}"
    )
    for arch in args.archs:
        for min_size in min_sizes:
            max_size = max(min_size, get_arch(arch).max_size) if min_size else 0
            config = DetectorConfig(
                categories=CATEGORIES, arch=arch, min_size=min_size, max_size=max_size
            )
            detector = Detector(config)
            photos = args.photos + args.warmup
            cells = [
                _median_ms(detector, _photos(photos, side, seed=side), args.warmup)
                for side in args.sizes
            ]
            row = "".join(f"{ms:>14.1f}" for ms in cells)
            params = sum(p.numel() for p in detector.model.parameters()) / 1e6
            size = _fp16_megabytes(detector)
            name = f"{arch}{' *' if arch == DEFAULT_ARCH else ''}"
            print(
                f"{name:<28}{config.min_size:>9}{config.proposals:>10}{row}"
                f"{params:>9.2f}{size:>9.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

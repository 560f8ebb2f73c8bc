"""Detector input size against quality and time, on the validation photos (never the test split).

    .venv/bin/python benchmarks/detector_sizes.py --detector models/detector-default.pt \\
        --sizes 288 320 384 [--baseline models/detector-previous.pt]

The validation photos are those of the training products `visnet detect train` holds out by
default (`visnet/data/splits.py`). Each row runs the detector with its short side resized to
SIZE (`model.transform.min_size`), one photo at a time on every core (decoding excluded), and
scores it as `visnet detect eval --split val` does; the last column is the time as a ratio to
the first row's. Run it on a quiet machine: the times are only as good as the machine is idle.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from visnet.detect.detector import Detector
from visnet.detect.evaluate import evaluate_detector

COLUMNS = {
    "top-1 box recall": "top1_box_recall@0.5",
    "any box recall": "box_recall@0.5",
    "product AP (pairs)": "product_ap@0.5",
    "all products AP": "all_products_ap@0.5",
    "all products found": "all_products_recall@0.5",
    "category accuracy": "category_accuracy",
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/demo"))
    p.add_argument("--detector", default="models/detector-default.pt")
    p.add_argument("--sizes", type=int, nargs="+", default=[288, 320, 384])
    p.add_argument("--baseline", default="", help="another detector, at its own size, first")
    p.add_argument("--split", default="val")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    runs = [(args.baseline, 0)] if args.baseline else []
    runs += [(args.detector, size) for size in args.sizes]
    print(f"| detector | short side | {' | '.join(COLUMNS)} | ms/photo | time ratio |")
    print("| --- | ---: |" + " ---: |" * (len(COLUMNS) + 2))
    first = None
    for path, size in runs:
        detector = Detector.load(path)
        if size:
            detector.model.transform.min_size = (size,)
        result = evaluate_detector(detector, args.data, split=args.split)
        ms = result["ms_per_photo_median"]
        first = first or ms
        cells = " | ".join(f"{result[key]:.3f}" for key in COLUMNS.values())
        shown = size or detector.config.min_size
        print(f"| {path} | {shown} | {cells} | {ms:.0f} | {ms / first:.2f}x |", flush=True)


if __name__ == "__main__":
    main()

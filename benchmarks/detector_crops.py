"""How to crop a street photo for search, judged on held-out train products (never the test split).

    .venv/bin/python benchmarks/detector_crops.py --data data/demo \\
        --model models/visnet-default.pt --detector models/detector-default.pt

The queries are the street photos of the train products the embedding model's trainer held out
for validation (whole colour-variant groups; the model never learnt from them, nor did the
default detector, whose trainer holds out the same products; the previous detector saw them).
Each is searched within its category, as in `visnet eval`. Rows: the true box,
the whole photo, the shopper's box (the detected box a shopper looking for the product clicks:
`visnet.detect.crops.shoppers_box`), the detector's best box, and its best boxes merged (each
catalog product keeps its best similarity to any crop, less SCORE_WEIGHT x log(box score / best
score)), at several margins; recall is also given as a ratio to the true box's. A last line
gives how often the best box's category is right, overall and where the detector is at least 0.7
sure of it. This is the
table the crop settings in visnet/detect/crops.py were chosen from. A second table splits the
photos by how well the shopper's box (at the first margin) covers the product, its IoU with the
true box, and counts the photos the box loses against the true box in each band: whether the gap
is the detector's boxes or the embedding's reading of them. With --averaged, rows whose single
query is the mean embedding of several views of the true and of the shopper's box (mirrored;
margins 0 and 0.1; shrunk 5%, as is and grown 10%): test-time augmentation.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from visnet.data.street2shop import read_set
from visnet.detect import Detector, query_boxes
from visnet.detect.crops import SCORE_WEIGHT, box_iou, shoppers_box
from visnet.embed.registry import create_embedder, embedder_fingerprint
from visnet.eval.cache import EmbeddingCache, data_fingerprint, default_cache_dir
from visnet.eval.metrics import dedupe_products
from visnet.eval.protocol import embed_shop
from visnet.images import crop_with_margin, load_image
from visnet.training.trainer import TrainSettings, _split  # the trainer's own held-out products

IOU_BANDS = ((0.0, 0.5), (0.5, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.01))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/demo"))
    p.add_argument("--model", default="models/visnet-default.pt")
    p.add_argument("--detector", default="models/detector-default.pt")
    p.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.1, 0.15, 0.2])
    p.add_argument("--boxes", type=int, nargs="+", default=[1, 3])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--box-voting",
        type=float,
        default=None,
        help="run the detector with this box-voting IoU (DetectorConfig.box_voting; 0: off)",
    )
    p.add_argument(
        "--averaged",
        action="store_true",
        help="also rows whose query averages several views of the true and the shopper's box "
        "(mirrored; margins 0 and 0.1; shrunk 5%%, as is and grown 10%%): test-time augmentation",
    )
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = read_set(args.data)
    _, held = _split(data, TrainSettings(data=str(args.data), out="unused"))
    held_products = {p.product for p in held}
    pairs = [p for p in data.pairs["train"] if p.product in held_products]
    model, detector = create_embedder(args.model), Detector.load(args.detector)
    detector.configure(box_voting=args.box_voting)
    # the evaluation's own cache key: `visnet eval` and this share the catalog embeddings
    base = {"embedder": embedder_fingerprint(model), "data": data_fingerprint(args.data)}
    shop = embed_shop(data, model, EmbeddingCache(default_cache_dir(args.data)), base, True)
    row_of = {photo: row for row, photo in enumerate(shop.ids)}
    catalog = {}
    for category in {p.category for p in pairs}:
        views = [(row_of[s.photo], s.product) for s in data.shop_in(category) if s.photo in row_of]
        catalog[category] = (shop.vectors[[r for r, _ in views]], [p for _, p in views])

    hits: dict[str, list[tuple[bool, bool]]] = {}
    ious: list[float] = []  # the shopper's box against the true box, per photo
    labels: list[tuple[float, bool]] = []
    for pair in tqdm(pairs, desc="queries", unit="photo"):
        image = load_image(data.photo_path(pair.photo))
        found = detector.detect([image])[0]
        if len(found):
            labels.append((float(found.label_scores[0]), found.labels[0] == pair.category))
        chosen = query_boxes(found, max(args.boxes))
        crops = {"true box": [(crop_with_margin(image, pair.bbox.as_xyxy(), 0.0), 0.0)]}
        crops["whole photo"] = [(image, 0.0)]
        clicked = shoppers_box(found, pair.bbox.as_xyxy())  # empty: nothing found, whole photo
        ious.append(box_iou(clicked[0][0], pair.bbox.as_xyxy()) if clicked else 0.0)
        for margin in args.margins:
            crops[f"shopper's box, margin {margin}"] = [
                (crop_with_margin(image, clicked[0][0], margin) if clicked else image, 0.0)
            ]
            for n in args.boxes:
                kept = [(crop_with_margin(image, box, margin), log) for box, log in chosen[:n]]
                name = (
                    f"best box, margin {margin}" if n == 1 else f"best {n} merged, margin {margin}"
                )
                crops[name] = kept or [(image, 0.0)]
        vectors, products = catalog[pair.category]
        averaged: dict[str, list[Image.Image]] = {}
        if args.averaged:
            boxes = {"true box": pair.bbox.as_xyxy(), "shopper's box": None}
            if clicked:
                boxes["shopper's box"] = clicked[0][0]
            for box_name, box in boxes.items():
                for view_name, shots in averaged_views(image, box).items():
                    averaged[f"{box_name}, {view_name}"] = shots
        ranked_by = {}
        for name, items in crops.items():  # one query a crop, each product keeps its best
            query = np.asarray(model.embed([crop for crop, _ in items]), np.float32)
            bonus = SCORE_WEIGHT * np.array([log for _, log in items], np.float32)
            ranked_by[name] = (query @ vectors.T + bonus[:, None]).max(axis=0)
        for name, shots in averaged.items():  # one query: the mean of the views' embeddings
            query = np.asarray(model.embed(shots), np.float32).mean(axis=0)
            ranked_by[name] = vectors @ (query / np.linalg.norm(query))
        for name, scores in ranked_by.items():
            ranked = dedupe_products([products[i] for i in np.argsort(-scores)], limit=20)
            hits.setdefault(name, []).append((ranked[:1] == [pair.product], pair.product in ranked))

    reference = np.mean(hits["true box"], axis=0)
    print(f"\n{len(pairs)} street photos of {len(held_products)} held-out train products\n")
    print("| crop | recall@1 | recall@20 | @1 / true box | @20 / true box |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, rows in hits.items():
        r1, r20 = np.mean(rows, axis=0)
        print(
            f"| {name} | {100 * r1:.1f} | {100 * r20:.1f} | {r1 / reference[0]:.2f} | "
            f"{r20 / reference[1]:.2f} |"
        )
    print_by_iou(np.array(ious), hits, f"shopper's box, margin {args.margins[0]}")
    sure, right = (np.array(v) for v in zip(*labels, strict=True))
    print(
        f"\nbest box's category right: {100 * right.mean():.0f}% of {len(right)} photos; "
        f"{100 * right[sure >= 0.7].mean():.0f}% of the {int((sure >= 0.7).sum())} "
        "where the detector is at least 0.7 sure"
    )


def averaged_views(image: Image.Image, box: Sequence[float] | None) -> dict[str, list[Image.Image]]:
    """Views of one box whose embeddings a test-time-augmented query averages."""
    if box is None:  # nothing found: the whole photo, as the plain rows search it
        return dict.fromkeys(AVERAGED, [image])
    plain, wider = crop_with_margin(image, box, 0.0), crop_with_margin(image, box, 0.1)
    x1, y1, x2, y2 = box
    dx, dy = 0.05 * (x2 - x1), 0.05 * (y2 - y1)
    shrunk = crop_with_margin(image, (x1 + dx, y1 + dy, x2 - dx, y2 - dy), 0.0)
    return {
        AVERAGED[0]: [plain, ImageOps.mirror(plain)],
        AVERAGED[1]: [plain, wider],
        AVERAGED[2]: [shrunk, plain, wider],
    }


AVERAGED = ("mirrored, averaged", "margins 0 and 0.1, averaged", "shrunk, as is, grown, averaged")


def print_by_iou(ious: np.ndarray, hits: dict[str, list[tuple[bool, bool]]], name: str) -> None:
    """Where the shopper's box loses against the true box: recall@1 of both by how well the box
    covers the product (IoU with the true box), and the photos lost in each band."""
    true_box = np.array([r1 for r1, _ in hits["true box"]])
    shopper = np.array([r1 for r1, _ in hits[name]])
    print(f"\n{name} by its IoU with the true box\n")
    print("| IoU | photos | true box recall@1 | shopper's box recall@1 | photos lost |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for low, high in IOU_BANDS:
        band = (ious >= low) & (ious < high)
        if band.any():
            lost = int(true_box[band].sum() - shopper[band].sum())
            print(
                f"| {low:.1f}-{min(high, 1.0):.1f} | {int(band.sum())} | "
                f"{100 * true_box[band].mean():.1f} | {100 * shopper[band].mean():.1f} | {lost} |"
            )


if __name__ == "__main__":
    main()

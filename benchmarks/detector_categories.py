"""Can the detector's own features name a box's category? A probe on the validation photos.

    .venv/bin/python benchmarks/detector_categories.py --data data/demo \\
        --detector models/detector-default.pt

Every true box of every street photo (the pair's product and the other catalog products it
shows, `GroundTruth.everything`) is pooled by the detector's RoI pooling over its FPN, as the
detector pools its proposals. Two features of each box: the box head's output (what the
detector's category layer reads) and the pooled FPN map averaged to 2 x 2 cells. Heads are
fitted on the boxes of the training photos the detector learnt from and scored on those of the
validation photos it holds out (`visnet detect eval --split val`): the detector's own category
layer (no fitting), a logistic regression and a one-hidden-layer MLP (scikit-learn). If no head
reads the category from these features, a better category needs a detector whose features hold
it, not a better head. The service takes a box's category from its nearest catalog product
(`Engine.object_category`, `benchmarks/neighbour_category.py`: about 95% right).

Notes, 2026-12-03 20:23, models/detector-default.pt, nothing else running; 11,173 training and
1,172 validation boxes (features of both kinds in one 5-minute pass):

| features | the detector's category layer | logistic regression | MLP (512 hidden) |
| --- | ---: | ---: | ---: |
| box head (512-D) | 48.6 | 46.1-48.6 | 48.4 |
| RoI pooled FPN, 2 x 2 cells (512-D) | | 50.3-51.5 | 61.9 (97% on its training boxes) |

(Validation accuracy, %; the logistic range is over C 0.01, 0.1, 1.) The detector's features
hold little of the category: the heads fit the training boxes (64-97%) and reach 46-62% on new
ones, far from issue #14's 90%.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from visnet.detect import Detector
from visnet.detect.detector import to_tensor
from visnet.detect.evaluate import photo_truths

FEATURES = ("box head (512-D)", "RoI pooled FPN, 2 x 2 cells")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="data/demo")
    p.add_argument("--detector", default="models/detector-default.pt")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args()


@torch.inference_mode()
def box_features(detector: Detector, data_dir: str, split: str, skip: frozenset = frozenset()):
    """Per true box: each of FEATURES, the detector's category guess, the true category."""
    data, truths = photo_truths(data_dir, split)
    truths = {photo: t for photo, t in truths.items() if photo not in skip}
    model, heads = detector.model.eval(), detector.model.roi_heads
    feats: dict[str, list[np.ndarray]] = {name: [] for name in FEATURES}
    guessed, labels = [], []
    for photo, image in tqdm(data.readable_photos(truths), total=len(truths), desc=split):
        truth = truths[photo].everything()
        boxes = torch.as_tensor(truth.boxes, dtype=torch.float32).reshape(-1, 4)
        target = {"boxes": boxes, "labels": torch.zeros(len(boxes), dtype=torch.int64)}
        batch, targets = model.transform([to_tensor(image)], [target])
        pyramid = model.backbone(batch.tensors)
        pooled = heads.box_roi_pool(pyramid, [targets[0]["boxes"]], batch.image_sizes)
        head = heads.box_head(pooled)
        logits, _ = heads.box_predictor(head)
        feats[FEATURES[0]].append(head.numpy())
        feats[FEATURES[1]].append(F.adaptive_avg_pool2d(pooled, 2).flatten(1).numpy())
        guessed.append(logits[:, 1:].argmax(dim=1).numpy())  # 0 is the background
        labels += [detector.categories.index(label) for label in truth.labels]
    stacked = {name: np.concatenate(rows) for name, rows in feats.items()}
    return stacked, np.concatenate(guessed), np.array(labels)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    detector = Detector.load(args.detector)
    start = time.perf_counter()
    _, held = photo_truths(args.data, "val")
    val, val_guess, val_y = box_features(detector, args.data, "val")
    train, train_guess, train_y = box_features(detector, args.data, "train", frozenset(held))
    print(f"\n{len(train_y):,} training and {len(val_y):,} validation boxes, features in "
          f"{time.perf_counter() - start:.0f} s\n")  # fmt: skip
    print("| features | head | validation accuracy (%) | on its training boxes (%) |")
    print("| --- | --- | ---: | ---: |")
    print(f"| box head | the detector's category layer | {100 * np.mean(val_guess == val_y):.1f} "
          f"| {100 * np.mean(train_guess == train_y):.1f} |")  # fmt: skip
    for name in FEATURES:
        scaler = StandardScaler().fit(train[name])
        x_train, x_val = scaler.transform(train[name]), scaler.transform(val[name])
        heads = {
            **{f"logistic, C {c}": LogisticRegression(C=c, max_iter=2000) for c in (0.01, 0.1, 1)},
            "MLP, 512 hidden": MLPClassifier(
                (512,), alpha=1e-3, max_iter=200, early_stopping=True, random_state=0
            ),
        }
        for label, head in heads.items():
            head.fit(x_train, train_y)
            print(f"| {name} | {label} | {100 * head.score(x_val, val_y):.1f} | "
                  f"{100 * head.score(x_train, train_y):.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()

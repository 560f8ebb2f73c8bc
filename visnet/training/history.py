"""A run's history file (`history.jsonl`, one JSON record per step), kept by the training loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from visnet.io import read_jsonl, write_text_atomic


def read_history(path: Path) -> list[dict[str, Any]]:
    """The records of a history file, in order; [] when there is none yet."""
    return [record for _, record in read_jsonl(path)] if path.is_file() else []


def truncate_history(path: Path, step: int) -> None:
    """Drop lines past the checkpoint: those steps are about to be run again."""
    if path.is_file():
        kept = [r for r in read_history(path) if r["step"] <= step]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def append_history(path: Path, record: dict[str, Any]) -> None:
    """Add one step's record to the end of the history file."""
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def plot_history(history: Path, path: Path) -> None:
    """Loss and validation figures against steps, drawn from `history` to a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_history(history)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    losses = [r for r in records if "loss" in r]
    left.plot([r["step"] for r in losses], [r["loss"] for r in losses], lw=0.6)
    left.set(xlabel="step", ylabel="loss", title="training loss")
    for key, style in (
        ("recall@1", "-"),
        ("recall@5", "-"),
        ("recall@20", "-"),
        ("val_other_view@1", "--"),
        ("val_variant_auc", "--"),
    ):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            label = key.removeprefix("val_")
            right.plot(*zip(*points, strict=True), style, marker="o", label=label)
    right.set(xlabel="step", ylabel="held-out products", title="validation", ylim=(0, 1))
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

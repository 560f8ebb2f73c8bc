"""A run's history file (`history.jsonl`, one JSON record per step), shared by both trainers."""

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

"""A run's history file (`history.jsonl`, one JSON record per step), shared by both trainers."""

from __future__ import annotations

import json
from pathlib import Path


def truncate_history(path: Path, step: int) -> None:
    """Drop lines past the checkpoint: those steps are about to be run again."""
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in lines))

"""The one training loop, on a toy model: it resumes where it saved, on the same schedule; it
refuses other settings; it stops and saves when out of time; its schedules are the trainers'."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from visnet.io import atomic_path
from visnet.training import loop
from visnet.training.optim import cosine, warmup_then


@dataclass(frozen=True)
class Toy:
    """The fields the loop reads, and one that may change on resume."""

    steps: int = 6
    checkpoint_every: int = 2
    max_minutes: float = 0.0
    seed: int = 0
    optimizer: str = "sgd"
    lr: float = 0.02
    weight_decay: float = 0.0
    momentum: float = 0.9
    threads: int = 1  # may change on resume, as may max_minutes


def _run(settings: Toy) -> loop.Run[torch.nn.Linear]:
    torch.manual_seed(settings.seed)
    model = torch.nn.Linear(3, 1)
    scale = torch.nn.Parameter(torch.ones(()))  # a trained module beside the model
    holder = torch.nn.Module()
    holder.scale = scale
    params = [*model.parameters(), scale]
    schedule = warmup_then(cosine(0.05), settings.steps, 2, start=0.1)
    return loop.new_run(settings, model, params, schedule, holder=holder)


def _step(run: loop.Run[torch.nn.Linear], die_at: int | None = None) -> dict[str, float]:
    """A regression step on a batch from both random states (numpy's and torch's)."""
    if run.step == die_at:
        raise KeyboardInterrupt
    x = torch.from_numpy(run.rng.normal(size=(8, 3)).astype(np.float32)) + torch.randn(8, 3)
    loss = ((run.model(x).squeeze(1) * run.modules["holder"].scale - x.sum(1)) ** 2).mean()
    run.optimizer.zero_grad()
    loss.backward()
    run.optimizer.step()
    return {"loss": float(loss.detach()), "lr": run.optimizer.param_groups[0]["lr"]}


RESUMABLE = ("threads", "max_minutes")


def _save(run: loop.Run[torch.nn.Linear], settings: Toy, out: Path) -> Path:
    payload = {
        "settings": loop.comparable(settings, RESUMABLE),
        "step": run.step,
        "model": run.model.state_dict(),
        **loop.resume_state(run),
    }
    with atomic_path(out / loop.LAST) as tmp:
        torch.save(payload, tmp)
    return out / loop.LAST


def _load(settings: Toy, run: loop.Run[torch.nn.Linear], last: Path) -> dict[str, Any]:
    saved = torch.load(last, weights_only=False)
    loop.refuse_other_settings(last, saved["settings"], loop.comparable(settings, RESUMABLE))
    run.model.load_state_dict(saved["model"])
    return saved


def _train(settings: Toy, out: Path, die_at: int | None = None, **hooks: Any) -> list[int]:
    """Train (or resume) the toy; the steps at which it was saved."""
    out.mkdir(exist_ok=True)
    saved: list[int] = []

    def save(run: loop.Run[torch.nn.Linear]) -> None:
        saved.append(run.step)
        _save(run, settings, out)

    run = loop.start_run(out, _run(settings), lambda r, last: _load(settings, r, last))
    loop.train(
        run,
        settings,
        out,
        loop.Hooks(
            step=lambda r: _step(r, die_at),
            save=save,
            export=lambda r: _save(r, settings, out),
            bar={"disable": True},
            **hooks,
        ),
    )
    return saved


def _history(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / loop.HISTORY).read_text().splitlines()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / loop.LAST, weights_only=False)["model"]


def test_resume_continues_at_the_saved_step_on_the_same_schedule(tmp_path: Path) -> None:
    settings = Toy()
    _train(settings, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):  # killed before step 5: saved at step 4
        _train(settings, tmp_path / "killed", die_at=4)
    assert torch.load(tmp_path / "killed" / loop.LAST, weights_only=False)["step"] == 4
    assert _train(replace(settings, threads=4), tmp_path / "killed") == [6]
    straight, resumed = _history(tmp_path / "straight"), _history(tmp_path / "killed")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert [r["lr"] for r in resumed] == [r["lr"] for r in straight]
    assert resumed == straight  # the same losses: the same batches, the same weights
    for key, value in _weights(tmp_path / "straight").items():
        torch.testing.assert_close(_weights(tmp_path / "killed")[key], value)


def test_resume_drops_history_past_the_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # steps 1-5 recorded, saved at 4
        _train(Toy(), out, die_at=5)
    assert [r["step"] for r in _history(out)] == [1, 2, 3, 4, 5]
    _train(Toy(), out)
    assert [r["step"] for r in _history(out)] == [1, 2, 3, 4, 5, 6]


def test_other_settings_are_refused_and_named(tmp_path: Path) -> None:
    _train(Toy(steps=2), tmp_path)
    with pytest.raises(ValueError, match=r"other settings \(differing: lr, seed\)"):
        _train(Toy(steps=2, lr=0.5, seed=1), tmp_path)
    with pytest.raises(ValueError, match="differing: extra"):
        loop.refuse_other_settings(tmp_path, {"a": 1}, {"a": 1, "extra": None})
    loop.refuse_other_settings(tmp_path, {"a": 1}, {"a": 1})  # the same: no error


def test_the_time_budget_stops_and_saves(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Toy(steps=100, checkpoint_every=50, max_minutes=1e-9)
    with caplog.at_level("INFO"):
        saved = _train(settings, tmp_path)
    assert saved == [1]  # out of time after the first step: saved there, not at 50
    assert [r["step"] for r in _history(tmp_path)] == [1]
    assert "stopping at step 1: max_minutes=1e-09 reached" in caplog.text
    assert _train(replace(settings, max_minutes=0.0), tmp_path) == [50, 100]  # and resumes


def test_validation_every_n_steps_after_the_last_and_before_the_first(tmp_path: Path) -> None:
    calls: list[int] = []

    def validate() -> dict[str, float]:
        calls.append(1)
        return {"recall@1": 0.5}

    _train(Toy(steps=5), tmp_path, validate=validate, val_every=2, validate_first=True)
    history = _history(tmp_path)
    assert [r["step"] for r in history] == [0, 1, 2, 3, 4, 5]
    assert [r["step"] for r in history if "recall@1" in r] == [0, 2, 4, 5]
    assert history[0] == {"step": 0, "recall@1": 0.5} and len(calls) == 4


def _embedding_schedule(step: int, steps: int, warmup: int, kind: str) -> float:
    """The embedding trainer's schedule as it was written before the loop."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    if kind == "cosine":
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0 if progress < 0.6 else 0.1 if progress < 0.85 else 0.01


def _detector_schedule(step: int, steps: int, warmup: int) -> float:
    """The detector trainer's schedule as it was written before the loop."""
    if step < warmup:
        return 0.1 + 0.9 * step / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize(("steps", "warmup"), [(1, 0), (10, 3), (600, 40), (3000, 50)])
def test_the_trainers_schedules_are_unchanged(steps: int, warmup: int) -> None:
    from visnet.detect.settings import DetectTrainSettings
    from visnet.detect.train import _schedule as detector
    from visnet.training.settings import TrainSettings
    from visnet.training.trainer import _schedule as embedding

    for kind in ("cosine", "step"):
        settings = TrainSettings("d", "o", steps=steps, warmup_steps=warmup, schedule=kind)
        got = embedding(settings)
        for step in range(steps + 5):  # past the end too: a run extended on resume
            assert got(step) == _embedding_schedule(step, steps, warmup, kind), (kind, step)
    got = detector(DetectTrainSettings(steps=steps, warmup_steps=warmup))
    for step in range(steps + 5):
        assert got(step) == _detector_schedule(step, steps, min(warmup, steps // 4)), step

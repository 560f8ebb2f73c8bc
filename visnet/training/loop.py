"""The one training loop both trainers configure: a run created or resumed from OUT/last.pt,
stepped within a step and a time budget, its history and checkpoints written as it goes."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

import numpy as np
import torch
from torch.nn import Module, Parameter
from tqdm import tqdm

from visnet.io import write_jsonl_atomic
from visnet.training.history import append_history, truncate_history
from visnet.training.optim import Schedule, make_optimizer

if TYPE_CHECKING:
    from visnet.detect.settings import DetectTrainSettings
    from visnet.training.settings import TrainSettings

log = logging.getLogger(__name__)
LAST, HISTORY = "last.pt", "history.jsonl"  # in the run folder: the whole run; a line a step
M = TypeVar("M")
Settings: TypeAlias = "TrainSettings | DetectTrainSettings"  # the loop reads fields both have


@dataclass
class Run(Generic[M]):
    """Everything the loop mutates, gathered so a checkpoint can hold all of it."""

    model: M  # what is trained: a VisNet, a Detector
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    rng: np.random.Generator
    modules: dict[str, Module]  # also trained and saved, by name (a loss's temperature)
    step: int = 0


@dataclass(frozen=True)
class Hooks(Generic[M]):
    """What a trainer tells the loop: what a step is, how a run is saved, exported, validated."""

    step: Callable[[Run[M]], dict[str, float]]  # one optimiser step: its "loss" and other figures
    save: Callable[[Run[M]], None]  # write OUT/last.pt, atomically
    export: Callable[[Run[M]], Path]  # write the final weights; their path
    validate: Callable[[], dict[str, float]] | None = None  # figures on held-out data
    val_every: int = 0  # validate every this many steps, and after the last
    validate_first: bool = False  # and before the first step of a fresh run (step 0)
    postfix: Callable[[Mapping[str, float]], dict[str, str]] = lambda figures: {}  # bar, by loss
    bar: Mapping[str, Any] = field(default_factory=dict)  # tqdm options: desc, unit, disable


def new_run(
    settings: Settings, model: M, params: Iterable[Parameter], schedule: Schedule, **modules: Module
) -> Run[M]:
    """A run at step 0 (seed torch before building `model`): its optimiser and schedule."""
    kind, lr, decay = settings.optimizer, settings.lr, settings.weight_decay
    optimizer = make_optimizer(params, kind, lr, decay, settings.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return Run(model, optimizer, scheduler, np.random.default_rng(settings.seed), modules)


def comparable(settings: Any, resumable: Iterable[str]) -> dict[str, Any]:
    """A settings dataclass as a dict, less the fields that may change on resume."""
    return {k: v for k, v in dataclasses.asdict(settings).items() if k not in resumable}


def run_facts(settings: dict[str, Any], step: int, **facts: Any) -> dict[str, Any]:
    """What a checkpoint says of its run: its comparable settings, its step, `facts`, and when."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"settings": settings, "step": step, **facts, "trained_at": when}


def refuse_other_settings(last: Path, saved: Mapping | None, expected: Mapping) -> None:
    """Raise ValueError, naming the fields that differ, if `last` has other settings."""
    saved, absent = dict(saved or {}), object()
    keys = sorted({*saved, *expected})
    if changed := [k for k in keys if saved.get(k, absent) != expected.get(k, absent)]:
        raise ValueError(
            f"{last} was written with other settings (differing: {', '.join(changed)}); rerun "
            f"with the same settings, use another --out, or delete {last} to start over"
        )


def resume_state(run: Run[Any]) -> dict[str, Any]:
    """What resuming needs beside the weights and the step (a checkpoint keeps it)."""
    return {
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        **{name: module.state_dict() for name, module in run.modules.items()},
        "numpy_rng": run.rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
    }


def start_run(out: Path, run: Run[M], load: Callable[[Run[M], Path], Mapping]) -> Run[M]:
    """`run`, continued from OUT/last.pt if there is one; `load` checks that file's settings,
    loads its weights into `run` and returns its `resume_state` and "step"."""
    if not (out / LAST).is_file():
        return run
    state = load(run, out / LAST)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    for name, module in run.modules.items():
        module.load_state_dict(state[name])
    run.rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"])
    run.step = int(state["step"])
    log.info("resumed from %s at step %d", out / LAST, run.step)
    truncate_history(out / HISTORY, run.step)  # those steps are about to be run again
    return run


def train(run: Run[M], settings: Settings, out: Path, hooks: Hooks[M]) -> Path:
    """Step `run` to `settings.steps` or for `max_minutes`, a history line a step; save it every
    `checkpoint_every` steps, after the last and when out of time; export and return the path."""
    started = time.time()
    if hooks.validate_first and hooks.validate is not None and run.step == 0:
        first = hooks.validate()
        log.info("step 0: %s", _shown(first))
        write_jsonl_atomic(out / HISTORY, [{"step": 0, **first}])
    bar = tqdm(total=settings.steps, initial=run.step, **hooks.bar)
    while run.step < settings.steps:
        append_history(out / HISTORY, _step(run, settings.steps, hooks, bar))
        out_of_time = settings.max_minutes and time.time() - started > settings.max_minutes * 60
        if run.step % settings.checkpoint_every == 0 or run.step == settings.steps or out_of_time:
            hooks.save(run)
        if out_of_time:
            log.info("stopping at step %d: max_minutes=%s reached", run.step, settings.max_minutes)
            break
    bar.close()
    return hooks.export(run)


def _step(run: Run[M], steps: int, hooks: Hooks[M], bar: tqdm) -> dict[str, Any]:
    """One step and the schedule's, shown on the bar; the step's history record."""
    figures = hooks.step(run)
    run.scheduler.step()
    run.step += 1
    bar.update(1)
    lr = f"{run.scheduler.get_last_lr()[0]:.1e}"
    bar.set_postfix(loss=f"{figures['loss']:.3f}", **hooks.postfix(figures), lr=lr)
    record: dict[str, Any] = {"step": run.step, **figures}
    due = hooks.val_every and run.step % hooks.val_every == 0 or run.step == steps
    if hooks.validate is not None and due:
        record.update(found := hooks.validate())
        bar.write(f"step {run.step}: {_shown(found)}")
    return record


def _shown(figures: Mapping[str, float]) -> str:
    """Figures as "name value, ..." for the log and the bar."""
    return ", ".join(f"{k} {v:.3f}" for k, v in figures.items())

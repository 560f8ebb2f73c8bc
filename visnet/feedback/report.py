"""Click-through from the event log: by position and by query kind, per model, with Wilson 95%.

A list is one result list as first shown in a session (`EventLog.shown_lists`); a slot is one
position of one list. CTR at a position = clicked slots / shown slots there; the kind's list CTR
= lists with at least one click / lists; its slot CTR = clicked slots / shown slots. Each rate
has its Wilson score interval (95%), which stays inside [0, 1] and is honest for few lists.
Clicks that match no list are counted, never rated (`visnet.feedback.event_log`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visnet.feedback.event_log import EventLog
from visnet.io import atomic_path, make_folders, write_json_atomic

__all__ = [
    "Z95",
    "FeedbackReport",
    "Rate",
    "feedback_report",
    "plot_ctr",
    "report_markdown",
    "wilson_interval",
    "write_feedback_report",
]

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate; (0, 1) when there are no trials."""
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials; got {successes}, {trials}")
    if trials == 0:
        return 0.0, 1.0
    p, n, z2 = successes / trials, trials, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """`hits` of `trials`, the rate and its Wilson 95% interval."""

    hits: int
    trials: int

    @property
    def rate(self) -> float | None:
        return self.hits / self.trials if self.trials else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.hits, self.trials)

    def as_json(self) -> dict[str, Any]:
        low, high = self.interval
        rate = self.rate
        return {
            "hits": self.hits,
            "trials": self.trials,
            "ctr": None if rate is None else round(rate, 4),
            "ci95": [round(low, 4), round(high, 4)],
        }


@dataclass
class _Tally:
    lists: int = 0
    clicked_lists: int = 0
    slots: dict[int, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))


@dataclass(frozen=True)
class Group:
    """The figures of one (model, query kind)."""

    model: str
    kind: str
    lists: Rate  # lists clicked / lists shown
    slots: Rate  # slots clicked / slots shown
    positions: dict[int, Rate]  # position -> slots clicked / shown there
    actions: dict[str, int]  # cart / purchase of a product the list showed

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "kind": self.kind,
            "lists": self.lists.as_json(),
            "slots": self.slots.as_json(),
            "positions": {str(p): r.as_json() for p, r in sorted(self.positions.items())},
            "actions": self.actions,
        }


@dataclass(frozen=True)
class FeedbackReport:
    """Every (model, kind) group, and the log's event counts (duplicates, unmatched clicks)."""

    events: str
    groups: list[Group]
    counts: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "counts": self.counts,
            "groups": [g.as_json() for g in self.groups],
        }


def feedback_report(events: Path | str) -> FeedbackReport:
    """The click-through figures of the event log `events` (module docstring)."""
    tallies: dict[tuple[str, str], _Tally] = defaultdict(_Tally)
    with EventLog(events, create=False) as log:
        for shown in log.shown_lists():
            tally = tallies[(shown.model, shown.query_kind)]
            tally.lists += 1
            tally.clicked_lists += bool(shown.clicked)
            for position, _ in shown.shown:
                tally.slots[position][0] += position in shown.clicked
                tally.slots[position][1] += 1
        actions: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        for model, kind, action, count in log.actions():
            actions[(model, kind)][action] = count
        counts = log.counts()
    groups = [_group(key, tally, actions[key]) for key, tally in sorted(tallies.items())]
    return FeedbackReport(str(events), groups, counts)


def _group(key: tuple[str, str], tally: _Tally, actions: dict[str, int]) -> Group:
    positions = {p: Rate(*hits) for p, hits in sorted(tally.slots.items())}
    clicked = sum(r.hits for r in positions.values())
    shown = sum(r.trials for r in positions.values())
    return Group(
        *key,
        lists=Rate(tally.clicked_lists, tally.lists),
        slots=Rate(clicked, shown),
        positions=positions,
        actions={"cart": actions.get("cart", 0), "purchase": actions.get("purchase", 0)},
    )


# ------------------------------------------------------------------------------------ outputs


def _percent(rate: Rate) -> str:
    low, high = rate.interval
    value = rate.rate
    shown = "-" if value is None else f"{100 * value:.1f}"
    return f"{shown} [{100 * low:.1f}, {100 * high:.1f}]"


def report_markdown(report: FeedbackReport, positions: int = 10) -> str:
    """The report as Markdown tables: per group, then CTR by position (the first `positions`)."""
    c = report.counts
    lines = [
        f"# Click-through ({report.events})",
        "",
        f"events: {c['impression']} impressions ({c['duplicate_impressions']} duplicates "
        f"ignored), {c['click']} clicks ({c['unmatched_clicks']} matching no list), "
        f"{c['cart']} carts, {c['purchase']} purchases",
        "",
        "| model | kind | lists | list CTR % [95% CI] | slot CTR % [95% CI] | carts | purchases |",
        "| --- | --- | ---: | --- | --- | ---: | ---: |",
    ]
    for g in report.groups:
        lines.append(
            f"| {g.model} | {g.kind} | {g.lists.trials} | {_percent(g.lists)} | "
            f"{_percent(g.slots)} | {g.actions['cart']} | {g.actions['purchase']} |"
        )
    lines += ["", "| model | kind | position | shown | clicked | CTR % [95% CI] |"]
    lines.append("| --- | --- | ---: | ---: | ---: | --- |")
    for g in report.groups:
        for position, rate in list(g.positions.items())[:positions]:
            lines.append(
                f"| {g.model} | {g.kind} | {position} | {rate.trials} | {rate.hits} | "
                f"{_percent(rate)} |"
            )
    return "\n".join(lines) + "\n"


def plot_ctr(report: FeedbackReport, out: Path | str, positions: int = 20) -> Path:
    """CTR by position with its 95% interval as error bars, a line per (model, kind); PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for g in report.groups:
        kept = [(p, r) for p, r in g.positions.items() if p <= positions]
        xs = [p for p, _ in kept]
        ys = [r.rate or 0.0 for _, r in kept]
        low = [y - r.interval[0] for y, (_, r) in zip(ys, kept, strict=True)]
        high = [r.interval[1] - y for y, (_, r) in zip(ys, kept, strict=True)]
        label = f"{g.model[:16]} {g.kind}"
        ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=label)
    ax.set(xlabel="position", ylabel="click-through rate", title="CTR by position (95% Wilson)")
    ax.set_ylim(bottom=0)
    if report.groups:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    make_folders(out.parent)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return out


def write_feedback_report(
    events: Path | str, plot: Path | str | None = None, json_out: Path | str | None = None
) -> FeedbackReport:
    """The stage behind `visnet feedback report`: the figures, and the plot and JSON if asked."""
    report = feedback_report(events)
    if plot is not None:
        plot_ctr(report, plot)
    if json_out is not None:
        write_json_atomic(json_out, report.as_json())
    return report

"""Evaluation outputs: markdown tables, recall plots and the multi-method docs/RESULTS.md."""

from __future__ import annotations

import datetime as dt
import logging
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from visnet.embed.registry import checkpoint_path
from visnet.io import atomic_path, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

__all__ = [
    "DetectorSpec",
    "ReportConfig",
    "RunSpec",
    "eval_markdown",
    "load_report_config",
    "plot_eval",
    "render_report",
    "run_report",
    "write_eval_outputs",
]

# The paper's VisNet top-20 recall (%) on Exact Street2Shop, for scale (SPEC.md).
PAPER_TOP20 = {
    "tops": 62.6,
    "dresses": 61.1,
    "outerwear": 43.1,
    "skirts": 71.8,
    "pants": 31.8,
    "leggings": 32.4,
}
PLOT_NAME = "results_recall.png"
RECO_LEGEND = (
    "Each catalog product queries the whole catalog with its first view. *Same category@10*: share "
    "of its 10 nearest other products in its category. *Other view*: where its own second view "
    "ranks among products. *Variant AUC*: share of unrelated same-category products ranked below "
    "its nearest colour variant (`variant_of` in catalog.jsonl; 50 = chance)."
)
NEAREST_LEGEND = (
    "*Category of the nearest product*: share of the queries whose nearest catalog image over "
    "every category is of the query's category; the service searches a detected object within "
    "that category when the request names none and the neighbour is at least "
    "`VISNET_NEIGHBOUR_CATEGORY_SCORE` similar (`Engine.object_category`)."
)
DETECTION_LEGEND = (
    "Each street photo of the split is searched for boxes by each detector (IoU >= 0.5 counts as "
    "a hit). *Any box*: share of the pairs' boxes some detection hits. *Top-1*: share where the "
    "photo's best-scoring box hits the pair's box. *Product AP*: VOC AP of finding the pairs' "
    "boxes whatever the category named. *Category accuracy*: of the pair boxes the best box hits, "
    "the share whose category the detector names right (the service's fallback: it first takes "
    "the category of the crop's nearest catalog product, scored in the recall table). *All "
    "products* (shop the look): the pair's product plus the other catalog products pasted into "
    "the photo that are at least half in view (`meta/json/street_objects.json`); AP, share found "
    "by some detection, and share of photos with every one found. Times: one photo at a time, "
    "decoding excluded"
)


@dataclass(frozen=True)
class RunSpec:
    """One row of the report: a model (registry name or checkpoint), a crop mode, a PCA size."""

    label: str
    model: str
    crops: str = "gt"
    dim: int | None = None
    detector: str | None = None  # a detector checkpoint, for crops = "detector"
    detector_boxes: int | None = None  # best detections merged per query (None: eval's default)

    def command(self, data: Path | str) -> str:
        dim = f" --dim {self.dim}" if self.dim else ""
        detector = f" --detector {self.detector}" if self.detector else ""
        if self.detector and self.detector_boxes is not None:
            detector += f" --detector-boxes {self.detector_boxes}"
        crops = f"--crops {self.crops}{detector}"
        return f"visnet eval --data {data} --model {self.model} {crops}{dim}"


@dataclass(frozen=True)
class DetectorSpec:
    """One row of the report's detection table: a detector checkpoint scored on the split."""

    label: str
    detector: str  # a detector checkpoint path

    def command(self, data: Path | str, split: str) -> str:
        return f"visnet detect eval --data {data} --model {self.detector} --split {split}"


@dataclass(frozen=True)
class ReportConfig:
    runs: list[RunSpec]
    split: str = "test"
    ks: tuple[int, ...] = (1, 5, 10, 20)
    notes: list[str] = field(default_factory=list)
    detectors: list[DetectorSpec] = field(default_factory=list)


# ---------------------------------------------------------------------------------- single eval


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def eval_markdown(result: dict[str, Any]) -> str:
    """A markdown table of one evaluation: recall@k (%) per category and overall."""
    ks = [key for key in result["overall"] if key.startswith("recall@")]
    count = result.get("detector_boxes")
    boxes = "" if count is None else " (the shopper's box)" if count == 0 else f" x{count}"
    lines = [
        f"**{result['model']}** on `{result['data']}` ({result['split']}, "
        f"crops={result['crops']}{boxes}, "
        f"dim={result['dim']}): {result['queries']} queries, {result['skipped']['count']} skipped",
        "",
        "| category | queries | " + " | ".join(f"{k} (%)" for k in ks) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in ks) + " |",
    ]
    for category, row in result["per_category"].items():
        cells = " | ".join(_pct(row[k]) for k in ks)
        lines.append(f"| {category} | {row['queries']} | {cells} |")
    overall = " | ".join(f"**{_pct(result['overall'][k])}**" for k in ks)
    lines.append(f"| **overall** | {result['queries']} | {overall} |")
    if result.get("nearest_category") is not None:
        named = _pct(result["nearest_category"])
        lines += ["", f"Category of the nearest product (over every category): {named}%."]
    return "\n".join(lines) + "\n"


def plot_eval(result: dict[str, Any], path: Path) -> Path:
    """Grouped bars: recall@k per category (and overall), one bar per k."""
    ks = [key for key in result["overall"] if key.startswith("recall@")]
    rows = {**result["per_category"], "overall": result["overall"]}
    series = {k: [row[k] or 0.0 for row in rows.values()] for k in ks}
    figure = _bar_figure(list(rows), series, f"{result['model']} (crops={result['crops']})")
    return _save_figure(figure, path)


def write_eval_outputs(result: dict[str, Any], out: Path | str) -> list[Path]:
    """Write FILE.json, FILE.md and FILE.png for one evaluation; returns the paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.with_suffix(".json"), result)
    write_text_atomic(out.with_suffix(".md"), eval_markdown(result))
    plot_eval(result, out.with_suffix(".png"))
    return [out.with_suffix(s) for s in (".json", ".md", ".png")]


# --------------------------------------------------------------------------------------- plots


def _bar_figure(groups: list[str], series: dict[str, list[float]], title: str) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(6.0, 1.1 * len(groups) + 2), 4.0), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        axes.bar([g + i * width for g in range(len(groups))], values, width, label=name)
    axes.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, rotation=30)
    axes.set_ylim(0, 1.02)
    axes.set_ylabel("recall")
    axes.set_title(title)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure


def _save_figure(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110)
    return path


def plot_report(results: list[tuple[str, dict]], path: Path) -> Path:
    """Left: overall recall@k against k per method. Right: recall@1 per category per method."""
    from matplotlib.figure import Figure

    categories = sorted({c for _, r in results for c in r["per_category"]})
    figure = Figure(figsize=(max(10.0, 1.0 * len(categories) + 6), 4.2), layout="constrained")
    curve, bars = figure.subplots(1, 2, width_ratios=[1, 2])
    width = 0.8 / max(1, len(results))
    for i, (label, result) in enumerate(results):
        ks = [int(key.split("@")[1]) for key in result["overall"]]
        curve.set_xticks(ks)
        curve.plot(ks, [v or 0.0 for v in result["overall"].values()], marker="o", label=label)
        values = [(result["per_category"].get(c) or {}).get("recall@1") or 0.0 for c in categories]
        bars.bar([g + i * width for g in range(len(categories))], values, width, label=label)
    curve.set(xlabel="k", ylabel="overall recall@k", ylim=(0, 1.02), title="Recall@k, all queries")
    bars.set_xticks([g + 0.4 - width / 2 for g in range(len(categories))], categories, rotation=30)
    bars.set(ylabel="recall@1", ylim=(0, 1.02), title="Recall@1 per category")
    bars.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save_figure(figure, path)


# -------------------------------------------------------------------------------------- report


def load_report_config(path: Path | str) -> ReportConfig:
    """Read a report config (TOML): `[report]` split/ks/notes, a list of `[[run]]` rows and an
    optional list of `[[detectors]]` (label, detector checkpoint) for the detection table."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FileNotFoundError(f"report config {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"report config {path}: {exc}") from exc
    runs = raw.get("run")
    if not isinstance(runs, list) or not runs:
        raise ValueError(f"report config {path}: needs at least one [[run]] table")
    specs = [_run_spec(path, i, run) for i, run in enumerate(runs)]
    detectors = raw.get("detectors", [])
    if not isinstance(detectors, list):
        raise ValueError(f"report config {path}: detectors must be [[detectors]] tables")
    head = raw.get("report", {})
    return ReportConfig(
        runs=specs,
        split=str(head.get("split", "test")),
        ks=tuple(int(k) for k in head.get("ks", (1, 5, 10, 20))),
        notes=[str(n) for n in head.get("notes", [])],
        detectors=[_detector_spec(path, i, entry) for i, entry in enumerate(detectors)],
    )


def _detector_spec(path: Path, index: int, entry: Any) -> DetectorSpec:
    if not isinstance(entry, dict) or not isinstance(entry.get("detector"), str):
        raise ValueError(
            f"report config {path}: detectors {index + 1} needs a string 'detector' (a checkpoint)"
        )
    if not entry["detector"].strip():
        raise ValueError(f"report config {path}: detectors {index + 1}: 'detector' is empty")
    return DetectorSpec(
        label=str(entry.get("label", entry["detector"])), detector=entry["detector"]
    )


def _run_spec(path: Path, index: int, run: Any) -> RunSpec:
    if not isinstance(run, dict) or not isinstance(run.get("model"), str):
        raise ValueError(f"report config {path}: run {index + 1} needs a string 'model'")
    dim = run.get("dim") or None
    if dim is not None and (not isinstance(dim, int) or dim < 1):
        raise ValueError(f"report config {path}: run {index + 1}: dim must be a positive integer")
    return RunSpec(
        label=str(run.get("label", run["model"])),
        model=run["model"],
        crops=str(run.get("crops", "gt")),
        dim=dim,
        detector=str(run["detector"]) if run.get("detector") else None,
        detector_boxes=int(run["detector_boxes"]) if "detector_boxes" in run else None,
    )


def run_report(
    data_root: Path | str,
    config_path: Path | str,
    out: Path | str,
    use_cache: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every configured row, then each configured detector on the same split, and write
    OUT (markdown), OUT.json and the plot beside it."""
    from visnet.eval.protocol import evaluate

    config, out = load_report_config(config_path), Path(out)
    results: list[tuple[RunSpec, dict]] = []
    skipped: list[str] = []
    for spec in tqdm(config.runs, desc="report", unit="run", disable=not progress):
        reason = _unavailable(spec)
        if reason is None:
            try:
                result = evaluate(
                    data_root,
                    spec.model,
                    crops=spec.crops,
                    split=config.split,
                    ks=config.ks,
                    dim=spec.dim,
                    use_cache=use_cache,
                    progress=progress,
                    detector=spec.detector,
                    detector_boxes=spec.detector_boxes,
                )
                results.append((spec, result))
                continue
            except (ImportError, FileNotFoundError) as exc:
                reason = str(exc)
        log.warning("report: skipping %s: %s", spec.label, reason)
        skipped.append(f"{spec.label} (`{spec.model}`): {reason}")
    detections = _run_detectors(data_root, config, skipped, progress)
    return _write_report(data_root, config_path, out, config, results, skipped, detections)


def _run_detectors(
    data_root: Path | str, config: ReportConfig, skipped: list[str], progress: bool
) -> list[dict[str, Any]]:
    """Score each configured detector on the report's split: one entry (label, detector,
    metrics) per detector run; a missing or unreadable checkpoint is noted in `skipped`."""
    entries: list[dict[str, Any]] = []
    for spec in tqdm(config.detectors, desc="detectors", unit="detector", disable=not progress):
        reason = None
        if not Path(spec.detector).is_file():
            reason = f"detector file {spec.detector} not found"
        else:
            try:
                from visnet.detect.detector import Detector
                from visnet.detect.evaluate import evaluate_detector

                detector = Detector.load(spec.detector)
            except (ImportError, FileNotFoundError, ValueError) as exc:
                reason = str(exc)
        if reason is not None:
            log.warning("report: skipping detector %s: %s", spec.label, reason)
            skipped.append(f"{spec.label} (`{spec.detector}`): {reason}")
            continue
        log.info("report: detector %s on the %s split", spec.label, config.split)
        metrics = evaluate_detector(detector, data_root, config.split)
        entries.append(
            {
                "label": spec.label,
                "detector": spec.detector,
                "metrics": metrics,
                "cores": os.cpu_count(),  # the times' machine
            }
        )
    return entries


def _unavailable(spec: RunSpec) -> str | None:
    path = checkpoint_path(spec.model)
    if path is not None and not path.is_file():
        return f"model file {path} not found"
    if spec.detector and not Path(spec.detector).is_file():
        return f"detector file {spec.detector} not found"
    return None


def _write_report(
    data_root: Path | str,
    config_path: Path | str,
    out: Path,
    config: ReportConfig,
    results: list[tuple[RunSpec, dict]],
    skipped: list[str],
    detections: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    out.parent.mkdir(parents=True, exist_ok=True)
    labelled = [(spec.label, result) for spec, result in results]
    if labelled:
        plot_report(labelled, out.parent / PLOT_NAME)
    command = f"visnet report --data {data_root} --config {config_path} --out {out}"
    specs = [s for s, _ in results]
    text = render_report(labelled, skipped, config, data_root, command, specs, detections)
    write_text_atomic(out, text)
    summary = {
        "rows": [r for _, r in labelled],
        "detectors": list(detections),
        "skipped_rows": skipped,
        "command": command,
    }
    write_json_atomic(out.with_suffix(".json"), summary)
    return summary


def render_report(
    results: list[tuple[str, dict]],
    skipped: Sequence[str],
    config: ReportConfig,
    data_root: Path | str,
    command: str,
    specs: Sequence[RunSpec],
    detections: Sequence[dict[str, Any]] = (),
) -> str:
    """The whole RESULTS.md text. `detections` are the entries RESULTS.json keeps under
    "detectors": {"label", "detector", "metrics" (`evaluate_detector`'s dict), "cores"}."""
    lines = [f"# VisNet results on `{data_root}`", "", f"Generated {dt.date.today().isoformat()}."]
    lines += _scope_lines(results, config)
    if results:
        lines += ["", "## Top-20 recall per category (%)", "", *_paper_table(results)]
        lines += ["", "## Overall recall@k (%)", "", *_recall_table(results)]
    if detections:
        photos = detections[0]["metrics"].get("photos", 0)
        lines += ["", f"## Detection ({config.split} split, {photos} photos)", ""]
        lines += _detection_table(detections)
    if results:
        if any(r.get("per_kind") for _, r in results):
            lines += ["", "## Recall@1 by product kind (%)", "", *_kind_table(results)]
        lines += ["", "## Recommendation quality (catalog to catalog)", "", *_reco_table(results)]
        lines += ["", f"![recall per method]({PLOT_NAME})"]
    if skipped:
        lines += ["", "## Rows not run", "", *[f"- {s}" for s in skipped]]
    lines += ["", "## How to reproduce", "", "```sh", command]
    lines += [spec.command(data_root) for spec in specs]
    lines += [
        DetectorSpec(entry["label"], entry["detector"]).command(data_root, config.split)
        for entry in detections
        if entry.get("detector")
    ]
    return "\n".join([*lines, "```", ""])


def _scope_lines(results: list[tuple[str, dict]], config: ReportConfig) -> list[str]:
    text = f"Split `{config.split}`; each street query is searched within its category."
    if results:
        first = results[0][1]
        sizes = sorted(row.get("products", 0) for row in first["per_category"].values())
        text += (
            f" {first['queries']} queries, {first['skipped']['count']} skipped; categories hold "
            f"{sizes[0]} to {sizes[-1]} catalog products (median {sizes[len(sizes) // 2]})."
        )
    headline = (
        "Recall@1 is the headline on a catalog this small: top-20 is loose where a category has "
        "few products (the *chance* row is what a random ranking gets)."
    )
    return ["", text, headline, *config.notes]


def _chance(result: dict[str, Any], k: int) -> tuple[dict[str, float | None], float | None]:
    """Recall@k of a random ranking per category, and its overall recall@1 over the queries."""
    rows = result["per_category"]
    per = {c: min(1.0, k / r["products"]) if r.get("products") else None for c, r in rows.items()}
    weights = [(r["queries"], 1.0 / r["products"]) for r in rows.values() if r.get("products")]
    total = sum(q for q, _ in weights)
    return per, (sum(q * p for q, p in weights) / total if total else None)


def _paper_table(results: list[tuple[str, dict]]) -> list[str]:
    categories = sorted({c for _, r in results for c in r["per_category"]})
    lines = [
        "| method | " + " | ".join(categories) + " | overall recall@1 |",
        "| --- | " + " | ".join("---:" for _ in categories) + " | ---: |",
    ]
    for label, result in results:
        cells = [_pct((result["per_category"].get(c) or {}).get("recall@20")) for c in categories]
        headline = _pct(result["overall"].get("recall@1"))
        lines.append(f"| {label} | " + " | ".join(cells) + f" | **{headline}** |")
    per, _ = _chance(results[0][1], 20)
    _, chance_at_1 = _chance(results[0][1], 1)
    cells = [_pct(per.get(c)) for c in categories]
    lines.append("| *chance* | " + " | ".join(cells) + f" | *{_pct(chance_at_1)}* |")
    counts = [
        str((results[0][1]["per_category"].get(c) or {}).get("queries", 0)) for c in categories
    ]
    lines.append("| *queries* | " + " | ".join(counts) + f" | {results[0][1]['queries']} |")
    paper = ", ".join(f"{c} {v}" for c, v in PAPER_TOP20.items())
    return lines + ["", f"For scale, the paper's VisNet on Exact Street2Shop (top-20, %): {paper}."]


def _kind_table(results: list[tuple[str, dict]]) -> list[str]:
    """Real-photo cut-outs against clip art: real shops photograph their products."""
    kinds = sorted({k for _, r in results for k in r.get("per_kind") or {}})
    lines = [
        "| method | " + " | ".join(f"{k} r@1 | {k} r@20" for k in kinds) + " |",
        "| --- | " + " | ".join("---: | ---:" for _ in kinds) + " |",
    ]
    for label, r in results:
        rows = r.get("per_kind") or {}
        cells = [
            f"{_pct(row.get('recall@1'))} | {_pct(row.get('recall@20'))}"
            for row in (rows.get(k) or {} for k in kinds)
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    counts = ", ".join(
        f"{k}: {(results[0][1].get('per_kind') or {}).get(k, {}).get('queries', 0)}" for k in kinds
    )
    return lines + ["", f"Queries by kind: {counts}."]


def _recall_table(results: list[tuple[str, dict]]) -> list[str]:
    keys = list(results[0][1]["overall"])
    lines = [
        "| method | crops | dim | " + " | ".join(keys) + " | category of the nearest product "
        "| seconds |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in keys) + " | ---: | ---: |",
    ]
    for label, r in results:
        cells = " | ".join(_pct(r["overall"].get(k)) for k in keys)
        named = _pct(r.get("nearest_category"))
        cached = " (cached)" if "cache" in (r.get("embeddings") or {}).values() else ""
        shown = f"{r['crops']} | {r['dim']} | {cells} | {named} | {r['seconds']}{cached}"
        lines.append(f"| {label} | {shown} |")
    return [*lines, "", NEAREST_LEGEND]


def _reco_table(results: list[tuple[str, dict]]) -> list[str]:
    lines = [
        "| method | same category@10 (%) | other view recall@1 (%) | other view mean rank "
        "| variant AUC (%) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines.insert(0, RECO_LEGEND + "\n")
    for label, r in results:
        reco = r.get("recommendation") or {}
        rank = reco.get("other_view_mean_rank")
        lines.append(
            f"| {label} | {_pct(reco.get('same_category@10'))} "
            f"| {_pct(reco.get('other_view_recall@1'))} | {'–' if rank is None else rank} "
            f"| {_pct(reco.get('variant_auc'))} |"
        )
    return lines


def _detection_table(detections: Sequence[dict[str, Any]]) -> list[str]:
    """Detectors side by side on the report's split (%, and median ms per photo), and the legend."""
    columns = [
        ("box_recall@0.5", "any box recall@0.5 (%)"),
        ("top1_box_recall@0.5", "top-1 box recall@0.5 (%)"),
        ("product_ap@0.5", "product AP@0.5 (%)"),
        ("category_accuracy", "category accuracy, best box (%)"),
        ("all_products_ap@0.5", "all products AP@0.5 (%)"),
        ("all_products_recall@0.5", "all products found (%)"),
        ("all_products_photos", "photos with every product found (%)"),
    ]
    lines = [
        "| detector | " + " | ".join(name for _, name in columns) + " | ms/photo (median) |",
        "| --- | " + " | ".join("---:" for _ in columns) + " | ---: |",
    ]
    for entry in detections:
        metrics = entry["metrics"]
        cells = " | ".join(_pct(metrics.get(key)) for key, _ in columns)
        ms = metrics.get("ms_per_photo_median")
        lines.append(f"| {entry['label']} | {cells} | {'–' if ms is None else f'{ms:.0f}'} |")
    first = detections[0]["metrics"]
    cores = detections[0].get("cores")
    legend = DETECTION_LEGEND + (f", {cores} cores." if cores else ".")
    counts = (
        f" {first.get('photos', 0)} photos, {first.get('boxes', 0)} pair boxes, "
        f"{first.get('all_products', 0)} products in all"
    )
    missing = first.get("skipped") or 0
    counts += f"; {missing} photos skipped (missing or unreadable)." if missing else "."
    models = "; ".join(
        f"{entry['label']}: `{entry.get('detector', '?')}`, {entry['metrics'].get('arch', '?')} "
        f"at {entry['metrics'].get('min_size', '?')} px"
        for entry in detections
    )
    return [*lines, "", legend + counts + f" Checkpoints: {models}."]

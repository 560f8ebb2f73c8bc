"""Embedding throughput: torch, torch in bfloat16 and onnxruntime, same model and images, one run.

    .venv/bin/python benchmarks/embed.py --model models/visnet-default.pt --images 256

Prints images/s (median of --repeats runs after a warm-up) for each backend, end to end (decode
excluded: the images are decoded once up front) and model-only, and the ratio onnx/torch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from visnet.embed.onnx import OnnxEmbedder, export_onnx
from visnet.embed.registry import create_embedder
from visnet.model import ModelEmbedder


def _images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)) for _ in range(n)]


def _rate(fn, n: int, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/visnet-default.pt")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    images = _images(args.images, seed=0)
    torch_embedder = ModelEmbedder.from_checkpoint(args.model, batch_size=args.batch_size)
    bf16_embedder = ModelEmbedder.from_checkpoint(
        args.model, batch_size=args.batch_size, precision="bfloat16"
    )
    auto = create_embedder(args.model, backend="auto", batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_embedder = OnnxEmbedder(export_onnx(args.model, Path(tmp) / "m.onnx"), args.batch_size)
        reference = torch_embedder.embed(images[:8])
        same = np.abs(reference - onnx_embedder.embed(images[:8])).max()
        bf16_cosine = float((reference * bf16_embedder.embed(images[:8])).sum(axis=1).min())
        batch = torch.stack([torch_embedder.transform(im) for im in images[: args.batch_size]])
        channels_last = batch.contiguous(memory_format=torch.channels_last)

        def bf16_model() -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return bf16_embedder.model(channels_last)

        rows = []
        for name, embedder, model_only in (
            ("torch", torch_embedder, lambda: torch_embedder.model(channels_last)),
            ("torch-bf16", bf16_embedder, bf16_model),
            (
                "onnx",
                onnx_embedder,
                lambda: onnx_embedder.session.run(None, {"images": batch.numpy()}),
            ),
        ):
            with torch.inference_mode():
                end_to_end = _rate(lambda e=embedder: e.embed(images), len(images), args.repeats)
                model = _rate(model_only, len(batch), args.repeats)
            rows.append((name, end_to_end, model))
    picked = "torch-bf16" if isinstance(auto, ModelEmbedder) else "onnx"
    print(
        f"model {args.model}, {args.images} images 400x300, batch {args.batch_size}, "
        f"threads {torch.get_num_threads()}, max |torch - onnx| = {same:.2e}, "
        f"min cosine torch vs torch-bf16 = {bf16_cosine:.5f}; backend auto picks {picked} here"
    )
    print(f"{'backend':<12} {'end-to-end img/s':>17} {'model-only img/s':>17} {'vs torch':>9}")
    for name, e2e, model in rows:
        print(f"{name:<12} {e2e:>17.1f} {model:>17.1f} {e2e / rows[0][1]:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

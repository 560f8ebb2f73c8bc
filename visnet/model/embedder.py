"""A VisNet model behind the Embedder protocol: PIL images in, unit-norm float32 vectors out."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from visnet.features.base import l2_normalise
from visnet.model.checkpoint import fingerprint, load_model
from visnet.model.visnet import VisNet, create_model

Precision = Literal["float32", "bfloat16"]


@functools.cache
def native_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively: AMX tiles (Intel Xeon since Sapphire
    Rapids) or AVX512-BF16 (Cooper Lake, Zen 4). oneDNN then runs a dense convolutional network
    faster in bfloat16 than onnxruntime in float32 (a ResNet-18 at 96 px on 2 cores: AMX 800
    images/s against 346; AVX512-BF16 686 against 510; `benchmarks/embed.py`)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    if "amx_bf16" in flags:
        init = getattr(torch._C._cpu, "_init_amx", None)  # asks the kernel for the AMX tile state
        if init is None or init():
            return True
    return "avx512_bf16" in flags


def grouped_convolutions(model: torch.nn.Module) -> bool:
    """Whether `model` has depthwise or grouped convolutions (EfficientNet, MobileNet): these gain
    little from bfloat16, and onnxruntime runs them faster."""
    return any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 for m in model.modules())


class ModelEmbedder:
    """Embeds images with a VisNet, using the model's own eval transform, in batches.

    Puts the model in eval mode on ``device`` and, by default, in channels-last memory layout
    (about 20% faster on CPU, same numbers); a trainer sharing the model calls ``.train()`` again.
    With ``precision="bfloat16"`` the forward pass runs under CPU autocast (convolutions and
    matrix products in bfloat16, accumulated in float32; cosine to the float32 vectors > 0.9999).
    """

    def __init__(
        self,
        model: VisNet,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        name: str | None = None,
        channels_last: bool = True,
        precision: Precision = "float32",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive; got {batch_size}")
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be float32 or bfloat16; got {precision!r}")
        self.precision = precision
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device).to(memory_format=self.memory_format).eval()
        self.batch_size = batch_size
        self.transform = model.config.preprocess().eval_transform()
        self.dim = model.config.embed_dim
        self.fingerprint = fingerprint(model)  # ties caches and indexes to these exact weights
        self.name = name or f"visnet-{model.config.backbone}-{self.fingerprint[:8]}"

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        precision: Precision = "float32",
    ) -> ModelEmbedder:
        """Load a checkpoint written by ``save_checkpoint`` and wrap it."""
        model, meta = load_model(path, device=device)
        name = f"visnet-{model.config.backbone}-{meta['fingerprint'][:8]}"
        return cls(model, batch_size=batch_size, device=device, name=name, precision=precision)

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """One image as the network's input tensor (thread-safe: the embedding pipeline runs it
        on its reader threads, beside the forward pass of the previous batch)."""
        return self.transform(image if image.mode == "RGB" else image.convert("RGB"))

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Array (len(images), dim), float32, rows L2-normalised."""
        return self.embed_prepared([self.prepare(image) for image in images])

    def embed_prepared(self, inputs: Sequence[torch.Tensor]) -> np.ndarray:
        """`embed` of images already through `prepare`."""
        out = np.empty((len(inputs), self.dim), dtype=np.float32)
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.precision == "bfloat16"
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            for start in range(0, len(inputs), self.batch_size):
                chunk = torch.stack(list(inputs[start : start + self.batch_size])).to(self.device)
                batch = chunk.contiguous(memory_format=self.memory_format)
                out[start : start + len(chunk)] = self.model(batch).float().cpu().numpy()
        return l2_normalise(out)


def untrained_embedder(
    preset: str = "default", seed: int = 0, batch_size: int = 64
) -> ModelEmbedder:
    """A randomly initialised VisNet (fixed seed): the "untrained network" baseline."""
    model = create_model(preset, seed=seed)
    return ModelEmbedder(model, batch_size=batch_size, name=f"untrained-{preset}-seed{seed}")

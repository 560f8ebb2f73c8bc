"""Self-describing checkpoints: model arguments, weights and training metadata in one file."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from visnet.io import atomic_path
from visnet.model.visnet import VisNet, VisNetConfig

FORMAT = "visnet-checkpoint"
VERSION = 1
_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(value: Any, where: str = "extra") -> None:
    # Only what torch.load(weights_only=True) can read back; fail at save time, not at load.
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; use str keys")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN) or type(value).__module__ == "numpy":
        raise TypeError(
            f"{where} is a {type(value).__name__}; checkpoints hold only plain Python values and "
            "tensors (convert numpy values with .tolist() or float())"
        )


def _state_dict(model: VisNet, half: bool) -> dict[str, torch.Tensor]:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    return state


def save_checkpoint(
    path: str | Path,
    model: VisNet,
    config: VisNetConfig | None = None,
    extra: dict[str, Any] | None = None,
    *,
    half: bool = False,
) -> Path:
    """Write ``{format, version, model_args, state_dict, extra}`` whole or not at all.

    ``config`` defaults to the model's own and must equal it if given. ``extra`` holds training
    settings, the data set fingerprint, the step, an optional optimizer state: plain values and
    tensors only. ``half=True`` stores float weights as float16 (release files, half the size);
    ``load_model`` gives them back as float32.
    """
    config = config or model.config
    if config != model.config:
        raise ValueError(f"config {config} does not match the model's config {model.config}")
    extra = dict(extra or {})
    _check_plain(extra)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_args": config.to_dict(),
        "state_dict": _state_dict(model, half),
        "extra": extra,
    }
    return atomic_torch_save(payload, Path(path))


def atomic_torch_save(payload: Any, path: Path) -> Path:
    """torch.save, whole or not at all (`visnet.io.atomic_path`: fsync'd, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict; a missing file or a file that is not a checkpoint raises."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable VisNet checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a VisNet checkpoint (no format={FORMAT!r}); "
            "write one with visnet.model.save_checkpoint"
        )
    if payload.get("version") != VERSION:
        raise ValueError(f"{path} has checkpoint version {payload.get('version')}; need {VERSION}")
    return payload


def _float32(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _build_empty(config: VisNetConfig) -> VisNet:
    # Build on the meta device: no time spent initialising weights that are overwritten anyway.
    with torch.device("meta"):
        return VisNet(config)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[VisNet, dict]:
    """Rebuild the model from ``model_args`` and load its weights (float32), in eval mode.

    Returns ``(model, metadata)``; metadata has ``model_args``, ``extra``, ``fingerprint`` and
    ``stored_dtype`` (``float16`` for half-precision release files).
    """
    payload = read_checkpoint(path)
    config = VisNetConfig.from_dict(payload["model_args"])
    stored = payload["state_dict"]
    model = _build_empty(config)
    try:
        model.load_state_dict(_float32(stored), strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit model_args {config}: {exc}") from exc
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        raise ValueError(f"{path}: model has tensors the checkpoint does not provide")
    model.to(device).eval()
    dtypes = {str(v.dtype).removeprefix("torch.") for v in stored.values() if v.is_floating_point()}
    metadata = {
        "model_args": payload["model_args"],
        "extra": payload["extra"],
        "fingerprint": fingerprint(model),
        "stored_dtype": ",".join(sorted(dtypes)),
    }
    return model, metadata


def fingerprint(
    model_or_path: torch.nn.Module | Mapping[str, torch.Tensor] | str | Path, length: int = 16
) -> str:
    """Short sha256 of the weights as loaded (float32), so indexes can name their model.

    A checkpoint path, its stored state dict and the model loaded from it give the same
    fingerprint.
    """
    if isinstance(model_or_path, torch.nn.Module):
        state = model_or_path.state_dict()
    elif isinstance(model_or_path, Mapping):
        state = dict(model_or_path)
    else:
        state = read_checkpoint(model_or_path)["state_dict"]
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu()
        tensor = tensor.float() if tensor.is_floating_point() else tensor
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:length]

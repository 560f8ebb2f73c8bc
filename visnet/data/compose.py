"""Pixel work for the demo set: cut-outs, colour variants, catalog views and street composites.

Everything takes an explicit `numpy.random.Generator`, so the same seed gives the same pixels.
"""

from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from visnet.images import ImageError, ImageLimits, ImageTooLargeError, load_image

CATALOG_SIZE = 256
STREET_SIZE = 384
MAX_CUTOUT = 320


class RejectedImage(ValueError):
    """A source image is not usable as a product (too small, blank, unreadable)."""


@dataclass
class Cutout:
    """A product on a transparent canvas, cropped to its visible content."""

    rgba: Image.Image
    kind: str  # "photo" (a real-photo cut-out) or "clipart"
    saturation: float


def render_source(path: Path) -> Image.Image:
    """Read a PNG or an SVG (rendered with rsvg-convert) as RGBA, keeping transparency."""
    if path.suffix.lower() == ".svg":
        try:
            png = subprocess.run(
                ["rsvg-convert", "-w", "384", "-h", "384", "-a", str(path)],
                check=True,
                capture_output=True,
                timeout=30,
            ).stdout
        except (subprocess.SubprocessError, OSError) as exc:
            raise RejectedImage(f"cannot render SVG: {exc}") from exc
        data: bytes | Path = png
    else:
        data = path
    try:
        # Decode through the one image door for its limits and errors, but keep the alpha.
        load_image(data, ImageLimits(max_pixels=16_000_000))
        image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        image.load()
    except ImageTooLargeError as exc:
        raise RejectedImage(f"too large: {exc}") from exc
    except (ImageError, OSError) as exc:
        raise RejectedImage(f"unreadable: {exc}") from exc
    return image.convert("RGBA")


def make_cutout(image: Image.Image, min_side: int = 96) -> Cutout:
    """Crop to visible content; reject small or blank images; tell photos from clip art."""
    rgba = np.asarray(image.convert("RGBA"))
    alpha = rgba[..., 3]
    if alpha.min() > 250:  # no transparency: treat near-white as background
        alpha = np.where(rgba[..., :3].min(axis=2) > 245, 0, 255).astype(np.uint8)
        rgba = np.dstack([rgba[..., :3], alpha])
    ys, xs = np.nonzero(alpha > 16)
    if len(xs) < 400:
        raise RejectedImage("blank: almost no visible pixels")
    crop = rgba[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    if max(crop.shape[:2]) < min_side:
        raise RejectedImage(f"too small: {crop.shape[1]}x{crop.shape[0]} px")
    visible = crop[crop[..., 3] > 128][:, :3].astype(np.float32)
    coverage = len(visible) / (crop.shape[0] * crop.shape[1])
    if len(visible) < 400 or (visible.std(axis=0).max() < 4.0 and coverage > 0.9):
        raise RejectedImage("blank: an empty canvas of one flat colour")
    if min(crop.shape[:2]) < 8:
        raise RejectedImage("degenerate: a line, not an object")
    cut = Image.fromarray(crop, "RGBA")
    cut.thumbnail((MAX_CUTOUT, MAX_CUTOUT), Image.Resampling.LANCZOS)
    return Cutout(cut, _kind(visible), _saturation(visible))


def _kind(visible: np.ndarray) -> str:
    # Clip art has flat fills and few distinct colours; photographs have thousands.
    quantised = visible.astype(np.int32) >> 2
    codes = quantised[:, 0] * 4096 + quantised[:, 1] * 64 + quantised[:, 2]
    distinct = len(np.unique(codes))
    is_photo = distinct >= 1500 or (distinct >= 500 and distinct >= 0.3 * len(codes))
    return "photo" if is_photo else "clipart"


def _saturation(visible: np.ndarray) -> float:
    mx, mn = visible.max(axis=1), visible.min(axis=1)
    return float(np.mean((mx - mn) / np.maximum(mx, 1.0)))


def signature(cutout: Cutout) -> tuple[np.ndarray, np.ndarray]:
    """A 64-bit difference hash and the mean colour, for near-duplicate detection."""
    flat = on_background(cutout.rgba, (255, 255, 255))
    grey = np.asarray(flat.convert("L").resize((9, 8), Image.Resampling.BILINEAR), np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).ravel()
    colour = np.asarray(flat.resize((1, 1), Image.Resampling.BOX), np.float32).ravel()
    return bits, colour


def on_background(rgba: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    canvas = Image.new("RGB", rgba.size, colour)
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return canvas


def hue_shift(rgba: Image.Image, shift: float) -> Image.Image:
    """The same object in another colour: rotate the hue of every pixel by `shift` turns."""
    hsv = np.asarray(rgba.convert("RGB").convert("HSV")).copy()
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(round(shift * 256))) % 256).astype(np.uint8)
    # Boost weak saturation a little so a pale item still changes visibly.
    sat = hsv[..., 1].astype(np.float32)
    hsv[..., 1] = np.clip(sat * 1.15 + 10, 0, 255).astype(np.uint8)
    rgb = Image.fromarray(hsv, "HSV").convert("RGB")
    out = rgb.convert("RGBA")
    out.putalpha(rgba.getchannel("A"))
    return out


# ------------------------------------------------------------------------------- catalog views


def plain_view(cut: Image.Image, size: int = CATALOG_SIZE) -> Image.Image:
    """The product centred on white, filling about 85% of the frame."""
    return _place_centre(cut, size, 0.85, (255, 255, 255))


def styled_view(
    cut: Image.Image, rng: np.random.Generator, size: int = CATALOG_SIZE
) -> Image.Image:
    """A second shot: other scale, a slight rotation, a soft shadow, a tinted backdrop."""
    tint = tuple(int(v) for v in 255 - rng.integers(0, 28, size=3))
    angle = float(rng.uniform(-10, 10))
    rotated = cut.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
    scale = float(rng.uniform(0.6, 1.0))
    canvas = Image.new("RGB", (size, size), tint)
    obj = _fit(rotated, int(size * scale))
    x = int((size - obj.width) / 2 + rng.uniform(-0.1, 0.1) * size)
    y = int((size - obj.height) / 2 + rng.uniform(-0.1, 0.1) * size)
    shadow = Image.new("RGBA", obj.size, (0, 0, 0, 0))
    shadow.putalpha(obj.getchannel("A").point(lambda a: a * 90 // 255))
    shadow = shadow.filter(ImageFilter.GaussianBlur(6))
    canvas.paste(shadow, (x + 6, y + 8), shadow)
    canvas.paste(obj, (x, y), obj)
    return canvas


def _fit(img: Image.Image, side: int) -> Image.Image:
    ratio = side / max(img.size)
    new = (max(1, int(img.width * ratio)), max(1, int(img.height * ratio)))
    return img.resize(new, Image.Resampling.LANCZOS)


def _place_centre(cut: Image.Image, size: int, fill: float, colour: tuple) -> Image.Image:
    obj = _fit(cut, int(size * fill))
    canvas = Image.new("RGB", (size, size), colour)
    canvas.paste(obj, ((size - obj.width) // 2, (size - obj.height) // 2), obj)
    return canvas


# ------------------------------------------------------------------------------- street photos


@dataclass(frozen=True)
class Placed:
    """Another product pasted into a street photo: which clutter item, where, how much shows."""

    clutter: int  # index into the `clutter` list given to `street_photo`
    box: tuple[int, int, int, int]  # (l, t, w, h) of its visible pixels
    visible: float  # visible pixels / pixels of the pasted object (in or out of the frame)


class _Layers:
    """Which pasted object owns each pixel of a scene, to box what stays visible of each."""

    def __init__(self, width: int, height: int) -> None:
        self.owner = np.full((height, width), -1, np.int16)
        self.areas: list[int] = []

    def add(self, obj: Image.Image, x: int, y: int) -> int:
        mask = np.asarray(obj.getchannel("A")) > 128
        layer = len(self.areas)
        self.areas.append(int(mask.sum()))
        height, width = self.owner.shape
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(width, x + obj.width), min(height, y + obj.height)
        if x1 > x0 and y1 > y0:
            region = self.owner[y0:y1, x0:x1]
            region[mask[y0 - y : y1 - y, x0 - x : x1 - x]] = layer
        return layer

    def visible(self, layer: int) -> tuple[tuple[int, int, int, int], float]:
        ys, xs = np.nonzero(self.owner == layer)
        if len(xs) == 0 or self.areas[layer] == 0:
            return (0, 0, 0, 0), 0.0
        box = (
            int(xs.min()),
            int(ys.min()),
            int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1),
        )
        return box, len(xs) / self.areas[layer]


def street_photo(
    cut: Image.Image,
    background: Image.Image,
    clutter: list[Image.Image],
    rng: np.random.Generator,
    size: int = STREET_SIZE,
) -> tuple[Image.Image, tuple[int, int, int, int], list[Placed]]:
    """Composite the product into a crop of a real photo, among other products.

    Returns the photo, the product's (l, t, w, h), and every clutter item pasted (one may be
    pasted twice: once in the scene, once covering a corner of the product) with what shows.
    """
    width = size
    height = int(size * rng.choice([0.75, 1.0, 1.33]))
    scene = _background_crop(background, width, height, rng)
    layers = _Layers(width, height)
    owners: dict[int, int] = {}  # layer -> clutter index
    for i, item in enumerate(clutter):
        shot = _photographic(item, rng)  # before the size: the draws keep their order
        _box, layer = _paste_random(scene, shot, rng, float(rng.uniform(0.15, 0.35)), layers)
        owners[layer] = i
    obj = _photographic(_warp(cut, rng), rng)
    box, _layer = _paste_random(scene, obj, rng, float(rng.uniform(0.3, 0.75)), layers)
    if rng.random() < 0.35 and clutter:
        owners[_occlude(scene, _photographic(clutter[0], rng), box, rng, layers)] = 0
    scene = _camera(scene, rng)
    placed = [Placed(i, *layers.visible(layer)) for layer, i in owners.items()]
    return scene, box, placed


def _background_crop(bg: Image.Image, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    zoom = float(rng.uniform(1.0, 2.5))
    cw = min(bg.width, int(bg.width / zoom))
    ch = min(bg.height, int(cw * h / w))
    cw = int(ch * w / h) if ch == bg.height else cw
    x = int(rng.integers(0, max(1, bg.width - cw + 1)))
    y = int(rng.integers(0, max(1, bg.height - ch + 1)))
    return bg.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BILINEAR)


def _warp(cut: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotation and a mild perspective tilt, as a hand-held camera sees an object."""
    img = cut.rotate(float(rng.uniform(-20, 20)), expand=True, resample=Image.Resampling.BICUBIC)
    w, h = img.size
    d = rng.uniform(-0.12, 0.12, size=8) * np.array([w, h] * 4)
    quad = np.array([0, 0, 0, h, w, h, w, 0], dtype=np.float64) + d
    warped = img.transform((w, h), Image.Transform.QUAD, tuple(quad), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        warped = warped.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    bbox = warped.getchannel("A").getbbox()
    return warped.crop(bbox) if bbox else img


def _photographic(cut: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Light, shading, colour cast and sensor noise on the object, so clip art looks shot."""
    rgb = cut.convert("RGB")
    rgb = ImageEnhance.Brightness(rgb).enhance(float(rng.uniform(0.65, 1.25)))
    rgb = ImageEnhance.Contrast(rgb).enhance(float(rng.uniform(0.7, 1.2)))
    arr: np.ndarray = np.asarray(rgb, np.float32)
    h, w = arr.shape[:2]
    gx = np.linspace(-1, 1, w)[None, :] * rng.uniform(-0.25, 0.25)
    gy = np.linspace(-1, 1, h)[:, None] * rng.uniform(-0.25, 0.25)
    arr = arr * (1 + gx + gy)[..., None] * rng.uniform(0.9, 1.1, size=3)
    arr += rng.normal(0, rng.uniform(1, 7), size=arr.shape)
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").convert("RGBA")
    out.putalpha(cut.getchannel("A"))
    return out


def _paste_random(
    scene: Image.Image,
    obj: Image.Image,
    rng: np.random.Generator,
    fraction: float,
    layers: _Layers,
) -> tuple[tuple[int, int, int, int], int]:
    """Paste `obj` scaled to `fraction` of the scene at a random place: its (l, t, w, h), layer."""
    obj = _fit(obj, max(8, int(min(scene.size) * fraction)))
    x = int(rng.integers(0, max(1, scene.width - obj.width + 1)))
    y = int(rng.integers(0, max(1, scene.height - obj.height + 1)))
    scene.paste(obj, (x, y), obj)
    layer = layers.add(obj, x, y)
    bbox = obj.getchannel("A").getbbox() or (0, 0, obj.width, obj.height)
    return (x + bbox[0], y + bbox[1], bbox[2] - bbox[0], bbox[3] - bbox[1]), layer


def _occlude(
    scene: Image.Image, obj: Image.Image, box: tuple, rng: np.random.Generator, layers: _Layers
) -> int:
    """Cover a corner of the product (at most about a quarter of it) with another object."""
    left, top, w, h = box
    obj = _fit(obj, max(8, int(0.45 * max(w, h))))
    cx = left + (w if rng.random() < 0.5 else 0) - obj.width // 2
    cy = top + (h if rng.random() < 0.5 else 0) - obj.height // 2
    scene.paste(obj, (int(cx), int(cy)), obj)
    return layers.add(obj, int(cx), int(cy))


def _camera(scene: Image.Image, rng: np.random.Generator) -> Image.Image:
    if rng.random() < 0.5:
        scene = scene.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.4))))
    buffer = io.BytesIO()
    scene.save(buffer, "JPEG", quality=int(rng.integers(35, 90)))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")

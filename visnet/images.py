"""The one door from bytes or a path to an RGB image: limits, EXIF, modes, typed errors."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "ImageError",
    "ImageLimits",
    "ImageTooLargeError",
    "NotAnImageError",
    "TruncatedImageError",
    "UnsupportedImageError",
    "load_image",
    "to_rgb",
]

# Pillow's own bomb check warns at half its limit and raises at its limit; we enforce our own cap
# before decoding, so switch its global off and never depend on its value.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(ValueError):
    """An input could not be turned into an RGB image. `code` is a stable machine-readable name."""

    code = "bad_image"


class NotAnImageError(ImageError):
    code = "not_an_image"


class TruncatedImageError(ImageError):
    code = "truncated_image"


class ImageTooLargeError(ImageError):
    code = "image_too_large"


class UnsupportedImageError(ImageError):
    code = "unsupported_image"


@dataclass(frozen=True)
class ImageLimits:
    """Caps applied before any pixel is decoded."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO")


DEFAULT_LIMITS = ImageLimits()


def load_image(
    source: bytes | str | Path,
    limits: ImageLimits = DEFAULT_LIMITS,
    background: tuple = (255, 255, 255),
) -> Image.Image:
    """Decode `source` (raw bytes or a file path) into an upright 8-bit RGB image.

    Raises a subclass of `ImageError` for every bad input; no other exception escapes.
    """
    data = _read_bytes(source, limits)
    if not data:
        raise NotAnImageError("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
            _check_header(opened, limits)
            opened.load()
            image: Image.Image = ImageOps.exif_transpose(opened) or opened
            return to_rgb(image, background)
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise NotAnImageError(f"not a recognised image format ({len(data)} bytes)") from exc
    except (OSError, SyntaxError, EOFError) as exc:
        message = str(exc)
        if "truncated" in message.lower() or "broken" in message or isinstance(exc, EOFError):
            raise TruncatedImageError(f"image data is truncated or corrupt: {message}") from exc
        raise UnsupportedImageError(f"image could not be decoded: {message}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except Exception as exc:  # Pillow plugins raise a zoo of types on hostile input
        raise UnsupportedImageError(
            f"image could not be decoded: {type(exc).__name__}: {exc}"
        ) from exc


def _read_bytes(source: bytes | str | Path, limits: ImageLimits) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
            if size > limits.max_bytes:
                raise ImageTooLargeError(
                    f"{path}: file is {size:,} bytes; the limit is {limits.max_bytes:,}"
                )
            data = path.read_bytes()
        except ImageError:
            raise
        except OSError as exc:
            raise NotAnImageError(f"cannot read image file {path}: {exc.strerror or exc}") from exc
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"image is {len(data):,} bytes; the limit is {limits.max_bytes:,}")
    return data


def _check_header(image: Image.Image, limits: ImageLimits) -> None:
    if image.format not in limits.formats:
        raise UnsupportedImageError(
            f"image format {image.format!r} is not accepted; accepted: {', '.join(limits.formats)}"
        )
    width, height = image.size
    if width < 1 or height < 1:
        raise NotAnImageError(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height:,} pixels; "
            f"the limit is {limits.max_pixels:,}"
        )


def to_rgb(image: Image.Image, background: tuple = (255, 255, 255)) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto `background`."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        image = _sixteen_bit_to_l(image)
    if image.mode == "P":
        has_alpha = "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    if image.mode in ("LA", "PA"):
        image = image.convert("RGBA")
    if image.mode == "RGBA" or image.mode == "RGBa":
        canvas = Image.new("RGB", image.size, background)
        canvas.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return canvas
    if image.mode == "CMYK":
        return image.convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    # Pillow's I;16 -> L conversion clips instead of scaling; scale the full range to 8 bits.
    import numpy as np

    array = np.asarray(image, dtype=np.uint32)
    # I;16* modes are 16-bit by declaration; only a plain "I" image needs its range guessed
    sixteen = image.mode.startswith("I;16") or array.max(initial=0) > 255
    peak = 65535 if sixteen else 255
    scaled = (array.astype(np.float64) * (255.0 / peak)).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


# ------------------------------------------------------------------------------- the one crop


def crop_with_margin(
    image: Image.Image, box_xyxy: Sequence[float], margin: float = 0.0
) -> Image.Image:
    """The box grown by `margin` of its width and height on every side, clipped to the image.

    Edges round outwards (floor the left and top, ceil the right and bottom), so the crop holds
    the whole grown box. Always at least one pixel, even for a degenerate box or one lying
    outside the image (`box_overlaps` tells those apart).
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0; got {margin}")
    if len(box_xyxy) != 4:
        raise ValueError(f"box must be (x1, y1, x2, y2); got {tuple(box_xyxy)}")
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    x1, x2 = min(x1, x2), max(x1, x2)
    y1, y2 = min(y1, y2), max(y1, y2)
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    width, height = image.size
    left = _clip(int(math.floor(x1 - dx)), 0, width - 1)
    top = _clip(int(math.floor(y1 - dy)), 0, height - 1)
    right = _clip(int(math.ceil(x2 + dx)), left + 1, width)
    bottom = _clip(int(math.ceil(y2 + dy)), top + 1, height)
    return image.crop((left, top, right, bottom))


def _clip(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def box_overlaps(box_xyxy: Sequence[float], size: tuple[int, int]) -> bool:
    """Whether the box shares at least some area with an image of `size` (width, height)."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    width = min(max(x1, x2), size[0]) - max(min(x1, x2), 0.0)
    height = min(max(y1, y2), size[1]) - max(min(y1, y2), 0.0)
    return width > 0 and height > 0

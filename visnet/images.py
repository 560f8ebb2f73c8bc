"""The one door from bytes or a path to an RGB image: limits, EXIF, modes, typed errors."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

__all__ = [
    "BadAspectRatioError",
    "DecodedImage",
    "ImageError",
    "ImageLimits",
    "ImageTooLargeError",
    "NotAnImageError",
    "TruncatedImageError",
    "UnsupportedImageError",
    "decode_image",
    "load_image",
    "to_rgb",
]

# Pillow's own bomb check warns at half its limit and raises at its limit; we enforce our own cap
# before decoding, so switch its global off and never depend on its value.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Work on a large decoded image in horizontal strips of about this many pixels, so a mode
# conversion or a shrink never holds a second full-size copy (Pillow keeps RGB, RGBA and CMYK in
# 4 bytes a pixel: a 40M-pixel image is 160 MB; a whole-image copy would double that).
STRIP_PIXELS = 1 << 20


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


class BadAspectRatioError(ImageError):
    code = "bad_aspect_ratio"


@dataclass(frozen=True)
class ImageLimits:
    """Caps checked from the header before any pixel is decoded, and the working size after.

    ``max_pixels`` and ``max_decode_bytes`` bound one decode: Pillow holds 4 bytes a pixel
    (160 MB at the default 40M pixels), but some decoders need more (`_decode_bytes`: WebP about
    18, a progressive JPEG about 10), so those are refused at fewer pixels; converting or
    shrinking then adds one strip (``STRIP_PIXELS``) and the reduced image. ``max_aspect``
    refuses strips of images: no product or street photo is 20 times wider than high, and
    beyond a few hundred to one torchvision's detector resize computes a zero side and the crop
    fit's shorter-side resize makes the longer side enormous (a 60000x1 PNG cost gigabytes).
    ``max_side`` (None: keep the full size) shrinks a larger image right after decoding (JPEG
    already decodes at 1/2 to 1/8 scale) so its longer side is at most this: every later step
    (detect, crop, embed, re-encode) then works on a bounded image.
    """

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_decode_bytes: int = 200_000_000
    max_aspect: float = 20.0
    max_side: int | None = None
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO")

    def __post_init__(self) -> None:
        if self.max_aspect < 1 or (self.max_side is not None and self.max_side < 1):
            raise ValueError(
                f"need max_aspect >= 1 and max_side >= 1 (or None); got {self.max_aspect}, "
                f"{self.max_side}"
            )


DEFAULT_LIMITS = ImageLimits()


@dataclass(frozen=True)
class DecodedImage:
    """An upright 8-bit RGB image and the upright size its file holds (larger when shrunk)."""

    image: Image.Image
    source_size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) factors from the image's pixel coordinates to the source file's."""
        return self.source_size[0] / self.image.width, self.source_size[1] / self.image.height


def load_image(
    source: bytes | str | Path,
    limits: ImageLimits = DEFAULT_LIMITS,
    background: tuple = (255, 255, 255),
) -> Image.Image:
    """Decode `source` (raw bytes or a file path) into an upright 8-bit RGB image.

    Raises a subclass of `ImageError` for every bad input; no other exception escapes.
    """
    return decode_image(source, limits, background).image


def decode_image(
    source: bytes | str | Path,
    limits: ImageLimits = DEFAULT_LIMITS,
    background: tuple = (255, 255, 255),
) -> DecodedImage:
    """`load_image`, also saying the source's upright size (to map boxes found on a shrunk
    image back onto the file). Raises only `ImageError`s."""
    data = _read_bytes(source, limits)
    if not data:
        raise NotAnImageError("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(data, limits, background)
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise NotAnImageError(f"not a recognised image format ({len(data)} bytes)") from exc
    except (OSError, SyntaxError, EOFError) as exc:
        message = str(exc)
        if _riff_cut(data):
            raise TruncatedImageError(
                f"WebP data is truncated: its header promises {_riff_size(data):,} bytes, "
                f"the file has {len(data):,}"
            ) from exc
        if "truncated" in message.lower() or "broken" in message or isinstance(exc, EOFError):
            raise TruncatedImageError(f"image data is truncated or corrupt: {message}") from exc
        raise UnsupportedImageError(f"image could not be decoded: {message}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except MemoryError as exc:
        raise ImageTooLargeError("image needs more memory to decode than is free") from exc
    except ValueError as exc:
        if any(sign in str(exc).lower() for sign in _METADATA_BOMB):
            raise ImageTooLargeError(
                "image metadata (a PNG text or ICC chunk) inflates past Pillow's cap "
                "(PngImagePlugin.MAX_TEXT_CHUNK, MAX_TEXT_MEMORY)"
            ) from exc
        raise UnsupportedImageError(f"image could not be decoded: {exc}") from exc
    except Exception as exc:  # Pillow plugins raise a zoo of types on hostile input
        raise UnsupportedImageError(
            f"image could not be decoded: {type(exc).__name__}: {exc}"
        ) from exc


# the ValueErrors Pillow's PNG reader raises for a zTXt/iTXt/iCCP bomb (PngImagePlugin.MAX_TEXT_*)
_METADATA_BOMB = ("decompressed data too large", "too much memory used in text chunks")


def _riff_size(data: bytes) -> int:
    return int.from_bytes(data[4:8], "little") + 8


def _riff_cut(data: bytes) -> bool:
    """A WebP whose RIFF header promises more bytes than there are (libwebp then only says it
    "could not create decoder object")."""
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP" and _riff_size(data) > len(data)


# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _decode(data: bytes, limits: ImageLimits, background: tuple) -> DecodedImage:
    opened = Image.open(io.BytesIO(data))
    _check_header(opened, limits)
    size = opened.size
    target = _fitted(size, limits.max_side)
    if target != size:
        opened.draft(None, target)  # JPEG only: decode at 1/2..1/8 scale, never below target
    opened.load()
    orientation = _orientation(opened)
    image: Image.Image = opened
    if opened.size != target:
        image = _reduce(opened, target)
        opened.close()  # frees the full-size pixels before the final resample
        if image.size != target:
            image = image.resize(target, Image.Resampling.LANCZOS)
    if orientation in _UPRIGHT:
        image = image.transpose(_UPRIGHT[orientation])
    if orientation in (5, 6, 7, 8):  # a quarter turn: the upright source is the other way round
        size = (size[1], size[0])
    return DecodedImage(to_rgb(image, background), size)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation, or 1 (as stored) when there is none or the EXIF is unreadable:
    a broken EXIF block does not make the pixels unusable."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
        return value if isinstance(value, int) else 1
    except Exception:  # Pillow's EXIF parser raises many types on hostile blocks
        return 1


def _fitted(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """`size` scaled down so its longer side is at most `max_side` (never up)."""
    if max_side is None or max(size) <= max_side:
        return size
    scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _strips(image: Image.Image, multiple: int = 1) -> Iterator[tuple[int, Image.Image]]:
    """(top row, copy of the rows) in strips of about `STRIP_PIXELS`, each a multiple of
    `multiple` rows high (the last may be shorter)."""
    rows = max(1, STRIP_PIXELS // max(1, image.width) // multiple) * multiple
    for top in range(0, image.height, rows):
        yield top, image.crop((0, top, image.width, min(image.height, top + rows)))


def _reducible(image: Image.Image) -> Image.Image:
    """Modes whose pixels cannot be averaged as they are -> ones that can (a palette index or a
    16-bit value means nothing averaged; Pillow's reduce refuses them or gets them wrong)."""
    if image.mode == "1":
        return image.convert("L")
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode == "PA":
        return image.convert("RGBA")
    if image.mode.startswith("I;16"):
        return _sixteen_bit_to_l(image)
    return image


def _reduce(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """`image` box-averaged by the largest whole factor that keeps it at least `target`, strip
    by strip (no second full-size copy); modes that cannot be averaged are converted first."""
    factor = max(1, min(image.width // target[0], image.height // target[1]))
    reduced: Image.Image | None = None
    for top, strip in _strips(image, factor):
        part = _reducible(strip)
        part = part.reduce(factor) if factor > 1 else part
        if reduced is None:
            size = (math.ceil(image.width / factor), math.ceil(image.height / factor))
            reduced = Image.new(part.mode, size)
        reduced.paste(part, (0, top // factor))
    assert reduced is not None  # an image has at least one row (checked from its header)
    return reduced


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
    if _decode_bytes(image) > limits.max_decode_bytes:
        raise ImageTooLargeError(
            f"decoding this {width}x{height} {image.format} would take about "
            f"{_decode_bytes(image) / 1e6:,.0f} MB; the limit is "
            f"{limits.max_decode_bytes / 1e6:,.0f} MB"
        )
    if max(width, height) > limits.max_aspect * min(width, height):
        raise BadAspectRatioError(
            f"image is {width}x{height}, {max(width, height) / min(width, height):,.1f}:1; "
            f"the longer side may be at most {limits.max_aspect:g} times the shorter"
        )


def _decode_bytes(image: Image.Image) -> int:
    """Peak bytes a decode of `image` holds, from its header (measured on Pillow 13: WebP's
    decoder output is copied twice, 18 bytes a pixel; libjpeg keeps every DCT coefficient of a
    progressive JPEG, up to 10 with CMYK; everything else lands in Pillow's 4 bytes a pixel)."""
    per_pixel = 4
    if image.format == "WEBP":
        per_pixel = 18
    elif image.format in ("JPEG", "MPO") and image.info.get("progressive"):
        per_pixel = 10
    return image.width * image.height * per_pixel


def to_rgb(image: Image.Image, background: tuple = (255, 255, 255)) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto `background`."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        image = _sixteen_bit_to_l(image)
    if image.mode == "P":
        has_alpha = "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    if image.mode in ("LA", "PA"):
        image = image.convert("RGBA")
    if image.mode == "RGBa":
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        canvas = Image.new("RGB", image.size, background)
        canvas.paste(image, mask=image)  # an RGBA mask: its alpha band
        return canvas
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) grey -> 8-bit, scaling the full range (Pillow's own conversion
    clips instead), strip by strip so no full-size wide integer copy is made."""
    import numpy as np

    # I;16* modes are 16-bit by declaration; only a plain "I" image needs its range guessed
    extrema = image.getextrema()  # (low, high) for a one-band image
    high = extrema[1] if isinstance(extrema[1], int | float) else 0
    sixteen = image.mode.startswith("I;16") or int(high) > 255
    peak = 65535 if sixteen else 255
    out = Image.new("L", image.size)
    for top, strip in _strips(image):
        values = np.asarray(strip).astype(np.int64).clip(0, peak)
        # round(v * 255 / peak) in integers: no ties occur for peak 65535, and peak 255 is exact
        scaled = (values * 255 + peak // 2) // peak
        out.paste(Image.fromarray(scaled.astype(np.uint8), mode="L"), (0, top))
    return out


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

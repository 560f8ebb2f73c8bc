"""Every kind of bad or awkward image gets its typed error or the right pixels."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from visnet.images import (
    ImageError,
    ImageLimits,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedImageError,
    load_image,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def close(pixel: Any, expected: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True))


def noise_jpeg(side: int = 64) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels, "RGB"), "JPEG", quality=95)


# ------------------------------------------------------------------------------------ not images


def test_zero_bytes_is_not_an_image(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(NotAnImageError):
        load_image(empty)
    with pytest.raises(NotAnImageError):
        load_image(b"")


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n" * 10)
    with pytest.raises(NotAnImageError):
        load_image(text)


def test_missing_path_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(NotAnImageError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = noise_jpeg()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(TruncatedImageError):
        load_image(path)


def test_truncated_png() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels, "RGB"), "PNG")
    with pytest.raises(TruncatedImageError):
        load_image(data[: len(data) // 2])


# ---------------------------------------------------------------------------------------- limits


def test_too_many_pixels() -> None:
    data = encode(Image.new("RGB", (100, 100), RED), "PNG")
    with pytest.raises(ImageTooLargeError, match="100x100"):
        load_image(data, ImageLimits(max_pixels=100 * 100 - 1))
    assert load_image(data, ImageLimits(max_pixels=100 * 100)).size == (100, 100)


def test_too_many_bytes(tmp_path: Path) -> None:
    data = noise_jpeg()
    path = tmp_path / "big.jpg"
    path.write_bytes(data)
    limits = ImageLimits(max_bytes=len(data) - 1)
    with pytest.raises(ImageTooLargeError):
        load_image(data, limits)
    with pytest.raises(ImageTooLargeError, match="big.jpg"):
        load_image(path, limits)


def test_unsupported_format_ico() -> None:
    data = encode(Image.new("RGB", (32, 32), RED), "ICO")
    with pytest.raises(UnsupportedImageError, match="ICO"):
        load_image(data)


def test_format_not_in_limits() -> None:
    data = encode(Image.new("RGB", (8, 8), RED), "JPEG")
    with pytest.raises(UnsupportedImageError, match="JPEG"):
        load_image(data, ImageLimits(formats=("PNG",)))


# ----------------------------------------------------------------------------------------- modes


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta + yellow: red
    image = load_image(encode(cmyk, "JPEG", quality=95))
    assert image.mode == "RGB"
    assert close(image.getpixel((8, 8)), RED, tol=20)


def test_sixteen_bit_png_scales_to_eight_bit_grey() -> None:
    values = np.array([[0, 32768, 65535, 16384]], dtype=np.uint16)
    source = Image.fromarray(values)
    assert source.mode == "I;16"
    image = load_image(encode(source, "PNG"))
    assert image.mode == "RGB"
    grey = np.asarray(image)[0, :, 0]
    assert np.array_equal(np.asarray(image)[..., 0], np.asarray(image)[..., 2])
    assert list(grey) == [0, 128, 255, 64]


def test_dark_sixteen_bit_png_stays_dark() -> None:
    # every value fits in 8 bits, but on a 16-bit scale they are all nearly black
    source = Image.fromarray(np.array([[0, 200, 255]], dtype=np.uint16))
    grey = np.asarray(load_image(encode(source, "PNG")))[0, :, 0]
    assert list(grey) == [0, 1, 1]


def test_palette_png_transparency_becomes_white() -> None:
    palette = Image.new("P", (4, 1))
    palette.putpalette([0, 0, 0, *RED, *BLUE] + [0] * (256 - 3) * 3)
    palette.putdata([0, 1, 2, 0])
    image = load_image(encode(palette, "PNG", transparency=0))
    assert image.mode == "RGB"
    assert [image.getpixel((x, 0)) for x in range(4)] == [WHITE, RED, BLUE, WHITE]


def test_rgba_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (*RED, 255))
    rgba.putpixel((2, 2), (*BLUE, 128))
    image = load_image(encode(rgba, "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((1, 1)) == RED
    assert close(image.getpixel((2, 2)), (127, 127, 255), tol=2)


def test_grey_and_grey_alpha_become_rgb() -> None:
    assert load_image(encode(Image.new("L", (4, 4), 100), "PNG")).getpixel((0, 0)) == (100,) * 3
    la = Image.new("LA", (4, 4), (0, 0))
    assert load_image(encode(la, "PNG")).getpixel((0, 0)) == WHITE


# ------------------------------------------------------------------------------------------ EXIF


def rotated_jpeg(orientation: int) -> bytes:
    """40 wide, 20 tall as stored: blue, with a red 10x10 block at the stored top-left."""
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize(
    ("orientation", "red_corner"),
    [(6, "top_right"), (8, "bottom_left")],  # 6: turn 90 clockwise; 8: 90 counter-clockwise
)
def test_exif_rotation(orientation: int, red_corner: str) -> None:
    image = load_image(rotated_jpeg(orientation))
    assert image.size == (20, 40)
    corners = {"top_left": (2, 2), "top_right": (17, 2), "bottom_left": (2, 37)}
    corners["bottom_right"] = (17, 37)
    for name, xy in corners.items():
        expected = RED if name == red_corner else BLUE
        assert close(image.getpixel(xy), expected, tol=40), (name, image.getpixel(xy))


def test_path_and_bytes_agree(tmp_path: Path) -> None:
    data = rotated_jpeg(6)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(load_image(data)))


# --------------------------------------------------------------------------------------- garbage

MAGIC = [
    b"",
    b"\xff\xd8\xff\xe0",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"BM",
    b"RIFF\x00\x00\x00\x00WEBP",
]
MAGIC += [b"II*\x00", b"MM\x00*", b"\x00\x00\x01\x00"]


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF in TIFFs
def test_garbage_raises_only_image_errors() -> None:
    rng = np.random.default_rng(1234)
    real = [noise_jpeg(16), encode(Image.new("RGBA", (16, 16), RED), "PNG")]
    cases = [magic + rng.bytes(int(rng.integers(0, 300))) for magic in MAGIC for _ in range(15)]
    for data in real:  # corrupt real files: flip bytes and cut at random places
        for _ in range(20):
            broken = bytearray(data)
            for i in rng.integers(0, len(broken), size=5):
                broken[i] = int(rng.integers(0, 256))
            cases.append(bytes(broken[: int(rng.integers(1, len(broken) + 1))]))
    for data in cases:
        try:
            image = load_image(data)
        except ImageError:
            continue
        assert image.mode == "RGB"


# ------------------------------------------------------------------- bounded work (issue #15)


def test_strips_are_refused_by_aspect_ratio() -> None:
    from visnet.images import BadAspectRatioError

    with pytest.raises(BadAspectRatioError, match="60000x1"):
        load_image(encode(Image.new("L", (60_000, 1)), "PNG"))
    assert load_image(encode(Image.new("L", (200, 10)), "PNG")).size == (200, 10)
    with pytest.raises(BadAspectRatioError):
        load_image(encode(Image.new("L", (200, 10)), "PNG"), ImageLimits(max_aspect=10))


def test_decode_bytes_cap_refuses_costly_decoders() -> None:
    data = encode(Image.new("RGB", (600, 600), RED), "WEBP", lossless=True)
    assert load_image(data).size == (600, 600)
    with pytest.raises(ImageTooLargeError, match="WEBP"):  # 18 bytes a pixel: 6.5 MB
        load_image(data, ImageLimits(max_decode_bytes=6_000_000))
    assert load_image(data, ImageLimits(max_decode_bytes=7_000_000)).size == (600, 600)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "I;16", "1", "CMYK"])
def test_max_side_shrinks_every_mode_and_says_the_source_size(fmt: str, mode: str) -> None:
    from visnet.images import decode_image

    if (fmt == "JPEG") != (mode in ("RGB", "CMYK")) and mode != "RGB":
        pytest.skip(f"{fmt} holds no {mode} image")
    source = Image.new("RGB", (301, 150), RED)
    source.paste(BLUE, (150, 0, 301, 150))
    if mode == "I;16":
        source = Image.fromarray(np.full((150, 301), 65535, np.uint16))
    else:
        source = source.convert(mode)
    decoded = decode_image(encode(source, fmt), ImageLimits(max_side=100))
    assert decoded.image.mode == "RGB" and decoded.image.size == (100, 50)
    assert decoded.source_size == (301, 150)
    assert decoded.scale == pytest.approx((3.01, 3.0))
    if mode in ("RGB", "RGBA", "P", "CMYK"):
        assert close(decoded.image.getpixel((10, 25)), RED, tol=40)
        assert close(decoded.image.getpixel((90, 25)), BLUE, tol=40)
    # below the cap nothing changes: the same pixels as a full-size decode
    small = encode(source, fmt)
    assert np.array_equal(
        np.asarray(load_image(small, ImageLimits(max_side=400))), np.asarray(load_image(small))
    )


def test_shrink_happens_before_exif_rotation() -> None:
    from visnet.images import decode_image

    decoded = decode_image(rotated_jpeg(6), ImageLimits(max_side=20))
    assert decoded.image.size == (10, 20) and decoded.source_size == (20, 40)
    assert decoded.scale == (2.0, 2.0)

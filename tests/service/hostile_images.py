"""Malformed and hostile images, one distinct cause each, as small byte strings.

`KINDS` maps a name to its cause and its maker; `payload(name)` builds (and caches) the bytes.
Bombs are small files that claim or expand to huge sizes; nothing here is larger than a few
hundred kilobytes. Used by tests/service/test_hostile_images.py (what each must answer is
there) and open to any test (tests/service/ is on pytest's path).
"""

from __future__ import annotations

import functools
import gzip
import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["KINDS", "Kind", "payload"]


@dataclass(frozen=True)
class Kind:
    cause: str
    make: Callable[[], bytes]


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _noise(width: int = 48, height: int = 32, mode: str = "RGB") -> Image.Image:
    channels = len(mode)
    pixels = np.random.default_rng(width * 7 + height).integers(
        0, 256, (height, width, channels), dtype=np.uint8
    )
    return Image.fromarray(pixels if channels > 1 else pixels[..., 0])


def _jpeg() -> bytes:
    return encode(_noise(), "JPEG", quality=90)


def _png() -> bytes:
    return encode(_noise(), "PNG")


# ---- hand-made PNGs ----------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _ihdr(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))


def _zeros_stream(row_bytes: int, rows: int) -> bytes:
    """zlib of `rows` filter-0 rows of zeros, compressed a row at a time (never held whole)."""
    packer, row = zlib.compressobj(9), b"\x00" * (row_bytes + 1)
    return b"".join(packer.compress(row) for _ in range(rows)) + packer.flush()


def _png_of(width: int, height: int, depth: int = 8, colour: int = 2, extra: bytes = b"") -> bytes:
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row_bytes = width * channels * depth // 8
    idat = _chunk(b"IDAT", _zeros_stream(row_bytes, height))
    return b"\x89PNG\r\n\x1a\n" + _ihdr(width, height, depth, colour) + extra + idat + _iend()


def _iend() -> bytes:
    return _chunk(b"IEND", b"")


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header claiming `width` x `height` with one tiny row of data."""
    idat = _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + _ihdr(width, height) + idat + _iend()


def _ztxt_bomb() -> bytes:
    text = _chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(b"A" * 50_000_000, 9))
    return _png_of(16, 16, extra=text)


def _many_text_chunks() -> bytes:
    one = _chunk(b"zTXt", b"note\x00\x00" + zlib.compress(b"B" * 900_000, 9))
    return _png_of(16, 16, extra=one * 80)


def _icc_bomb_png() -> bytes:
    profile = _chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x00" * 30_000_000, 9))
    return _png_of(16, 16, extra=profile)


def _bad_crc_png() -> bytes:
    data = bytearray(_png())
    data[29] ^= 0xFF  # inside the IHDR's CRC
    return bytes(data)


def _apng() -> bytes:
    frames = [_noise(32, 32), Image.new("RGB", (32, 32), "blue")]
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:])


# ---- JPEG variants -----------------------------------------------------------------------------


def _jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _headers_only_jpeg() -> bytes:
    data = _jpeg()
    return data[: data.index(b"\xff\xda") + 14]


def _big_flat_jpeg() -> bytes:
    return encode(Image.new("L", (6000, 6000), 128), "JPEG", quality=20)


def _with_exif(orientation: object, image: Image.Image | None = None) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image or _noise(48, 24), "JPEG", quality=90, exif=exif.tobytes())


def _app_segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def _insert_after_soi(data: bytes, segments: bytes) -> bytes:
    return data[:2] + segments + data[2:]


def _corrupt_exif() -> bytes:
    junk = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + b"\x12\x01\x03\x00" * 40
    return _insert_after_soi(_jpeg(), _app_segment(0xE1, junk))


def _exif_entry(tag: int, kind: int, count: int, value: bytes, next_ifd: int = 0) -> bytes:
    """A JPEG whose EXIF holds one IFD entry, as given (`value`: 4 bytes), and a next pointer."""
    ifd = struct.pack("<HHHI", 1, tag, kind, count) + value + struct.pack("<I", next_ifd)
    segment = _app_segment(0xE1, b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + ifd)
    return _insert_after_soi(_jpeg(), segment)


def _exif_ifd_loop() -> bytes:
    return _exif_entry(0x0112, 3, 1, struct.pack("<HH", 6, 0), next_ifd=8)  # IFD0 -> IFD0


def _huge_icc_jpeg() -> bytes:
    return encode(_noise(), "JPEG", quality=90, icc_profile=b"\x00" * 1_000_000)


def _huge_comment_jpeg() -> bytes:
    comments = _app_segment(0xFE, b"C" * 65_000) * 8
    return _insert_after_soi(_jpeg(), comments)


def _rotated_large_jpeg() -> bytes:
    return _with_exif(6, Image.new("RGB", (3000, 1500), "red"))


def _mpo() -> bytes:
    frames = [_noise(32, 32), Image.new("RGB", (32, 32), "green")]
    return encode(frames[0], "MPO", save_all=True, append_images=frames[1:])


# ---- GIF, WebP, TIFF, BMP ----------------------------------------------------------------------


def _gif() -> bytes:
    return encode(_noise(64, 64).convert("P"), "GIF")


def _gif_screen_lies() -> bytes:
    data = bytearray(encode(_noise(16, 16).convert("P"), "GIF"))
    data[6:10] = struct.pack("<HH", 60000, 60000)
    return bytes(data)


def _gif_frame_bomb() -> bytes:
    """A GIF whose screen and one frame claim 65535x65535, with a few bytes of LZW data."""
    head = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00"
    return head + frame + b"\x3b"


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (24, 24), colour) for colour in ("red", "green", "blue")]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)


def _webp_claiming(width: int, height: int) -> bytes:
    """A one-colour lossless WebP (its pixels cost no bits) whose VP8L header says this size."""
    data = bytearray(encode(Image.new("RGB", (16, 16), "white"), "WEBP", lossless=True))
    bits = struct.unpack("<I", data[21:25])[0] & ~((1 << 28) - 1)
    data[21:25] = struct.pack("<I", bits | (width - 1) | (height - 1) << 14)
    return bytes(data)


def _webp_riff_lies() -> bytes:
    data = bytearray(encode(_noise(), "WEBP"))
    data[4:8] = struct.pack("<I", 0x7FFFFFF0)
    return bytes(data)


def _tiff_claiming(width: int, height: int) -> bytes:
    """A one-strip little-endian TIFF whose tags claim `width` x `height`."""
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8 + 2 + 12 * 8 + 4),
        (277, 3, 1, 1),
        (279, 4, 1, 16),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHII", tag, kind, count, value)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 4 + b"\x00" * 16


def _tiff_strip_past_end() -> bytes:
    data = bytearray(encode(_noise(), "TIFF"))
    index = Image.open(io.BytesIO(bytes(data)))
    offset = index.tag_v2[273][0]
    at = bytes(data).rindex(struct.pack("<I", offset))
    data[at : at + 4] = struct.pack("<I", 10_000_000)
    return bytes(data)


def _bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (8, 8), "red"), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def _top_down_bmp() -> bytes:
    data = bytearray(encode(_noise(8, 8), "BMP"))
    data[22:26] = struct.pack("<i", -8)
    return bytes(data)


# ---- not images, archives and polyglots ----------------------------------------------------------


def _zip_of_png() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("image.png", _png())
    return out.getvalue()


def _tar_of_png() -> bytes:
    out, data = io.BytesIO(), _png()
    with tarfile.open(fileobj=out, mode="w") as archive:
        info = tarfile.TarInfo("image.png")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _eps() -> bytes:
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n"


def _lab_tiff() -> bytes:
    return encode(Image.new("LAB", (16, 16), (50, 20, -20)), "TIFF")


def _mode(mode: str, fmt: str = "PNG", **params: object) -> Callable[[], bytes]:
    def make() -> bytes:
        image = _noise(32, 16).convert(mode)
        return encode(image, fmt, **params)

    return make


def _array(values: np.ndarray, fmt: str = "PNG") -> Callable[[], bytes]:
    return lambda: encode(Image.fromarray(values), fmt)


KINDS: dict[str, Kind] = {
    # not images, archives, polyglots
    "empty": Kind("zero bytes", lambda: b""),
    "text": Kind("plain text", lambda: b"just some text, not a picture\n" * 4),
    "html": Kind("an HTML page sent as an image", lambda: b"<html><script>x()</script></html>"),
    "svg": Kind(
        "SVG (XML, not a raster format)", lambda: b'<svg xmlns="http://www.w3.org/2000/svg"/>'
    ),
    "zip": Kind("a zip archive holding a PNG", _zip_of_png),
    "gzip": Kind("a gzipped PNG", lambda: gzip.compress(_png())),
    "tar": Kind("a tar archive holding a PNG", _tar_of_png),
    "pdf": Kind("a PDF", lambda: b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"),
    "elf": Kind("an executable", lambda: b"\x7fELF\x02\x01\x01" + b"\x00" * 57),
    "png-magic-only": Kind("the PNG signature and nothing else", lambda: b"\x89PNG\r\n\x1a\n"),
    "jpeg-zip-polyglot": Kind("a JPEG with a zip appended", lambda: _jpeg() + _zip_of_png()),
    "png-html-polyglot": Kind(
        "a PNG with a script after IEND", lambda: _png() + b"<script>x()</script>"
    ),
    "gifar": Kind("a GIF with a jar (zip) appended", lambda: _animated("GIF") + _zip_of_png()),
    # refused formats
    "ico": Kind("an icon (format not accepted)", _mode("RGB", "ICO")),
    "ppm": Kind("a PPM (format not accepted)", _mode("RGB", "PPM")),
    "pcx": Kind("a PCX (format not accepted)", _mode("RGB", "PCX")),
    "eps": Kind("an EPS, which Pillow would render with Ghostscript", _eps),
    # truncations and header lies
    "jpeg-truncated": Kind("a JPEG cut inside its scan", lambda: _jpeg()[: len(_jpeg()) * 2 // 3]),
    "jpeg-headers-only": Kind("a JPEG cut right after its scan header", _headers_only_jpeg),
    "png-truncated": Kind("a PNG cut inside IDAT", lambda: _png()[: len(_png()) // 2]),
    "png-bad-crc": Kind("a PNG whose IHDR checksum is wrong", _bad_crc_png),
    "png-no-iend": Kind("a PNG without its IEND chunk", lambda: _png()[:-12]),
    "png-ihdr-lies": Kind(
        "a PNG claiming 4000x4000 with 16x16 of data", lambda: _png_claiming(4000, 4000)
    ),
    "png-zero-width": Kind("a PNG claiming 0x16", lambda: _png_claiming(0, 16)),
    "gif-truncated": Kind("a GIF cut in its image data", lambda: _gif()[: len(_gif()) // 2]),
    "gif-screen-lies": Kind("a 16x16 GIF whose screen claims 60000x60000", _gif_screen_lies),
    "webp-truncated": Kind("a WebP cut in half", lambda: encode(_noise(), "WEBP")[:80]),
    "webp-riff-lies": Kind("a WebP whose RIFF size claims 2 GB", _webp_riff_lies),
    "tiff-truncated": Kind("a TIFF cut in its strip data", lambda: encode(_noise(), "TIFF")[:200]),
    "tiff-strip-past-end": Kind(
        "a TIFF whose strip offset points past the file", _tiff_strip_past_end
    ),
    "bmp-truncated": Kind("a BMP cut in its pixel data", lambda: encode(_noise(), "BMP")[:300]),
    "bmp-top-down": Kind("a top-down BMP (negative height, valid)", _top_down_bmp),
    # bombs: claim or expand to huge sizes
    "png-bomb-header": Kind(
        "a PNG claiming 100000x100000", lambda: _png_claiming(100_000, 100_000)
    ),
    "png-bomb-in-cap": Kind("6300x6300 zeros in about 120 KB of PNG", lambda: _png_of(6300, 6300)),
    "png16-bomb-in-cap": Kind("6300x6300 16-bit grey zeros", lambda: _png_of(6300, 6300, 16, 0)),
    "png-rgba-bomb-in-cap": Kind("5000x5000 RGBA zeros", lambda: _png_of(5000, 5000, 8, 6)),
    "png-wider-than-jpeg": Kind(
        "a PNG 70000x3500 (wider than JPEG can hold)", lambda: _png_claiming(70_000, 3_500)
    ),
    "gif-bomb": Kind("a GIF frame claiming 65535x65535", _gif_frame_bomb),
    "tiff-bomb": Kind("a TIFF claiming 100000x100000", lambda: _tiff_claiming(100_000, 100_000)),
    "webp-bomb": Kind("a WebP claiming 16383x16383", lambda: _webp_claiming(16383, 16383)),
    "webp-bomb-in-cap": Kind(
        "a 38-byte 6300x6300 WebP (within the pixel cap; libwebp needs 18 bytes a pixel)",
        lambda: _webp_claiming(6300, 6300),
    ),
    "webp-in-budget": Kind("a 2500x2500 one-colour WebP", lambda: _webp_claiming(2500, 2500)),
    "jpeg-progressive-large": Kind(
        "a 6000x6000 progressive JPEG (libjpeg keeps every coefficient)",
        lambda: encode(Image.new("L", (6000, 6000), 128), "JPEG", quality=20, progressive=True),
    ),
    "jpeg-bomb": Kind("a JPEG claiming 65500x65500", lambda: _jpeg_claiming(65_500, 65_500)),
    "jpeg-large-in-cap": Kind("a 6000x6000 flat JPEG (decoded at reduced scale)", _big_flat_jpeg),
    "bmp-bomb": Kind("a BMP claiming 100000x100000", lambda: _bmp_claiming(100_000, 100_000)),
    "png-text-bomb": Kind("a zTXt chunk inflating to 50 MB", _ztxt_bomb),
    "png-many-text": Kind("80 zTXt chunks of 0.9 MB each", _many_text_chunks),
    "png-icc-bomb": Kind("an iCCP profile inflating to 30 MB", _icc_bomb_png),
    "jpeg-huge-icc": Kind("a JPEG with a 1 MB ICC profile", _huge_icc_jpeg),
    "jpeg-huge-comments": Kind("a JPEG with 0.5 MB of comment segments", _huge_comment_jpeg),
    # modes
    "png-16bit-grey": Kind("16-bit grey", _array(np.full((16, 32), 40000, np.uint16))),
    "png-16bit-rgb": Kind("16-bit RGB", lambda: _png_of(32, 16, 16, 2)),
    "png-16bit-rgba": Kind("16-bit RGBA", lambda: _png_of(32, 16, 16, 6)),
    "tiff-16bit-grey": Kind(
        "16-bit grey TIFF", _array(np.full((16, 16), 40000, np.uint16), "TIFF")
    ),
    "tiff-int32": Kind(
        "32-bit integer grey TIFF", _array(np.full((16, 16), 70000, np.int32), "TIFF")
    ),
    "tiff-float": Kind("32-bit float TIFF", _array(np.full((16, 16), 0.5, np.float32), "TIFF")),
    "jpeg-cmyk": Kind("a CMYK JPEG", _mode("CMYK", "JPEG")),
    "tiff-cmyk": Kind("a CMYK TIFF", _mode("CMYK", "TIFF")),
    "tiff-lab": Kind("a CIELAB TIFF", _lab_tiff),
    "tiff-ycbcr": Kind("a YCbCr JPEG-compressed TIFF", _mode("RGB", "TIFF", compression="jpeg")),
    "png-palette": Kind("a palette PNG", _mode("P")),
    "png-palette-alpha": Kind("a palette PNG with transparency", _mode("P", "PNG", transparency=0)),
    "png-grey-alpha": Kind("grey with alpha", _mode("LA")),
    "png-transparent": Kind(
        "fully transparent RGBA", lambda: encode(Image.new("RGBA", (16, 16)), "PNG")
    ),
    "png-1bit": Kind("1-bit black and white", _mode("1")),
    "webp-alpha": Kind("a WebP with alpha", _mode("RGBA", "WEBP")),
    "tiff-rgba": Kind("an RGBA TIFF", _mode("RGBA", "TIFF")),
    "bmp-32bit": Kind("a 32-bit BMP", _mode("RGBA", "BMP")),
    # animated and multi-frame
    "gif-animated": Kind("an animated GIF", lambda: _animated("GIF")),
    "webp-animated": Kind("an animated WebP", lambda: _animated("WEBP")),
    "png-animated": Kind("an animated PNG (APNG)", _apng),
    "tiff-multipage": Kind("a three-page TIFF", lambda: _animated("TIFF")),
    "mpo": Kind("a multi-picture JPEG (MPO)", _mpo),
    # EXIF orientation oddities
    "exif-rotated": Kind("EXIF orientation 6 (a quarter turn)", lambda: _with_exif(6)),
    "exif-orientation-0": Kind("EXIF orientation 0 (invalid)", lambda: _with_exif(0)),
    "exif-orientation-huge": Kind("EXIF orientation 65535 (invalid)", lambda: _with_exif(65535)),
    "exif-orientation-text": Kind(
        "EXIF orientation stored as text", lambda: _exif_entry(0x0112, 2, 2, b"6\x00\x00\x00")
    ),
    "exif-corrupt": Kind("an EXIF block of junk", _corrupt_exif),
    "exif-ifd-loop": Kind("an EXIF IFD chain pointing at itself", _exif_ifd_loop),
    "exif-rotated-large": Kind(
        "a 3000x1500 JPEG turned by EXIF (shrunk, then turned)", _rotated_large_jpeg
    ),
    # extreme sizes and aspect ratios
    "one-pixel": Kind("a 1x1 image", lambda: encode(Image.new("RGB", (1, 1), "red"), "PNG")),
    "strip-60000x1": Kind(
        "a 60000x1 PNG (the issue's embedder blow-up)", lambda: _png_of(60_000, 1)
    ),
    "strip-1x60000": Kind("a 1x60000 PNG", lambda: _png_of(1, 60_000)),
    "strip-700x1": Kind("700:1, past torchvision's zero-side ratio", lambda: _png_of(700, 1)),
    "aspect-21": Kind("21:1, just past the cap", lambda: _png_of(210, 10)),
    "aspect-20": Kind("20:1, at the cap", lambda: _png_of(200, 10)),
}


@functools.cache
def payload(name: str) -> bytes:
    """The bytes of one kind (built once)."""
    return KINDS[name].make()

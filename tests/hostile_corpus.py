"""Generate a corpus of hostile and unusual image inputs with Pillow and numpy (no downloads).

``build_corpus(dir)`` writes every case to ``dir`` and returns a list of :class:`Case`; each says what
``toast_core.io.images.load_image`` must do with it: load it (``expect="ok"``, optional output size and a
check on the pixels) or refuse it with an ``InputError`` whose message contains ``message``.
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

Check = Callable[[Image.Image], None]


@dataclass
class Case:
    """One corpus entry. ``path`` may be a directory or missing; ``data`` is None for those."""

    name: str
    path: Path
    expect: str  # "ok" or "error"
    message: str = ""  # substring the InputError message must contain (case-insensitive)
    size: tuple[int, int] | None = None  # expected output (W, H) when expect == "ok"
    check: Check | None = None  # extra assertion on the loaded RGB image

    @property
    def data(self) -> bytes | None:
        """Raw bytes of the file, or None for a directory / missing path."""
        return self.path.read_bytes() if self.path.is_file() else None


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8), "RGB")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header(w: int, h: int, colour: int = 0, depth: int = 8, idat: bytes = b"") -> bytes:
    """A syntactically valid PNG declaring ``w``x``h`` with a tiny (incomplete) pixel stream."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", idat or zlib.compress(b"\x00" * 1024, 9)) + _chunk(b"IEND", b""))


def _png_rgb16(w: int = 64, h: int = 16) -> bytes:
    """A real 16-bit RGB PNG (Pillow cannot write one) with a full-range horizontal ramp."""
    ramp = np.linspace(0, 65535, w).astype(">u2")
    rows = np.repeat(np.stack([ramp, ramp, 65535 - ramp], -1)[None], h, 0).reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    return _png_header(w, h, colour=2, depth=16, idat=zlib.compress(raw))


def _pixel_is(xy: tuple[int, int], rgb: tuple[int, int, int], tol: int = 8) -> Check:
    def check(img: Image.Image) -> None:
        got = img.getpixel(xy)
        assert all(abs(a - b) <= tol for a, b in zip(got, rgb)), f"pixel {xy} is {got}, expected {rgb}"
    return check


def _spans_full_range(img: Image.Image) -> None:
    arr = np.asarray(img)
    assert arr.min() <= 2 and arr.max() >= 253, f"range {arr.min()}..{arr.max()} does not span 0..255"


def _ok_finite(img: Image.Image) -> None:
    assert np.asarray(img).max() > 0


def _with_exif_orientation(im: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(im, "JPEG", exif=exif.tobytes(), quality=90)


def _frames(colours: list[tuple[int, int, int]], size=(40, 30)) -> list[Image.Image]:
    return [Image.new("RGB", size, c) for c in colours]


def _animated(fmt: str, **kw) -> bytes:
    first, *rest = _frames([(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    return _save(first, fmt, save_all=True, append_images=rest, **kw)


class _Evil:
    """Pickled (never unpickled) to plant a payload; pickling only calls this __reduce__."""

    def __reduce__(self):
        return (print, ("pwned",))


def _jpeg_with_sof_size(w: int, h: int) -> bytes:
    """A small real JPEG whose SOF0 header is patched to declare ``w``x``h``."""
    data = bytearray(_save(_gradient(16, 16), "JPEG"))
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _raw_cases() -> list[tuple[str, str, bytes, str, str, tuple[int, int] | None, Check | None]]:
    g = _gradient(64, 48)
    jpeg = _save(g, "JPEG", quality=90)
    png = _save(g, "PNG")
    rgba = g.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.array([0, 255], np.uint8).repeat(32), (48, 1))))
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (16, 0, 32, 32))
    la = Image.merge("LA", (Image.new("L", (20, 20), 0), Image.new("L", (20, 20), 0)))
    i16 = Image.fromarray(np.linspace(0, 65535, 64 * 16).astype(np.uint16).reshape(16, 64))
    flt = Image.fromarray(np.linspace(0.0, 1.0, 32 * 32, dtype=np.float32).reshape(32, 32), "F")
    bad_flt = np.linspace(-5.0, 300.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    bad_flt[0, :4] = [np.nan, np.inf, -np.inf, np.nan]
    big_i = Image.fromarray((np.arange(32 * 32, dtype=np.int32).reshape(32, 32) - 500) * 10_000, "I")
    grey_trns = Image.new("L", (16, 16), 7)
    tiff_pages = _frames([(255, 0, 0), (0, 255, 0)], (24, 24))
    bad_idat = bytearray(png)
    j = bad_idat.index(b"IDAT") + 40
    bad_idat[j:j + 200] = bytes(range(200))
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # IHDR CRC
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64"/></svg>'
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("image.png", png)
    gif = _save(g.convert("P"), "GIF")
    bmp = _save(g, "BMP")
    gi = gif.index(b",")  # GIF image descriptor: x, y, w, h follow
    noise = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    noisy_jpeg = _save(Image.fromarray(noise), "JPEG", quality=95)
    red_first = _pixel_is((5, 5), (255, 0, 0))
    E, O = "error", "ok"
    return [
        # name, filename, bytes, expect, message, size, check
        ("jpeg", "a.jpg", jpeg, O, "", (64, 48), None),
        ("png", "a.png", png, O, "", (64, 48), _pixel_is((63, 0), (255, 0, 0))),
        ("webp", "a.webp", _save(g, "WEBP", lossless=True), O, "", (64, 48), _pixel_is((0, 47), (0, 255, 255))),
        ("bmp", "a.bmp", bmp, O, "", (64, 48), None),
        ("tiff", "a.tiff", _save(g, "TIFF"), O, "", (64, 48), None),
        ("gif", "a.gif", gif, O, "", (64, 48), None),
        ("jpeg_exif_orientation_6", "rot.jpg", _with_exif_orientation(_gradient(64, 32), 6), O, "", (32, 64), None),
        ("jpeg_exif_orientation_3", "rot3.jpg", _with_exif_orientation(_gradient(64, 32), 3), O, "", (64, 32),
         _pixel_is((63, 31), (0, 0, 255), tol=40)),
        ("greyscale_L", "grey.png", _save(g.convert("L"), "PNG"), O, "", (64, 48), None),
        ("grey_with_trns", "grey_trns.png", _save(grey_trns, "PNG", transparency=7), O, "", (16, 16),
         _pixel_is((3, 3), (255, 255, 255))),
        ("palette_transparency", "pal.png", _save(pal, "PNG", transparency=0), O, "", (32, 32),
         _pixel_is((2, 2), (255, 255, 255))),
        ("palette_transparency_gif", "pal.gif", _save(pal, "GIF", transparency=0), O, "", (32, 32),
         _pixel_is((2, 2), (255, 255, 255))),
        ("rgba", "rgba.png", _save(rgba, "PNG"), O, "", (64, 48), _pixel_is((1, 1), (255, 255, 255))),
        ("rgba_webp", "rgba.webp", _save(rgba, "WEBP", lossless=True), O, "", (64, 48),
         _pixel_is((1, 1), (255, 255, 255))),
        ("la", "la.png", _save(la, "PNG"), O, "", (20, 20), _pixel_is((0, 0), (255, 255, 255))),
        ("cmyk_jpeg", "cmyk.jpg", _save(Image.new("CMYK", (24, 24), (0, 255, 255, 0)), "JPEG"), O, "", (24, 24),
         _pixel_is((5, 5), (255, 0, 0), tol=20)),
        ("png_16bit_I16", "i16.png", _save(i16, "PNG"), O, "", (64, 16), _spans_full_range),
        ("tiff_float_0_1", "f.tiff", _save(flt, "TIFF"), O, "", (32, 32), _spans_full_range),
        ("tiff_float_nan_inf", "fnan.tiff", _save(Image.fromarray(bad_flt, "F"), "TIFF"), O, "", (32, 32),
         _spans_full_range),
        ("tiff_int32_signed", "i32.tiff", _save(big_i, "TIFF"), O, "", (32, 32), _spans_full_range),
        ("png_16bit_rgb", "rgb16.png", _png_rgb16(), O, "", (64, 16), _spans_full_range),
        ("tiff_lab", "lab.tiff", _save(Image.new("LAB", (16, 16), (255, 128, 128)), "TIFF"), O, "", (16, 16),
         _pixel_is((0, 0), (255, 255, 255), tol=12)),
        ("tiff_16bit_big_endian", "i16b.tiff", _save(i16.convert("I").convert("I;16B"), "TIFF"), O, "", (64, 16),
         _spans_full_range),
        ("bilevel_1bit", "bw.png", _save(g.convert("1"), "PNG"), O, "", (64, 48), None),
        ("animated_gif", "anim.gif", _animated("GIF", duration=50), O, "", (40, 30), red_first),
        ("animated_webp", "anim.webp", _animated("WEBP", lossless=True), O, "", (40, 30), red_first),
        ("apng", "anim.png", _animated("PNG"), O, "", (40, 30), red_first),
        ("multipage_tiff", "pages.tiff", _save(tiff_pages[0], "TIFF", save_all=True,
                                               append_images=tiff_pages[1:]), O, "", (24, 24), red_first),
        ("jpeg_named_png", "really_jpeg.png", jpeg, O, "", (64, 48), None),
        ("jpeg_named_txt", "notes.txt", jpeg, O, "", (64, 48), None),
        ("jpeg_trailing_zip", "gifar.jpg", jpeg + zbuf.getvalue(), O, "", (64, 48), None),
        ("gif_plus_zip_polyglot", "gifar.gif", gif + zbuf.getvalue(), O, "", (64, 48), None),
        ("png_bad_exif", "badexif.png", png[:33] + _chunk(b"eXIf", b"MM\x00*garbage") + png[33:], O, "",
         (64, 48), None),
        ("empty", "empty.jpg", b"", E, "empty", None, None),
        ("random_bytes", "noise.jpg", np.random.default_rng(0).bytes(4096), E, "not an image", None, None),
        ("text", "readme.png", b"hello, this is not an image\n" * 20, E, "not an image", None, None),
        ("text_starting_BM", "bm.txt", b"BMW makes cars, not bitmaps.\n" * 4, E, "corrupt BMP", None, None),
        ("html", "page.jpg", b"<!DOCTYPE html><html><body><img src=x></body></html>", E, "HTML", None, None),
        ("svg", "logo.svg", svg, E, "SVG", None, None),
        ("svg_xml_prolog", "logo.png", b'\xef\xbb\xbf<?xml version="1.0"?>\n' + svg, E, "SVG", None, None),
        ("pdf", "doc.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", E, "PDF", None, None),
        ("eps", "fig.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", E, "PostScript", None, None),
        ("zip", "archive.png", zbuf.getvalue(), E, "ZIP", None, None),
        ("pickle", "weights.jpg", pickle.dumps({"x": _Evil()}, protocol=4), E, "pickle", None, None),
        ("ico", "favicon.ico", _save(g.resize((32, 32)), "ICO"), E, "ICO", None, None),
        ("jpeg2000", "a.jp2", _save(g, "JPEG2000"), E, "JPEG 2000", None, None),
        ("avif", "a.avif", _save(g, "AVIF"), E, "AVIF", None, None),
        ("html_then_jpeg", "polyglot.jpg", b"<html><body>hi</body></html>" + jpeg, E, "HTML", None, None),
        ("png_magic_then_svg", "polyglot.png", b"\x89PNG\r\n\x1a\n" + svg, E, "corrupt PNG", None, None),
        ("truncated_jpeg", "trunc.jpg", noisy_jpeg[: len(noisy_jpeg) * 2 // 3], E, "truncated", None, None),
        ("jpeg_header_only", "head.jpg", jpeg[:300], E, "corrupt JPEG", None, None),
        ("truncated_png", "trunc.png", png[: len(png) // 2], E, "truncated", None, None),
        ("truncated_gif", "trunc.gif", gif[: len(gif) // 2], E, "truncated", None, None),
        ("png_bad_ihdr_crc", "crc.png", bytes(bad_crc), E, "corrupt PNG", None, None),
        ("png_corrupt_idat", "idat.png", bytes(bad_idat), E, "corrupt", None, None),
        ("png_bomb_100000x100000", "bomb.png", _png_header(100_000, 100_000), E, "too many pixels", None, None),
        ("jpeg_bomb_60000x60000", "bomb.jpg", _jpeg_with_sof_size(60_000, 60_000), E, "too many pixels", None, None),
        ("gif_bomb_frame_65535", "bomb.gif", gif[:6] + struct.pack("<HH", 65535, 65535) + gif[10:], E,
         "too many pixels", None, None),
        ("gif_frame_bomb", "frame.gif", gif[:gi + 5] + struct.pack("<HH", 65535, 65535) + gif[gi + 9:], E,
         "too many pixels", None, None),
        ("gif_frame_100M", "frame2.gif", gif[:gi + 5] + struct.pack("<HH", 10_000, 10_000) + gif[gi + 9:], E,
         "too many pixels", None, None),
        ("jpeg_missing_eoi", "noeoi.jpg", jpeg[:-2], E, "truncated", None, None),
        ("bmp_bomb", "bomb.bmp", bmp[:18] + struct.pack("<ii", 30_000, 30_000) + bmp[26:],
         E, "too many pixels", None, None),
        ("png_1x1", "dot.png", _save(Image.new("RGB", (1, 1)), "PNG"), E, "too small", None, None),
        ("png_1x10000", "tall.png", _png_header(1, 10_000), E, "too small", None, None),
        ("png_10000x1", "wide.png", _png_header(10_000, 1), E, "too small", None, None),
        ("png_aspect_8x400", "strip.png", _save(Image.new("RGB", (8, 400)), "PNG"), E, "aspect ratio", None, None),
        ("png_zero_size", "zero.png", _png_header(0, 0), E, "corrupt PNG", None, None),
        ("bmp_zero_size", "zero.bmp", bmp[:18] + struct.pack("<ii", 0, 0) + bmp[26:], E, "corrupt BMP", None, None),
        ("tga_no_magic", "a.tga", _save(g, "TGA"), E, "not an image", None, None),
    ]


def build_corpus(directory: str | Path) -> list[Case]:
    """Write every case under ``directory`` and return the list (path-only cases included)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, filename, data, expect, message, size, check in _raw_cases():
        path = root / name / filename
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        cases.append(Case(name, path, expect, message, size, check))
    big = root / "too_large" / "huge.png"  # sparse: a real PNG header, then a hole past 50 MiB
    big.parent.mkdir(exist_ok=True)
    with open(big, "wb") as f:
        f.write(_png_header(64, 64))
        f.truncate(50 * 2**20 + 1)
    cases.append(Case("over_max_bytes", big, "error", "too large"))
    (root / "a_directory.png").mkdir(exist_ok=True)
    cases.append(Case("directory", root / "a_directory.png", "error", "directory"))
    cases.append(Case("missing_path", root / "does" / "not" / "exist.jpg", "error", "not found"))
    return cases

"""One safe way to turn untrusted image input (a path, bytes or a stream) into an RGB ``PIL.Image``.

Every failure is an :class:`~toast_core.errors.InputError` whose message names the problem. The
file is read once (at most ``max_bytes + 1`` bytes), identified by content (never by extension) and
only JPEG, PNG, WebP, BMP, TIFF and GIF are handed to a decoder. The header size is checked against
our own limits *before* any pixel is decoded, so decompression bombs cost nothing.

PIL's global ``Image.MAX_IMAGE_PIXELS`` is neither read nor changed for the open step: files are
opened through the plugin registry directly (``Image.OPEN``), which skips PIL's global check. (A few
decoders, GIF frames and TIFF tiles, consult the global again while decoding; if that fires, the image
is refused with the same "too many pixels" message.) ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left
at PIL's default (False); a process that sets it to True would let truncated files through.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
from PIL import BmpImagePlugin, GifImagePlugin, Image, ImageOps, JpegImagePlugin, PngImagePlugin  # noqa: F401
from PIL import TiffImagePlugin, WebPImagePlugin  # noqa: F401  (registers the decoders in Image.OPEN)

from ..errors import InputError

#: ImageNet normalisation: the default where no model data config is at hand.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Formats handed to a decoder (PIL format names; JPEG includes MPO, the multi-picture JPEG of phones).
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
_SUPPORTED_TEXT = "JPEG, PNG, WebP, BMP, TIFF, GIF"

# Content signatures of things people upload by mistake, checked only when no decoder accepts the file.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "PDF document"), (b"PK\x03\x04", "ZIP archive"), (b"PK\x05\x06", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"), (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"), (b"Rar!", "RAR archive"),
    (b"\x7fELF", "ELF executable"), (b"MZ", "Windows executable"), (b"%!PS", "PostScript/EPS"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"8BPS", "Photoshop PSD"), (b"\x00\x00\x01\x00", "ICO icon"), (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"\x93NUMPY", "NumPy array"), (b"\x89HDF", "HDF5 file"), (b"RIFF", "RIFF container"),
    (b"\xff\xd8", "JPEG"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)


def _describe_content(data: bytes) -> str:
    """Name what ``data`` looks like (used only for error messages; nothing is decoded)."""
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<") and b"<svg" in head:
        return "SVG (vector graphics)"
    if head.startswith((b"<!doctype html", b"<html")) or (head.startswith(b"<") and b"<html" in head):
        return "HTML document"
    if head.startswith(b"<?xml"):
        return "XML document"
    if len(data) > 12 and data[4:8] == b"ftyp":
        brand = data[8:12].decode("latin-1").strip()
        return {"avif": "AVIF", "avis": "AVIF", "heic": "HEIC", "heix": "HEIC", "mif1": "HEIF"}.get(
            brand, f"ISO media ({brand})")
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "Python pickle"
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    sample = data[:1024]
    if sample and sum(32 <= b < 127 or b in (9, 10, 13) for b in sample) / len(sample) > 0.95:
        return "text"
    return "unrecognised binary data"


def _read_source(src: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO, max_bytes: int) -> bytes:
    """Return the raw bytes of ``src``, refusing missing paths, non-files and inputs over ``max_bytes``."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    elif isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise InputError(f"image file not found: {path}")
        if path.is_dir():
            raise InputError(f"expected an image file but got a directory: {path}")
        if not path.is_file():
            raise InputError(f"not a regular file: {path}")
        size = path.stat().st_size
        if size > max_bytes:
            raise InputError(f"image file too large: {size} bytes exceeds the limit of {max_bytes} bytes")
        try:
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)
        except OSError as e:
            raise InputError(f"cannot read image file {path}: {e.strerror or e}") from e
    elif hasattr(src, "read"):
        data = src.read(max_bytes + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise InputError("image stream must be opened in binary mode")
        data = bytes(data)
    else:
        raise TypeError(f"load_image expects a path, bytes or a binary stream, not {type(src).__name__}")
    if len(data) > max_bytes:
        raise InputError(f"image file too large: more than {max_bytes} bytes (limit {max_bytes} bytes)")
    if not data:
        raise InputError("empty input: the image file has 0 bytes")
    return data


def _open_supported(data: bytes) -> Image.Image | None:
    """Identify ``data`` with the supported decoders only; ``None`` when none accepts it.

    Mirrors ``Image.open`` but without its global ``MAX_IMAGE_PIXELS`` check (we check ourselves)."""
    prefix = data[:16]
    for fmt in SUPPORTED_FORMATS:
        factory, accept = Image.OPEN[fmt]
        verdict = accept(prefix) if accept else True
        if not verdict or isinstance(verdict, str):  # a str means "this format, but a variant PIL can't read"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # bomb warnings: our own size check follows
                return factory(io.BytesIO(data), "")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # GIF frame enlarging canvas
            raise InputError(f"{fmt} image has too many pixels (possible decompression bomb): {e}") from e
        except Exception as e:  # noqa: BLE001 - SyntaxError, OSError, struct.error...: any plugin failure
            raise InputError(f"corrupt {fmt} image: the header cannot be parsed ({type(e).__name__}: {e})") from e
    return None


def _check_geometry(size: tuple[int, int], fmt: str, max_pixels: int, min_side: int, max_aspect: float) -> None:
    """Refuse zero, tiny, huge or absurdly elongated sizes (from the header, before decoding)."""
    w, h = size
    if w <= 0 or h <= 0:
        raise InputError(f"zero-size {fmt} image ({w}x{h} pixels)")
    if w * h > max_pixels:
        raise InputError(f"{fmt} image has too many pixels: {w}x{h} = {w * h} exceeds the limit of "
                         f"{max_pixels} (possible decompression bomb)")
    if min(w, h) < min_side:
        raise InputError(f"{fmt} image too small: {w}x{h} pixels, each side must be at least {min_side}")
    if max(w, h) / min(w, h) > max_aspect:
        raise InputError(f"{fmt} image has an extreme aspect ratio: {w}x{h} (ratio {max(w, h) / min(w, h):.1f}"
                         f" exceeds {max_aspect:g})")


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Map a single-channel integer or float array to uint8 (H, W).

    16-bit modes (``I;16*``) are scaled by 255/65535. ``I`` (32-bit int) is taken as 8-bit if it fits
    0..255, as 16-bit if it fits 0..65535, else stretched min..max. ``F`` is taken as 0..1 if it fits,
    as 0..255 if it fits, else stretched min..max. NaN becomes the finite minimum, +-inf the extremes."""
    a = arr.astype(np.float64)
    finite = np.isfinite(a)
    lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 0.0)
    a = np.clip(np.where(np.isnan(a), lo, a), lo, hi)
    if mode.startswith("I;16"):
        scaled = a * (255.0 / 65535.0)
    elif mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        scaled = a
    elif mode == "I" and lo >= 0.0 and hi <= 65535.0:
        scaled = a * (255.0 / 65535.0)
    else:
        scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited over ``background``."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        grey = Image.fromarray(_to_uint8(np.asarray(im), im.mode))
        return grey.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or im.has_transparency_data:
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def load_image(
    src: str | os.PathLike | bytes | BinaryIO,
    *,
    max_pixels: int = 40_000_000,
    max_bytes: int = 50 * 2**20,
    min_side: int = 8,
    max_aspect: float = 20.0,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Load untrusted image input as an RGB image, or raise :class:`InputError` naming the problem.

    Args:
        src: a path, raw bytes, or a binary stream. The format is decided by content, not by name.
        max_pixels: refuse images whose header declares more pixels (checked before decoding).
        max_bytes: refuse inputs larger than this many bytes.
        min_side: refuse images with a side shorter than this.
        max_aspect: refuse images whose long side / short side exceeds this.
        background: RGB colour that transparent pixels are composited over.

    Returns:
        A fully decoded ``PIL.Image.Image`` in mode ``"RGB"``, EXIF orientation applied; for
        animations and multi-page files, the first frame.
    """
    data = _read_source(src, max_bytes)
    im = _open_supported(data)
    if im is None:
        found = _describe_content(data)
        if found in ("text", "unrecognised binary data"):
            raise InputError(f"not an image: the content looks like {found}; supported formats: {_SUPPORTED_TEXT}")
        raise InputError(f"unsupported format: found {found}; supported formats: {_SUPPORTED_TEXT}")
    fmt = "JPEG" if im.format == "MPO" else (im.format or "image")
    _check_geometry(im.size, fmt, max_pixels, min_side, max_aspect)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns about odd-but-readable metadata (e.g. corrupt EXIF)
        try:
            im.load()
        except Image.DecompressionBombError as e:
            raise InputError(f"{fmt} image has too many pixels to decode safely ({e})") from e
        except Exception as e:  # noqa: BLE001 - untrusted bytes: any decoder failure means a bad file
            raise InputError(f"corrupt or truncated {fmt} image: {type(e).__name__}: {e}") from e
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - malformed EXIF: keep the pixels, ignore the orientation
            pass
    try:
        return _to_rgb(im, background)
    except (ValueError, OSError) as e:  # a mode PIL cannot convert
        raise InputError(f"unsupported colour mode {im.mode} in {fmt} image: {e}") from e


def image_to_tensor(
    img: Image.Image,
    size: int | tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
):
    """Resize an RGB image to ``size`` (the whole image, no crop) and normalise it.

    Args:
        img: a PIL image (converted to RGB if needed).
        size: output side (square) or ``(H, W)``.
        mean, std: per-channel statistics of the model, in 0..1 units.

    Returns:
        ``torch.Tensor`` of shape ``(3, H, W)``, float32.
    """
    import torch

    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h <= 0 or w <= 0:
        raise InputError(f"image_to_tensor: size must be positive, got {size}")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise InputError(f"image_to_tensor: mean and std need 3 values and std > 0, got {mean}, {std}")
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    arr = np.asarray(rgb.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0  # (H, W, 3)
    x = torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (3, H, W)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s

"""Every hostile/unusual corpus file goes through ``load_image`` from a path and from bytes: it either
loads as a sane RGB image or is refused with an ``InputError`` naming the problem. Nothing else."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.hostile_corpus import Case, build_corpus
from toast_core.errors import InputError
from toast_core.io.images import SUPPORTED_FORMATS, image_to_tensor, load_image


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Case]:
    return build_corpus(tmp_path_factory.mktemp("hostile"))


def _run(case: Case, src) -> str:
    """Load ``src``; return "" when the outcome matches ``case``, else a description of the mismatch."""
    try:
        img = load_image(src)
    except InputError as e:
        if case.expect != "error":
            return f"refused unexpectedly: {e}"
        if case.message.lower() not in str(e).lower():
            return f"message {str(e)!r} lacks {case.message!r}"
        return ""
    except Exception as e:  # noqa: BLE001 - the point of the test: anything else is a bug
        return f"unexpected {type(e).__name__}: {e}"
    if case.expect != "ok":
        return f"loaded {img.size} but should be refused ({case.message})"
    if img.mode != "RGB":
        return f"mode {img.mode}"
    w, h = img.size
    if not (8 <= w <= 10_000 and 8 <= h <= 10_000):
        return f"insane size {img.size}"
    if case.size and img.size != case.size:
        return f"size {img.size}, expected {case.size}"
    if case.check:
        try:
            case.check(img)
        except AssertionError as e:
            return f"check failed: {e}"
    return ""


def test_corpus_is_large_and_mixed(corpus):
    print(f"hostile corpus: {len(corpus)} cases")
    assert len(corpus) >= 30
    assert sum(c.expect == "ok" for c in corpus) >= 15
    assert sum(c.expect == "error" for c in corpus) >= 15


def test_every_case_from_path_and_bytes(corpus):
    failures, runs = [], 0
    for case in corpus:
        sources = [("path", case.path), ("str", str(case.path))]
        if case.data is not None:
            sources += [("bytes", case.data), ("stream", io.BytesIO(case.data))]
        for kind, src in sources:
            runs += 1
            problem = _run(case, src)
            if problem:
                failures.append(f"{case.name} [{kind}]: {problem}")
    print(f"{runs} loads over {len(corpus)} cases, {len(failures)} failures")
    assert not failures, "\n".join(failures)


def test_bomb_is_refused_before_decoding(corpus):
    """The 100000x100000 PNG is a few hundred bytes; refusing it must not allocate its pixels."""
    bomb = next(c for c in corpus if c.name == "png_bomb_100000x100000")
    assert len(bomb.data) < 2000
    with pytest.raises(InputError, match="100000x100000"):
        load_image(bomb.data)


def test_pil_global_pixel_limit_does_not_matter(corpus, monkeypatch):
    png = next(c for c in corpus if c.name == "png").data
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # far below 64x48
    assert load_image(png).size == (64, 48)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL would check nothing
    with pytest.raises(InputError, match="too many pixels"):
        load_image(next(c for c in corpus if c.name == "gif_frame_bomb").data)
    assert Image.MAX_IMAGE_PIXELS is None  # load_image restored nothing it should not touch


def test_limits_are_parameters(corpus):
    png = next(c for c in corpus if c.name == "png").data  # 64x48, ratio 1.33
    with pytest.raises(InputError, match="too many pixels"):
        load_image(png, max_pixels=64 * 48 - 1)
    with pytest.raises(InputError, match="too large"):
        load_image(png, max_bytes=len(png) - 1)
    with pytest.raises(InputError, match="too small"):
        load_image(png, min_side=49)
    with pytest.raises(InputError, match="aspect ratio"):
        load_image(png, max_aspect=1.2)
    assert load_image(png, max_pixels=64 * 48, max_bytes=len(png), min_side=48, max_aspect=1.34).size == (64, 48)


def test_background_colour_is_used(corpus):
    rgba = next(c for c in corpus if c.name == "rgba").data  # left half fully transparent
    img = load_image(rgba, background=(10, 20, 30))
    assert img.getpixel((1, 1)) == (10, 20, 30)
    assert img.getpixel((63, 0)) != (10, 20, 30)


def test_sixteen_bit_scaling_is_linear(corpus):
    """0..65535 maps onto 0..255 by value/257 (not clipped, not wrapped)."""
    arr = np.asarray(load_image(next(c for c in corpus if c.name == "png_16bit_I16").data))[..., 0]
    ramp = np.linspace(0, 65535, arr.size).reshape(arr.shape) / 257.0
    assert np.abs(arr.astype(float) - ramp).max() <= 1.0


def test_non_seekable_stream_and_wrong_type(corpus):
    class OneShot(io.RawIOBase):
        def __init__(self, data: bytes):
            self._buf = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, b):
            return self._buf.readinto(b)

    jpeg = next(c for c in corpus if c.name == "jpeg").data
    assert load_image(io.BufferedReader(OneShot(jpeg))).size == (64, 48)
    with pytest.raises(TypeError):
        load_image(12345)  # a programming error, not bad input


def test_supported_formats_listed():
    assert set(SUPPORTED_FORMATS) == {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"}


def test_image_to_tensor_shape_and_normalisation():
    img = Image.new("RGB", (40, 20), (255, 0, 128))
    x = image_to_tensor(img, 16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert torch.allclose(x[:, 5, 5], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]), atol=1e-2)
    assert image_to_tensor(img, (12, 24)).shape == (3, 12, 24)
    with pytest.raises(InputError):
        image_to_tensor(img, 16, std=(0.0, 1.0, 1.0))


def test_seeded_mutations_raise_only_input_error(corpus):
    """Byte flips, truncations and splices of valid files: each loads as RGB or raises InputError."""
    rng = np.random.default_rng(1234)
    seeds = [c for c in corpus if c.expect == "ok" and c.name in
             ("jpeg", "png", "webp", "bmp", "tiff", "gif", "apng", "multipage_tiff", "png_16bit_I16", "cmyk_jpeg")]
    outcomes = {"ok": 0, "refused": 0}
    for case in seeds:
        data = case.data
        for _ in range(40):
            buf = bytearray(data)
            op = rng.integers(3)
            if op == 0:  # flip a few bytes anywhere (headers included)
                for i in rng.integers(0, len(buf), size=rng.integers(1, 6)):
                    buf[i] ^= int(rng.integers(1, 256))
            elif op == 1:
                buf = buf[: rng.integers(1, len(buf))]
            else:  # splice random bytes in the middle
                i = int(rng.integers(0, len(buf)))
                buf[i:i] = rng.bytes(int(rng.integers(1, 64)))
            try:
                img = load_image(bytes(buf))
            except InputError:
                outcomes["refused"] += 1
                continue
            assert img.mode == "RGB" and min(img.size) >= 8, case.name
            outcomes["ok"] += 1
    print(f"mutations: {outcomes}")
    assert outcomes["refused"] > 0 and outcomes["ok"] > 0

"""The default task: find the RED object among look-alike distractors and name its shape.

Each image is a random crop of a real photograph (shipped in PyPI wheels, see ``photos.py``) with
one *target* object and 2-3 *distractor* objects pasted on it. Objects are filled shapes from 12
classes (``shapes.py``); the label is the class of the target. The target is always the red
object; distractors take other hues (yellow, green, blue, purple) at the *same* CIE lightness and
chroma, with the same area range, shading and placement rules, and always a class different from
the target's and from each other. A model that pools over the whole image therefore sees 3-4
shapes of equal salience and cannot tell which one decides the label without binding colour to
shape: the setting top-down attention steering (TOAST) is meant for.

Everything is a pure function of ``(config.seed, split, index)``: the same config gives
byte-identical files on the same library versions. Layout written by ``generate_demo_task``::

    out_dir/manifest.json
    out_dir/images/{split}/{i:05d}.png   RGB uint8
    out_dir/masks/{split}/{i:05d}.png    uint8: 0 background, 1 target, 2.. distractors

Run ``python -m toast_core.data --help`` to generate a dataset or the gallery samples.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from ..cache import sha256_file, toast_home
from ..errors import InputError
from .photos import PHOTO_NAMES, PHOTO_SOURCES, load_photo, photo_digest
from .shapes import SHAPE_NAMES, rasterise_shape, shape_scale

DEMO_TASK_VERSION = "1"
MANIFEST_FORMAT = "toast-demo-task"
SPLITS: tuple[str, ...] = ("train", "val", "test")
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "gallery": 3}

#: (family, CIE LCh hue angle in degrees). The target is always red; distractors use the others.
TARGET_HUE: tuple[str, float] = ("red", 35.0)
DISTRACTOR_HUES: tuple[tuple[str, float], ...] = (("yellow", 100.0), ("green", 140.0), ("blue", 275.0), ("purple", 310.0))
LIGHTNESS_RANGE = (52.0, 62.0)  # CIE L*, identical for every object
CHROMA = 48.0  # CIE C*ab, identical for every object (inside the sRGB gamut for all five hues)
HUE_JITTER = 5.0  # degrees

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class DemoTaskConfig:
    """Everything that determines the generated dataset.

    Attributes:
        image_size: side of the square images in pixels (32..1024; 224 suits most ViTs).
        n_train, n_val, n_test: images per split.
        n_distractors: inclusive (min, max) number of distractors per image (0..4).
        object_area: inclusive range of each object's area as a fraction of the image area; the
            same for target and distractors.
        seed: base seed; image ``i`` of split ``s`` is a pure function of ``(seed, s, i)``.
        version: generator version; bumped whenever the output for a given config changes.
    """

    image_size: int = 224
    n_train: int = 1000
    n_val: int = 200
    n_test: int = 300
    n_distractors: tuple[int, int] = (2, 3)
    object_area: tuple[float, float] = (0.03, 0.065)
    seed: int = 0
    version: str = DEMO_TASK_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_distractors", tuple(int(x) for x in self.n_distractors))
        object.__setattr__(self, "object_area", tuple(float(x) for x in self.object_area))
        if not (isinstance(self.image_size, int) and 32 <= self.image_size <= 1024):
            raise InputError(f"image_size must be an int in [32, 1024], got {self.image_size!r}")
        for name in ("n_train", "n_val", "n_test"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 0):
                raise InputError(f"{name} must be a non-negative int, got {value!r}")
        if self.n_train < 1:
            raise InputError("n_train must be at least 1")
        lo, hi = self.n_distractors if len(self.n_distractors) == 2 else (-1, -1)
        if not 0 <= lo <= hi <= len(DISTRACTOR_HUES):
            raise InputError(
                f"n_distractors must be (min, max) with 0 <= min <= max <= {len(DISTRACTOR_HUES)}, got {self.n_distractors!r}"
            )
        a_lo, a_hi = self.object_area if len(self.object_area) == 2 else (-1.0, -1.0)
        if not 0.002 <= a_lo <= a_hi <= 0.12:
            raise InputError(f"object_area must be (min, max) with 0.002 <= min <= max <= 0.12, got {self.object_area!r}")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise InputError(f"seed must be a non-negative int, got {self.seed!r}")
        if self.version != DEMO_TASK_VERSION:
            raise InputError(f"this generator writes version {DEMO_TASK_VERSION!r}, not {self.version!r}")

    @classmethod
    def quick(cls, seed: int = 0, image_size: int = 96) -> "DemoTaskConfig":
        """A tiny dataset for tests: 24/12/12 images (every class twice in train)."""
        return cls(image_size=image_size, n_train=24, n_val=12, n_test=12, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DemoTaskConfig":
        """Inverse of ``to_dict``; unknown keys raise ``InputError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise InputError(f"unknown demo-task config keys: {sorted(unknown)}")
        return cls(**data)

    def fingerprint(self) -> str:
        """12 hex digits identifying the config (used to name cache directories)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}


# ----------------------------------------------------------------------------------------------
# Rendering one image
# ----------------------------------------------------------------------------------------------


def _rng(seed: int, split: str, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], stream, index]))


def split_labels(config: DemoTaskConfig, split: str, n: int | None = None) -> np.ndarray:
    """Balanced labels of a split (every class ``n // K`` or ``n // K + 1`` times), shuffled.

    Returns:
        int64 array (n,), n defaulting to the split's size.
    """
    n = config.split_sizes()[split] if n is None else n
    k = len(SHAPE_NAMES)
    labels = np.tile(np.arange(k), n // k + 1)[:n]
    return _rng(config.seed, split, 1, 0).permutation(labels)


_LICENCES = {p.name: p.licence for p in PHOTO_SOURCES}


@lru_cache(maxsize=None)
def _photo_image(name: str) -> Image.Image:
    return Image.fromarray(load_photo(name))


def _lch_to_rgb(lightness: float, chroma: float, hue_deg: float) -> np.ndarray:
    """CIE LCh(ab) under D65 to sRGB in [0, 255] (float, clipped)."""
    a, b = chroma * np.cos(np.radians(hue_deg)), chroma * np.sin(np.radians(hue_deg))
    fy = (lightness + 16.0) / 116.0
    f = np.array([fy + a / 500.0, fy, fy - b / 200.0])
    xyz = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * np.array([0.95047, 1.0, 1.08883])
    lin = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]]) @ xyz
    lin = np.clip(lin, 0.0, 1.0)
    srgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return srgb * 255.0


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict[str, Any]]:
    name = PHOTO_NAMES[int(rng.integers(len(PHOTO_NAMES)))]
    photo = _photo_image(name)
    w, h = photo.size
    side = round(float(rng.uniform(0.4, 1.0)) * min(w, h), 2)
    x0 = round(float(rng.uniform(0, w - side)), 2)
    y0 = round(float(rng.uniform(0, h - side)), 2)
    flip = bool(rng.random() < 0.5)
    crop = photo.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    if flip:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    record = {"source": name, "crop": [x0, y0, round(x0 + side, 2), round(y0 + side, 2)], "hflip": flip, "licence": _LICENCES[name]}
    return np.asarray(crop, dtype=np.uint8), record


def _place(rng: np.random.Generator, radii: np.ndarray, size: int, gap: float) -> np.ndarray | None:
    """Centres (n, 2) such that bounding circles stay inside the image and ``gap`` apart, or None."""
    centres = np.zeros((len(radii), 2))
    placed: list[int] = []
    for i in np.argsort(-radii, kind="stable"):
        lo, hi = radii[i] + 1.0, size - radii[i] - 1.0
        if hi <= lo:
            return None
        for _ in range(200):
            c = rng.uniform(lo, hi, size=2)
            if all(np.hypot(*(c - centres[j])) >= radii[i] + radii[j] + gap for j in placed):
                centres[i] = c
                placed.append(int(i))
                break
        else:
            return None
    return centres


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour binary erosion; pixels outside the array count as background."""
    m = np.pad(mask, 1)
    return m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]


def render_example(config: DemoTaskConfig, split: str, index: int, label: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Draw one image.

    Args:
        config: the task config (image size, distractor and area ranges, seed).
        split: "train", "val", "test" or "gallery"; selects an independent random stream.
        index: image index within the split.
        label: class index of the target object.

    Returns:
        image uint8 (S, S, 3), mask uint8 (S, S) (0 background, 1 target, 2.. distractors), and a
        JSON-ready record (background crop, one entry per object; see docs/DEMO_TASK.md).
    """
    if split not in _SPLIT_CODES:
        raise InputError(f"split must be one of {tuple(_SPLIT_CODES)}, got {split!r}")
    if not 0 <= label < len(SHAPE_NAMES) or index < 0:
        raise InputError(f"label must be in [0, {len(SHAPE_NAMES)}) and index >= 0, got {label}, {index}")
    size = config.image_size
    rng = _rng(config.seed, split, 0, index)
    original, bg_record = _background(rng, size)
    image = original.copy()
    mask = np.zeros((size, size), dtype=np.uint8)

    k = len(SHAPE_NAMES)
    lo, hi = config.n_distractors
    n_d = int(rng.integers(lo, hi + 1))
    others = np.array([c for c in range(k) if c != label])
    classes = [int(label)] + [int(c) for c in rng.choice(others, n_d, replace=False)]
    families = [TARGET_HUE] + [DISTRACTOR_HUES[i] for i in rng.choice(len(DISTRACTOR_HUES), n_d, replace=False)]
    areas = rng.uniform(*config.object_area, size=len(classes)) * size * size
    angles = rng.uniform(0.0, 2 * np.pi, size=len(classes))
    gap = max(2.0, 0.02 * size)
    for _ in range(20):  # shrink all objects a little if they do not fit
        geo = [shape_scale(SHAPE_NAMES[c], a) for c, a in zip(classes, areas)]
        radii = np.array([r for _, r in geo])
        centres = _place(rng, radii, size, gap)
        if centres is not None:
            break
        areas = areas * 0.85
    else:
        raise RuntimeError(f"could not place {len(classes)} objects on a {size}px image")

    light = rng.uniform(0.0, 2 * np.pi)
    objects = []
    for obj in (int(o) for o in rng.permutation(len(classes))):  # paint order carries no information
        name = SHAPE_NAMES[classes[obj]]
        (scale, radius), (cx, cy) = geo[obj], centres[obj]
        y0, x0, box = rasterise_shape(name, cx, cy, scale, angles[obj], size)
        h, w = box.shape
        lch = (float(rng.uniform(*LIGHTNESS_RANGE)), CHROMA, float(families[obj][1] + rng.uniform(-HUE_JITTER, HUE_JITTER)))
        rgb = _lch_to_rgb(*lch)
        ys, xs = np.nonzero(box)
        shade = 1.0 + 0.18 * ((xs + x0 + 0.5 - cx) * np.cos(light) + (ys + y0 + 0.5 - cy) * np.sin(light)) / radius
        shade = np.where(_erode(box)[ys, xs], shade, 0.8 * shade)  # light from one side, darker rim
        paint = rgb[None, :] * shade[:, None] + rng.normal(0.0, 3.0, size=(len(ys), 3))
        image[ys + y0, xs + x0] = np.clip(np.rint(paint), 0, 255).astype(np.uint8)
        mask[ys + y0, xs + x0] = obj + 1
        objects.append((obj, name, lch, rgb, angles[obj], (cx, cy), families[obj][0], (y0, x0, h, w)))

    records = []
    for obj, name, lch, rgb, angle, (cx, cy), family, (y0, x0, h, w) in sorted(objects):
        window = np.s_[y0 : y0 + h, x0 : x0 + w]  # an object paints nowhere outside its box
        m = mask[window] == obj + 1  # exact painted pixels, after any occlusion
        ys, xs = np.nonzero(m)
        ys, xs = ys + y0, xs + x0
        diff = image[window][m].astype(np.float32) - original[window][m].astype(np.float32)
        contrast = float(np.abs(diff).mean()) if len(ys) else 0.0
        records.append(
            {
                "role": "target" if obj == 0 else "distractor",
                "class_id": classes[obj],
                "class_name": name,
                "mask_value": obj + 1,
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(ys) else [0, 0, 0, 0],
                "area": int(len(ys)),
                "centre": [round(float(cx), 2), round(float(cy), 2)],
                "rotation_deg": round(float(np.degrees(angle)), 2),
                "colour": {"family": family, "lch": [round(v, 2) for v in lch], "rgb": [round(float(v), 1) for v in rgb]},
                "contrast": round(contrast, 2),
            }
        )
    return image, mask, {"background": bg_record, "objects": records}


# ----------------------------------------------------------------------------------------------
# Writing, validating, reading
# ----------------------------------------------------------------------------------------------


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _cue_description() -> dict[str, Any]:
    return {
        "rule": "the label is the shape class of the red object",
        "target_colour": TARGET_HUE[0],
        "distractor_colours": [name for name, _ in DISTRACTOR_HUES],
        "lch_hue_deg": {name: hue for name, hue in (TARGET_HUE,) + DISTRACTOR_HUES},
        "lightness_range": list(LIGHTNESS_RANGE),
        "chroma": CHROMA,
        "hue_jitter_deg": HUE_JITTER,
    }


def _manifest_head(config: DemoTaskConfig) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "version": config.version,
        "config": config.to_dict(),
        "fingerprint": config.fingerprint(),
        "class_names": list(SHAPE_NAMES),
        "cue": _cue_description(),
        "splits": config.split_sizes(),
        "mask_values": {"0": "background", "1": "target", "2+": "distractors (see objects[].mask_value)"},
        "backgrounds": [
            {"name": p.name, "package": p.package, "licence": p.licence, "pixels_sha256": photo_digest(p.name)}
            for p in PHOTO_SOURCES
        ],
    }


def _check_replaceable(out: Path) -> None:
    """Refuse to replace anything but an empty directory or an older demo-task directory."""
    if not out.exists():
        return
    if out.is_dir() and not any(out.iterdir()):
        return
    try:
        load_manifest(out)
    except InputError:
        raise InputError(f"{out} exists and is not a demo-task directory; choose another path") from None


def _render_files(config: DemoTaskConfig, split: str, index: int, label: int) -> tuple[bytes, bytes, dict[str, Any]]:
    """PNG bytes of image and mask plus the manifest entry of one image."""
    image, mask, record = render_example(config, split, index, label)
    img_bytes, mask_bytes = _png_bytes(image), _png_bytes(mask)
    entry = {
        "split": split,
        "index": index,
        "image": f"images/{split}/{index:05d}.png",
        "mask": f"masks/{split}/{index:05d}.png",
        "label": label,
        "class_name": SHAPE_NAMES[label],
        **record,
        "image_sha256": hashlib.sha256(img_bytes).hexdigest(),
        "mask_sha256": hashlib.sha256(mask_bytes).hexdigest(),
    }
    return img_bytes, mask_bytes, entry


def generate_demo_task(
    out_dir: str | os.PathLike,
    config: DemoTaskConfig | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
    workers: int | None = None,
) -> Path:
    """Write the dataset described by ``config`` into ``out_dir`` (atomically).

    The files are first written to a hidden sibling directory that is renamed to ``out_dir`` only
    when complete, so an interrupted run never leaves a directory that looks valid. If ``out_dir``
    already holds a valid dataset for this config it is kept (unless ``overwrite``). The output
    does not depend on ``workers``: every image is a pure function of ``(seed, split, index)``.

    Args:
        out_dir: target directory.
        config: defaults to ``DemoTaskConfig()``.
        progress: called as ``progress(done, total)`` after each image.
        overwrite: regenerate even when a valid dataset is present.
        workers: threads rendering and PNG-encoding in parallel (numpy and Pillow release the GIL
            for most of the work); default ``min(2, os.cpu_count())``.

    Returns:
        ``Path(out_dir)``.
    """
    config = config or DemoTaskConfig()
    workers = workers or min(2, os.cpu_count() or 1)
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    if not overwrite and is_valid_demo_task(out, config):
        return out
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{os.urandom(4).hex()}"
    jobs = [(split, i, int(label)) for split in SPLITS for i, label in enumerate(split_labels(config, split))]
    try:
        manifest = _manifest_head(config)  # also loads every photo once, before threads start
        for name in PHOTO_NAMES:
            _photo_image(name)
        for split in SPLITS:
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "masks" / split).mkdir(parents=True)
        entries: list[dict[str, Any]] = []
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(jobs), 64):  # bounded chunks keep memory flat
                chunk = jobs[start : start + 64]
                for img_bytes, mask_bytes, entry in pool.map(lambda job: _render_files(config, *job), chunk):
                    (tmp / entry["image"]).write_bytes(img_bytes)
                    (tmp / entry["mask"]).write_bytes(mask_bytes)
                    entries.append(entry)
                    if progress is not None:
                        progress(len(entries), len(jobs))
        manifest["images"] = entries
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        if out.exists():
            if not overwrite and is_valid_demo_task(out, config):  # a concurrent run finished first
                return out
            _check_replaceable(out)
            stale = out.parent / f".{out.name}.stale-{os.getpid()}-{os.urandom(4).hex()}"
            os.replace(out, stale)
            os.replace(tmp, out)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``manifest.json`` of a generated dataset.

    Raises:
        InputError: missing or unreadable manifest, or not a demo-task manifest.
    """
    path = Path(out_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{out_dir} holds no demo task (no manifest.json); generate it with generate_demo_task()") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{path} is not a {MANIFEST_FORMAT} manifest")
    return manifest


def is_valid_demo_task(out_dir: str | os.PathLike, config: DemoTaskConfig | None = None, check_hashes: bool = False) -> bool:
    """True when ``out_dir`` holds a complete dataset (for ``config`` when given).

    Checks the manifest format and config, the per-split counts and that every listed file
    exists; ``check_hashes`` also verifies each file's sha256 (slower).
    """
    try:
        manifest = load_manifest(out_dir)
        stored = DemoTaskConfig.from_dict(manifest["config"])
        if config is not None and stored != config:
            return False
        entries = manifest["images"]
        counts = {s: sum(e["split"] == s for e in entries) for s in SPLITS}
        if counts != stored.split_sizes() or manifest.get("class_names") != list(SHAPE_NAMES):
            return False
        root = Path(out_dir)
        for e in entries:
            for key in ("image", "mask"):
                path = root / e[key]
                if not path.is_file():
                    return False
                if check_hashes and sha256_file(path) != e[f"{key}_sha256"]:
                    return False
        return True
    except (InputError, KeyError, TypeError, ValueError):
        return False


def default_demo_task_dir(config: DemoTaskConfig | None = None) -> Path:
    """Cache location of a config's dataset: ``toast_home()/demo_task/v{version}-{fingerprint}``."""
    config = config or DemoTaskConfig()
    return toast_home() / "demo_task" / f"v{config.version}-{config.fingerprint()}"


def ensure_demo_task(
    config: DemoTaskConfig | None = None,
    root: str | os.PathLike | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> Path:
    """Return the directory of a valid dataset for ``config`` (default: in the cache), generating it if needed."""
    config = config or DemoTaskConfig()
    out = Path(root) if root is not None else default_demo_task_dir(config)
    return generate_demo_task(out, config, progress=progress, workers=workers)

"""What the demo task looks like: its statistics, gallery samples for the app, and ``python -m toast_core.data``."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..cache import atomic_write_bytes
from ..errors import InputError
from . import demo_task
from .demo_task import (MANIFEST_FORMAT, SPLITS, DemoTaskConfig, _cue_description, _png_bytes, ensure_demo_task,
                        load_manifest, render_example, split_labels)
from .shapes import SHAPE_NAMES


# ----------------------------------------------------------------------------------------------
# Statistics and gallery
# ----------------------------------------------------------------------------------------------


def task_statistics(manifest: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """Figures that show the task needs focus (computed from the manifest alone).

    Returns a dict with: images per split, per-class counts in train, mean objects per image, the
    fraction of images where the target's class also appears as a distractor (0 by construction),
    the accuracy of an oracle that knows every shape present but not which is the target
    (mean of 1/#objects), mean area and contrast (mean |object - background| over the pixels it
    covers, 0-255) of targets vs distractors, and how often the target is the largest / the
    highest-contrast object (about 1/#objects when salience is comparable).
    """
    if not isinstance(manifest, dict):
        manifest = load_manifest(manifest)
    entries = manifest["images"]
    names = manifest["class_names"]
    targets = [o for e in entries for o in e["objects"] if o["role"] == "target"]
    distractors = [o for e in entries for o in e["objects"] if o["role"] == "distractor"]
    n_obj = np.array([len(e["objects"]) for e in entries])

    def is_max(e: dict, key: str) -> bool:
        best = max(e["objects"], key=lambda o: o[key])
        return best["role"] == "target"

    return {
        "images": {s: sum(e["split"] == s for e in entries) for s in SPLITS},
        "train_class_counts": {n: sum(e["split"] == "train" and e["label"] == i for e in entries) for i, n in enumerate(names)},
        "mean_objects_per_image": float(n_obj.mean()),
        "target_class_among_distractors": float(
            np.mean([any(o["role"] == "distractor" and o["class_id"] == e["label"] for o in e["objects"]) for e in entries])
        ),
        "bag_of_shapes_oracle_accuracy": float(np.mean(1.0 / n_obj)),
        "target_area_mean": float(np.mean([o["area"] for o in targets])),
        "distractor_area_mean": float(np.mean([o["area"] for o in distractors])) if distractors else float("nan"),
        "target_contrast_mean": float(np.mean([o["contrast"] for o in targets])),
        "distractor_contrast_mean": float(np.mean([o["contrast"] for o in distractors])) if distractors else float("nan"),
        "target_is_largest": float(np.mean([is_max(e, "area") for e in entries])),
        "target_has_highest_contrast": float(np.mean([is_max(e, "contrast") for e in entries])),
        "object_pixel_fraction": float(np.mean([sum(o["area"] for o in e["objects"]) for e in entries]))
        / manifest["config"]["image_size"] ** 2,
    }


def _small_png(image: np.ndarray, limit: int) -> bytes:
    """PNG of an RGB image under ``limit`` bytes: lossless if it fits, else palette-quantised."""
    data = _png_bytes(image)
    for colours in (256, 128, 64, 32):
        if len(data) <= limit:
            break
        pal = Image.fromarray(image).quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
        buf = io.BytesIO()
        pal.save(buf, format="PNG", optimize=True)
        data = buf.getvalue()
    return data


def write_demo_samples(
    out_dir: str | os.PathLike, n: int = 8, image_size: int = 224, seed: int = 0, max_bytes: int = 50_000
) -> list[Path]:
    """Write ``n`` gallery images (distinct target classes) with their masks and a ``samples.json``.

    Files: ``{i:02d}_{class}.png`` (RGB), ``{i:02d}_{class}_mask.png`` (uint8, values as in the
    dataset). They come from the dedicated "gallery" random stream, so they are reproducible and
    never coincide with training images. To stay under ``max_bytes`` an image is stored with a
    (dithered) palette of at most 256 colours when lossless PNG is too large; masks are exact.

    Returns:
        Paths of the image files, in order.
    """
    if not 1 <= n <= len(SHAPE_NAMES):
        raise InputError(f"n must be in [1, {len(SHAPE_NAMES)}], got {n}")
    config = DemoTaskConfig(image_size=image_size, n_train=1, n_val=0, n_test=0, seed=seed)
    out = Path(out_dir)
    labels = split_labels(config, "gallery", len(SHAPE_NAMES))[:n]
    paths, records = [], []
    for i, label in enumerate(labels):
        image, mask, record = render_example(config, "gallery", i, int(label))
        stem = f"{i:02d}_{SHAPE_NAMES[int(label)]}"
        atomic_write_bytes(out / f"{stem}.png", _small_png(image, max_bytes))
        atomic_write_bytes(out / f"{stem}_mask.png", _png_bytes(mask))
        paths.append(out / f"{stem}.png")
        records.append({"image": f"{stem}.png", "mask": f"{stem}_mask.png", "label": int(label), "class_name": SHAPE_NAMES[int(label)], **record})
    meta = {"format": MANIFEST_FORMAT + "-samples", "config": config.to_dict(), "class_names": list(SHAPE_NAMES), "cue": _cue_description(), "samples": records}
    atomic_write_bytes(out / "samples.json", (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command line: generate the dataset and/or the gallery samples."""
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="python -m toast_core.data", description=demo_task.__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="dataset directory (default: the cache, see default_demo_task_dir)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny dataset (24/12/12 images)")
    parser.add_argument("--samples", metavar="DIR", help="also write the 8 gallery samples into DIR")
    parser.add_argument("--samples-only", action="store_true", help="write the samples, not the dataset")
    parser.add_argument("--stats", action="store_true", help="print task statistics")
    parser.add_argument("--workers", type=int, default=None, help="rendering threads (default: min(2, CPUs))")
    args = parser.parse_args(argv)
    config = (DemoTaskConfig.quick(args.seed, args.image_size) if args.quick else DemoTaskConfig(image_size=args.image_size, seed=args.seed))
    if args.samples_only and not args.samples:
        parser.error("--samples-only needs --samples DIR")
    if not args.samples_only:
        start = time.perf_counter()
        out = ensure_demo_task(config, args.out, workers=args.workers)
        print(f"dataset: {out} ({time.perf_counter() - start:.1f} s)")
        if args.stats:
            print(json.dumps(task_statistics(out), indent=1))
    if args.samples:
        for path in write_demo_samples(args.samples, image_size=args.image_size, seed=args.seed):
            print(f"sample: {path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a dataset folder holds, and every problem with it, before anything trains.

The folder is in the layout :mod:`toast_core.data.folder` documents (and parses: this module reuses its
listing, its boxes reader and its validation hold-out, so a scan sees exactly what training will read).
:func:`scan_folder` never raises for a bad folder: it returns a :class:`ScanReport` whose ``problems``
say what is wrong, each an error (training would fail or be meaningless) or a warning (it runs, but
look). :meth:`ScanReport.raise_if_unusable` turns the errors into one :class:`~toast_core.errors.InputError`.

Example::

    report = scan_folder("~/data/birds")
    print(report.summary())          # classes, counts per split, masks/boxes
    report.raise_if_unusable()       # before training
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import InputError
from .folder import IMAGE_SUFFIXES, _held_out, _list_split, _read_boxes

SPLITS = ("train", "val", "test")
#: training images each class needs once the validation share is held out
MIN_TRAIN_PER_CLASS = 2
#: fewer training images per class than this trains, with a warning that accuracy will be noisy
FEW_PER_CLASS = 10
SAMPLES_PER_CLASS = 4


def slug(name: str) -> str:
    """A dataset name as a directory name: lower case letters, digits, ``-`` and ``_`` (at most 40)."""
    text = re.sub(r"[^a-z0-9_-]+", "-", name.strip().lower()).strip("-_")[:40].strip("-_")
    if not text:
        raise InputError(f"dataset name {name!r} has no letters or digits")
    return text


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the folder: ``level`` "error" or "warning", a sentence, and the path (relative
    to the dataset root) it is about, if one."""

    level: str
    message: str
    path: Optional[str] = None


@dataclass
class SplitSummary:
    """One split: images per class, how many have a mask file / a box, and whether it is held out of
    train (no ``val/`` folder: a seeded share of each training class, as training does)."""

    name: str
    counts: dict[str, int] = field(default_factory=dict)
    with_mask: int = 0
    with_box: int = 0
    held_out_of_train: bool = False

    @property
    def n_images(self) -> int:
        return sum(self.counts.values())


@dataclass
class ScanReport:
    """What :func:`scan_folder` found. ``samples``: class -> up to a few training image paths (relative
    to ``root``) for a preview grid."""

    root: Path
    classes: list[str] = field(default_factory=list)
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    samples: dict[str, list[str]] = field(default_factory=dict)
    checked_images: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def ok(self) -> bool:
        """True when training can start (warnings allowed)."""
        return not self.errors

    @property
    def has_masks(self) -> bool:
        return any(s.with_mask or s.with_box for s in self.splits.values())

    @property
    def fingerprint(self) -> str:
        """8 hex digits of the class names and the folder's resolved path: two datasets with the same
        class names in different folders differ."""
        payload = json.dumps({"classes": self.classes, "root": str(self.root.resolve())}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:8]

    def counts_table(self) -> list[dict]:
        """One row per class: its images per split (and a total row's worth of data for a table)."""
        return [{"class": c, **{s: self.splits[s].counts.get(c, 0) for s in self.splits}} for c in self.classes]

    def summary(self) -> str:
        """A few lines for people."""
        lines = [f"{self.root}: {len(self.classes)} classes ({', '.join(self.classes[:8])}"
                 f"{', …' if len(self.classes) > 8 else ''})"]
        for s in self.splits.values():
            extra = " (held out of train/)" if s.held_out_of_train else ""
            lines.append(f"  {s.name}: {s.n_images} images{extra}, {s.with_mask} with masks, {s.with_box} with boxes")
        lines += [f"  {p.level}: {p.message}" for p in self.problems]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"root": str(self.root), "classes": self.classes, "fingerprint": self.fingerprint, "ok": self.ok,
                "splits": {k: {**asdict(v), "n_images": v.n_images} for k, v in self.splits.items()},
                "problems": [asdict(p) for p in self.problems], "samples": self.samples,
                "checked_images": self.checked_images}

    def raise_if_unusable(self) -> None:
        """:class:`InputError` listing every error (nothing when only warnings)."""
        if self.errors:
            raise InputError(f"the dataset in {self.root} cannot be trained on: " +
                             "; ".join(p.message for p in self.errors))


def _check_image(path: Path) -> Optional[str]:
    """None when the image decodes as training will decode it, else the reason."""
    from .. import load_image

    try:
        load_image(path)
    except InputError as e:
        return str(e)
    except OSError as e:
        return f"cannot read: {e}"
    return None


def _stray_files(root: Path, split: str, classes: list[str]) -> list[str]:
    """Files in a split that training ignores (not an image suffix, or directly in the split folder)."""
    base = root / split
    out = [f.relative_to(root).as_posix() for f in base.iterdir() if f.is_file() and not f.name.startswith(".")]
    for c in classes:
        out += [f.relative_to(root).as_posix() for f in sorted((base / c).rglob("*"))
                if f.is_file() and not f.name.startswith(".") and f.suffix.lower() not in IMAGE_SUFFIXES]
    return out


def _mask_file(root: Path, rel: str) -> Optional[Path]:
    parts = Path(rel)
    mask_dir = root / "masks" / parts.parent
    for cand in (mask_dir / (parts.stem + ".png"), mask_dir / parts.name):
        if cand.is_file():
            return cand
    return None


def _scan_split(report: ScanReport, name: str, items: list[tuple[str, str]], boxes: dict,
                check: Optional[set[str]]) -> SplitSummary:
    """Count one split's images per class, masks and boxes; check images (all, or those in ``check``)."""
    from PIL import Image

    summary = SplitSummary(name, counts={c: 0 for c in report.classes})
    for rel, c in items:
        summary.counts[c] = summary.counts.get(c, 0) + 1
        mask = _mask_file(report.root, rel)
        if mask is not None:
            try:
                with Image.open(mask) as im:
                    im.verify()
                summary.with_mask += 1
            except Exception as e:  # noqa: BLE001 - any decoder failure means training would crash on it
                report.problems.append(Problem("error", f"unreadable mask {mask.relative_to(report.root)}: {e}",
                                               mask.relative_to(report.root).as_posix()))
        elif rel in boxes:
            summary.with_box += 1
        if check is None or rel in check:
            report.checked_images += 1
            why = _check_image(report.root / rel)
            if why:
                report.problems.append(Problem("error", f"unreadable image {rel}: {why}", rel))
    return summary


def _listing(root: Path, report: ScanReport) -> dict[str, list[tuple[str, str]]]:
    """(relative path, class) per split present; class problems recorded on ``report``."""
    listing = {}
    for split in SPLITS:
        if not (root / split).is_dir():
            continue
        classes, items = _list_split(root, split)
        if split == "train":
            report.classes = classes
        else:
            extra = sorted(set(classes) - set(report.classes))
            missing = sorted(set(report.classes) - set(classes))
            if extra:
                report.problems.append(Problem("error", f"{split}/ has classes that train/ lacks: {extra} "
                                                        "(class folders must have the same names in every split)",
                                               split))
            if missing:
                report.problems.append(Problem("warning", f"{split}/ has no folder for the classes {missing}", split))
            items = [it for it in items if it[1] in report.classes]
        for rel in _stray_files(root, split, classes):
            report.problems.append(Problem("warning", f"ignored (not an image file name): {rel}", rel))
        listing[split] = items
    return listing


def _check_counts(report: ScanReport, val_fraction: float) -> None:
    train = report.splits["train"]
    for c, n in train.counts.items():
        if n == 0:
            report.problems.append(Problem("error", f"class {c!r} has no images in train/", f"train/{c}"))
        elif n < MIN_TRAIN_PER_CLASS:
            held = " after the validation share is held out" if "val" in report.splits and \
                report.splits["val"].held_out_of_train else ""
            report.problems.append(Problem(
                "error", f"class {c!r} has {n} training image{'s' if n != 1 else ''}{held}; each class needs at "
                         f"least {MIN_TRAIN_PER_CLASS} (better {FEW_PER_CLASS}+)", f"train/{c}"))
        elif n < FEW_PER_CLASS:
            report.problems.append(Problem("warning", f"class {c!r} has only {n} training images: accuracy and "
                                                      "maps will be noisy", f"train/{c}"))
    val = report.splits.get("val")
    if val is not None and val.n_images == 0:
        report.problems.append(Problem("error", "no validation images (add val/ or more training images per "
                                                f"class; {100 * val_fraction:.0f}% of each is held out)"))


def sample_images(root: str | os.PathLike, per_class: int = 3, splits: tuple = ("test", "val", "train")) -> list[str]:
    """Up to ``per_class`` image paths (relative to ``root``) per class from the first split present of
    ``splits`` (the app's gallery of a dataset: its held-out images first)."""
    root = Path(root)
    for split in splits:
        if (root / split).is_dir():
            _, items = _list_split(root, split)
            picked: dict[str, list[str]] = {}
            for rel, c in items:
                if len(picked.setdefault(c, [])) < per_class:
                    picked[c].append(rel)
            return [rel for rels in picked.values() for rel in rels]
    return []


def scan_folder(root: str | os.PathLike, check_images: bool | int = True, val_fraction: float = 0.1,
                seed: int = 0) -> ScanReport:
    """Scan a dataset folder (see the module docstring).

    Args:
        root: the dataset directory (``train/`` inside it).
        check_images: decode every image (True), none (False), or at most this many (evenly spread).
        val_fraction, seed: how training holds out validation images when there is no ``val/``.
    Returns:
        a :class:`ScanReport`; its ``problems`` hold everything found (it does not raise for bad data).
    """
    root = Path(root).expanduser()
    report = ScanReport(root=root)
    if not root.is_dir():
        report.problems.append(Problem("error", f"{root} is not a directory"))
        return report
    if not (root / "train").is_dir():
        report.problems.append(Problem("error", f"{root} has no train/ folder; expected train/<class>/<image> "
                                                "(and optionally val/, test/, masks/, boxes.json)"))
        return report
    listing = _listing(root, report)
    if len(report.classes) < 2:
        report.problems.append(Problem("error", f"train/ needs at least 2 class folders, found {len(report.classes)}",
                                       "train"))
    try:
        boxes = _read_boxes(root)
    except InputError as e:
        report.problems.append(Problem("error", str(e), "boxes.json"))
        boxes = {}
    every = [rel for items in listing.values() for rel, _ in items]
    if check_images is True or (check_images is not False and check_images >= len(every)):
        check = None
    else:
        step = max(1, len(every) // max(int(check_images), 1))
        check = set(every[::step][: int(check_images)]) if check_images else set()
    if "val" not in listing:
        held = _held_out(listing["train"], val_fraction, seed)
        listing["val"] = [it for it in listing["train"] if it[0] in held]
        listing["train"] = [it for it in listing["train"] if it[0] not in held]
    for split in SPLITS:
        if split in listing:
            report.splits[split] = _scan_split(report, split, listing[split], boxes, check)
    report.splits["val"].held_out_of_train = not (root / "val").is_dir()
    known = set(every)
    stray_boxes = sorted(k for k in boxes if k not in known)
    if stray_boxes:
        report.problems.append(Problem("warning", f"boxes.json names {len(stray_boxes)} image(s) that are not in "
                                                  f"the folder, e.g. {stray_boxes[0]}", "boxes.json"))
    _check_counts(report, val_fraction)
    by_class: dict[str, list[str]] = {}
    for rel, c in listing["train"]:
        if len(by_class.setdefault(c, [])) < SAMPLES_PER_CLASS:
            by_class[c].append(rel)
    report.samples = by_class
    return report

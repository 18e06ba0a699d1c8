"""Real photographs that ship inside PyPI wheels and load without any download: one table for the demo
task's backgrounds and TOAST's generic pre-tuning crops.

Only images stored in the wheels themselves are used (scikit-image's bundled subset, scikit-learn's two
sample JPEGs, matplotlib's sample photo), read as files from the installed package folders; the
scikit-image images fetched through ``pooch`` are deliberately absent because they fail offline.
"""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError


@dataclass(frozen=True)
class PhotoSource:
    """One photograph inside an installed package.

    Attributes:
        name: short identifier (stored in the demo task's manifest; the pre-tuning class name).
        package: the PyPI distribution that ships the file.
        licence: licence / copyright status as stated by the shipping package.
        module: the import name whose installed folder holds the file (read directly: the package is
            never imported, nothing is downloaded).
        file: the path inside that folder.
    """

    name: str
    package: str
    licence: str
    module: str
    file: str

    def path(self) -> Path:
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if not locations:
            raise InputError(f"photo {self.name!r} needs the package {self.package!r}, which is not installed")
        path = Path(locations[0]) / self.file
        if not path.is_file():
            raise InputError(f"{path} is missing from the installed {self.package!r}; reinstall it")
        return path


def _skimage(name: str, file: str, licence: str = "scikit-image sample data") -> PhotoSource:
    return PhotoSource(name, "scikit-image", licence, "skimage", f"data/{file}")


#: Every photograph the library uses: the demo task's backgrounds and TOAST's generic pre-tuning crops.
PHOTOS: tuple[PhotoSource, ...] = (
    _skimage("astronaut", "astronaut.png", "public domain (NASA)"),
    _skimage("chelsea", "chelsea.png", "CC0 (Stefan van der Walt)"),
    _skimage("coffee", "coffee.png", "CC0 (Rachel Michetti)"),
    _skimage("rocket", "rocket.jpg", "public domain (SpaceX)"),
    _skimage("camera", "camera.png", "CC0 (Lav Varshney)"),
    _skimage("coins", "coins.png", "no known copyright restrictions (Brooklyn Museum)"),
    _skimage("grass", "grass.png", "CC0"),
    _skimage("gravel", "gravel.png", "CC0 (CC0Textures)"),
    _skimage("brick", "brick.png", "CC0 (CC0Textures)"),
    PhotoSource("china", "scikit-learn", "CC BY 2.0 (danielbuechele, Flickr)", "sklearn", "datasets/images/china.jpg"),
    PhotoSource("flower", "scikit-learn", "CC BY 2.0 (vultilion, Flickr)", "sklearn", "datasets/images/flower.jpg"),
    PhotoSource("grace_hopper", "matplotlib", "public domain (US Navy)", "matplotlib",
                "mpl-data/sample_data/grace_hopper.jpg"),
    _skimage("hubble_deep_field", "hubble_deep_field.jpg"),
    _skimage("immunohistochemistry", "ihc.png"),
    _skimage("moon", "moon.png"),
    _skimage("page", "page.png"),
    _skimage("retina", "retina.jpg"),
    _skimage("text", "text.png"),
    _skimage("cell", "cell.png"),
    _skimage("clock", "clock_motion.png"),
    _skimage("motorcycle", "motorcycle_left.png"),
)
#: The demo task's backgrounds, in the order its generator draws them.
PHOTO_SOURCES: tuple[PhotoSource, ...] = PHOTOS[:12]
PHOTO_NAMES: tuple[str, ...] = tuple(p.name for p in PHOTO_SOURCES)
#: TOAST's generic pre-tuning photos, in label order (the class of a crop is its photograph).
GENERIC_PHOTO_NAMES: tuple[str, ...] = (
    "astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field", "immunohistochemistry", "moon",
    "page", "retina", "rocket", "text", "grass", "gravel", "brick", "cell", "clock", "motorcycle",
    "china", "flower", "grace_hopper")


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """The photograph ``name`` as a read-only uint8 array (H, W, 3); greyscale is replicated to RGB.

    Raises:
        InputError: unknown name, or the shipping package is missing / cannot provide the file.
    """
    by_name = {p.name: p for p in PHOTOS}
    if name not in by_name:
        raise InputError(f"unknown photo {name!r}; known: {', '.join(by_name)}")
    path = by_name[name].path()
    try:
        with Image.open(path) as im:
            img = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise InputError(f"photo {name!r} ({path}) could not be read: {exc}") from exc
    img = np.ascontiguousarray(img)
    img.setflags(write=False)
    return img


def photo_digest(name: str) -> str:
    """Short sha256 of the decoded pixels (decoders can differ between library versions)."""
    img = load_photo(name)
    return hashlib.sha256(img.tobytes() + repr(img.shape).encode()).hexdigest()[:16]

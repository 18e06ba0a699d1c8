"""Real photographs that ship inside PyPI wheels and load without any download.

They serve as backgrounds of the demo task. Only images stored in the wheels themselves are used
(scikit-image's bundled subset, scikit-learn's two sample JPEGs, matplotlib's sample photo); the
scikit-image images fetched through ``pooch`` are deliberately absent because they fail offline.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class PhotoSource:
    """One background photograph.

    Attributes:
        name: short identifier stored in the manifest.
        package: the PyPI distribution that ships the file.
        licence: licence / copyright status as stated by the shipping package.
        load: returns the image as uint8 (H, W, 3).
    """

    name: str
    package: str
    licence: str
    load: Callable[[], np.ndarray]


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


def _matplotlib(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import matplotlib.cbook
        from PIL import Image

        with Image.open(matplotlib.cbook.get_sample_data(filename, asfileobj=False)) as im:
            return np.asarray(im.convert("RGB"))

    return load


PHOTO_SOURCES: tuple[PhotoSource, ...] = (
    PhotoSource("astronaut", "scikit-image", "public domain (NASA)", _skimage("astronaut")),
    PhotoSource("chelsea", "scikit-image", "CC0 (Stefan van der Walt)", _skimage("chelsea")),
    PhotoSource("coffee", "scikit-image", "CC0 (Rachel Michetti)", _skimage("coffee")),
    PhotoSource("rocket", "scikit-image", "public domain (SpaceX)", _skimage("rocket")),
    PhotoSource("camera", "scikit-image", "CC0 (Lav Varshney)", _skimage("camera")),
    PhotoSource("coins", "scikit-image", "no known copyright restrictions (Brooklyn Museum)", _skimage("coins")),
    PhotoSource("grass", "scikit-image", "CC0", _skimage("grass")),
    PhotoSource("gravel", "scikit-image", "CC0 (CC0Textures)", _skimage("gravel")),
    PhotoSource("brick", "scikit-image", "CC0 (CC0Textures)", _skimage("brick")),
    PhotoSource("china", "scikit-learn", "CC BY 2.0 (danielbuechele, Flickr)", _sklearn("china.jpg")),
    PhotoSource("flower", "scikit-learn", "CC BY 2.0 (vultilion, Flickr)", _sklearn("flower.jpg")),
    PhotoSource("grace_hopper", "matplotlib", "public domain (US Navy)", _matplotlib("grace_hopper.jpg")),
)
PHOTO_NAMES: tuple[str, ...] = tuple(p.name for p in PHOTO_SOURCES)


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """The photograph ``name`` as a read-only uint8 array (H, W, 3); greyscale is replicated to RGB.

    Raises:
        InputError: unknown name, or the shipping package is missing / cannot provide the file.
    """
    by_name = {p.name: p for p in PHOTO_SOURCES}
    if name not in by_name:
        raise InputError(f"unknown background photo {name!r}; known: {', '.join(PHOTO_NAMES)}")
    src = by_name[name]
    try:
        img = np.asarray(src.load())
    except Exception as exc:  # ImportError, missing file, a pooch download attempt
        raise InputError(
            f"background photo {name!r} could not be loaded from the {src.package} package "
            f"({type(exc).__name__}: {exc}); install {src.package} (see requirements.txt)"
        ) from exc
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img[:, :, :3].astype(np.uint8))
    img.setflags(write=False)
    return img


def photo_digest(name: str) -> str:
    """Short sha256 of the decoded pixels (decoders can differ between library versions)."""
    img = load_photo(name)
    return hashlib.sha256(img.tobytes() + repr(img.shape).encode()).hexdigest()[:16]

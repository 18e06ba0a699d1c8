"""Safe extraction of a user's zip archive (a dataset uploaded to the app, or given on the command line).

What is refused, each with an :class:`ArchiveError` that names the member and the reason:

* a member whose path is absolute (``/etc/x``, ``C:\\x``, ``\\\\server\\x``), contains ``..``, a NUL
  byte or an empty component; a symbolic link or any other special file; an encrypted member; the
  same path twice;
* more than ``max_entries`` members, more than ``max_total_bytes`` uncompressed in all, one member over
  ``max_member_bytes``, or one compressed more than ``max_ratio``:1 (zip bombs) — checked on the
  declared sizes before anything is written, and again on the bytes actually produced while extracting;
* a member that is neither an image (by content, not by name: JPEG, PNG, WebP, BMP, TIFF, GIF, PPM/PGM)
  nor one of the dataset's side files (``boxes.json``, a readme or licence text).

Operating-system litter (``__MACOSX/``, ``.DS_Store``, ``Thumbs.db``, ``desktop.ini``) is skipped and
listed. Extraction goes to a hidden temporary directory beside the target, which is renamed into place
only when every member is written: on any failure nothing is left behind, and an existing target is
never touched or overwritten.

Example::

    result = extract_zip("upload.zip", toast_home() / "uploads" / "birds")
    root = result.dataset_root   # the directory holding train/ (a single top folder is looked through)
"""
from __future__ import annotations

import io
import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Optional

from PIL import Image

from ..errors import InputError
from .folder import IMAGE_SUFFIXES

#: side files a dataset may carry besides its images (matched on the lower-case file name)
SIDE_FILES = ("boxes.json", "readme", "readme.md", "readme.txt", "license", "license.txt", "licence",
              "licence.txt", "license.md", "licence.md")
#: operating-system litter, skipped without error
LITTER_DIRS = ("__MACOSX",)
LITTER_FILES = (".ds_store", "thumbs.db", "desktop.ini")
_IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM")
_CHUNK = 1 << 20


class ArchiveError(InputError):
    """A zip archive (or one of its members) that is not extracted. The message names the member."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what one archive may unpack to.

    Attributes:
        max_entries: members in the archive (directories included).
        max_total_bytes: uncompressed bytes of all members together.
        max_member_bytes: uncompressed bytes of one member (the image loader's own limit is 50 MiB).
        max_ratio: uncompressed / compressed size of one member larger than ``ratio_floor`` bytes
            (photos barely compress: JPEG ~1:1, PNG rarely beyond 10:1).
        ratio_floor: members smaller than this are not checked for their ratio (tiny files compress well).
    """

    max_entries: int = 50_000
    max_total_bytes: int = 2 * 2**30
    max_member_bytes: int = 50 * 2**20
    max_ratio: float = 100.0
    ratio_floor: int = 1 << 20


@dataclass
class ExtractResult:
    """What :func:`extract_zip` wrote: the target, the members written (posix paths relative to it),
    the members skipped as litter, and the uncompressed bytes written."""

    target: Path
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    total_bytes: int = 0

    @property
    def dataset_root(self) -> Path:
        """The directory that holds ``train/``: the target, or its only sub-directory when the archive
        wrapped everything in one top folder (``birds/train/...``)."""
        return dataset_root(self.target)


def dataset_root(directory: str | os.PathLike) -> Path:
    """``directory`` itself, or its single sub-directory when only that one holds ``train/``."""
    d = Path(directory)
    if (d / "train").is_dir():
        return d
    subs = [p for p in d.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))]
    if len(subs) == 1 and (subs[0] / "train").is_dir():
        return subs[0]
    return d


def extract_upload(source: str | os.PathLike | bytes, name: str, limits: ArchiveLimits = ArchiveLimits(),
                   home: Optional[Path] = None) -> Path:
    """Extract an uploaded archive once per content into ``toast_home()/uploads/datasets/<name>-<sha>/``
    and return its :func:`dataset_root` (a second upload of the same bytes reuses the first extraction).

    Args: source: the archive's bytes or path. name: a name for people (the file name; slugged).
    """
    import hashlib

    from ..cache import toast_home
    from .scan import slug

    data = bytes(source) if isinstance(source, (bytes, bytearray)) else None
    h = hashlib.sha256()
    if data is not None:
        h.update(data)
    else:
        with open(source, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
    stem = Path(name).stem if name.lower().endswith(".zip") else name
    try:
        label = slug(stem)
    except InputError:
        label = "dataset"
    target = (home or toast_home()) / "uploads" / "datasets" / f"{label}-{h.hexdigest()[:12]}"
    if not target.is_dir():
        extract_zip(io.BytesIO(data) if data is not None else source, target, limits)
    return dataset_root(target)


# ------------------------------------------------------------------------------------------------
# Checks on the declared members (nothing written yet)
# ------------------------------------------------------------------------------------------------

def member_path(name: str) -> PurePosixPath:
    """The safe relative path of a member name, or :class:`ArchiveError` naming why it is unsafe."""
    if "\x00" in name:
        raise ArchiveError(f"member {name!r} has a NUL byte in its name")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise ArchiveError(f"member {name!r} has an absolute path; archives may only hold relative paths")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"member {name!r} points outside the archive's folder ('..' in its path)")
    if not parts:
        raise ArchiveError(f"member {name!r} has an empty path")
    return PurePosixPath(*parts)


def _is_litter(path: PurePosixPath) -> bool:
    return path.parts[0] in LITTER_DIRS or path.name.lower() in LITTER_FILES or path.name.startswith("._")


def _file_type(info: zipfile.ZipInfo) -> str:
    """"file", "dir", or the name of a special type (from the Unix mode bits, when the archive has them)."""
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        return "symbolic link"
    if kind in (0, stat.S_IFREG):
        return "dir" if info.is_dir() else "file"
    if kind == stat.S_IFDIR:
        return "dir"
    return {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFIFO: "named pipe",
            stat.S_IFSOCK: "socket"}.get(kind, "special file")


def _is_side_file(path: PurePosixPath) -> bool:
    return path.name.lower() in SIDE_FILES


Member = tuple[zipfile.ZipInfo, PurePosixPath]


def plan_members(infos: list[zipfile.ZipInfo], limits: ArchiveLimits) -> tuple[list[Member], list[str]]:
    """Check every member's name, type and declared size; return (members to write, skipped litter).

    Raises:
        ArchiveError: the first problem found (see the module docstring).
    """
    if len(infos) > limits.max_entries:
        raise ArchiveError(f"the archive has {len(infos):,} members; the limit is {limits.max_entries:,} "
                           "(a zip bomb, or a dataset to copy onto the server instead of uploading)")
    todo, skipped, seen, total = [], [], set(), 0
    for info in infos:
        path = member_path(info.filename)
        kind = _file_type(info)
        if kind not in ("file", "dir"):
            raise ArchiveError(f"member {info.filename!r} is a {kind}; only files and folders are extracted")
        if info.flag_bits & 0x1:
            raise ArchiveError(f"member {info.filename!r} is encrypted; upload an archive without a password")
        key = path.as_posix().lower()
        if key in seen and kind == "file":
            raise ArchiveError(f"member {info.filename!r} appears twice in the archive")
        seen.add(key)
        if _is_litter(path):
            skipped.append(info.filename)
            continue
        if kind == "dir":
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES and not _is_side_file(path):
            raise ArchiveError(f"member {info.filename!r} is not an image ({path.suffix or 'no extension'}); a "
                               f"dataset holds images ({', '.join(IMAGE_SUFFIXES)}) and optionally boxes.json")
        if info.file_size > limits.max_member_bytes:
            raise ArchiveError(f"member {info.filename!r} is too large: {info.file_size:,} bytes uncompressed, "
                               f"the limit is {limits.max_member_bytes:,} per file")
        if info.file_size > limits.ratio_floor and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise ArchiveError(f"member {info.filename!r} expands {info.file_size / max(info.compress_size, 1):,.0f}"
                               f"-fold ({info.compress_size:,} -> {info.file_size:,} bytes): refused as a zip bomb")
        total += info.file_size
        if total > limits.max_total_bytes:
            raise ArchiveError(f"the archive unpacks to more than {limits.max_total_bytes:,} bytes: refused "
                               "(a zip bomb, or a dataset to copy onto the server instead of uploading)")
        todo.append((info, path))
    return todo, skipped


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------

def looks_like_image(head: bytes) -> bool:
    """True when the first bytes of a file are accepted by one of PIL's decoders for the formats we read."""
    Image.init()  # registers every decoder plugin (a no-op after the first call)
    for fmt in _IMAGE_FORMATS:
        entry = Image.OPEN.get(fmt)
        if entry is None:
            continue
        accept = entry[1]
        verdict = accept(head) if accept else False
        if verdict and not isinstance(verdict, str):
            return True
    return False


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, budget: int, limits: ArchiveLimits) -> int:
    """Stream one member into ``dest`` (created exclusively, never through a link); return the bytes
    written. Stops as soon as the member or the archive produces more than allowed."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    written = 0
    with os.fdopen(fd, "wb") as out, zf.open(info) as src:
        first = True
        while True:
            chunk = src.read(_CHUNK)
            if not chunk:
                break
            if first and dest.suffix.lower() in IMAGE_SUFFIXES and not looks_like_image(chunk[:32]):
                raise ArchiveError(f"member {info.filename!r} is named like an image but its content is not "
                                   "JPEG, PNG, WebP, BMP, TIFF, GIF or PPM")
            first = False
            written += len(chunk)
            if written > min(info.file_size, limits.max_member_bytes) or written > budget:
                raise ArchiveError(f"member {info.filename!r} produces more bytes than it declares or than "
                                   "the limits allow: refused as a zip bomb")
            out.write(chunk)
    if first and dest.suffix.lower() in IMAGE_SUFFIXES:
        raise ArchiveError(f"member {info.filename!r} is empty")
    return written


def _open_zip(source: str | os.PathLike | BinaryIO) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source if not isinstance(source, (str, os.PathLike)) else Path(source))
    except FileNotFoundError as e:
        raise ArchiveError(f"archive not found: {source}") from e
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ArchiveError(f"not a readable zip archive: {e}") from e


def extract_zip(source: str | os.PathLike | BinaryIO, target: str | os.PathLike,
                limits: ArchiveLimits = ArchiveLimits()) -> ExtractResult:
    """Extract a zip archive into the new directory ``target``, all or nothing.

    Args:
        source: the archive's path or a binary stream (an upload's bytes in ``io.BytesIO``).
        target: must not exist yet; its parent is created. It appears only once every member is written.
        limits: see :class:`ArchiveLimits`.
    Returns:
        an :class:`ExtractResult`.
    Raises:
        ArchiveError: the archive is unreadable or hostile, the target exists, or a member is refused;
            nothing is written anywhere in that case.
    """
    target = Path(target)
    if target.exists() or target.is_symlink():
        raise ArchiveError(f"{target} exists already; extracting never overwrites (choose another name)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _open_zip(source) as zf:
        todo, skipped = plan_members(zf.infolist(), limits)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        result = ExtractResult(target=target, skipped=skipped)
        try:
            base = tmp.resolve()
            for info, rel in todo:
                dest = tmp.joinpath(*rel.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not dest.parent.resolve().is_relative_to(base):  # belt and braces: member_path already refuses
                    raise ArchiveError(f"member {info.filename!r} would be written outside the target")
                try:
                    result.total_bytes += _copy_member(zf, info, dest, limits.max_total_bytes - result.total_bytes,
                                                       limits)
                except FileExistsError as e:
                    raise ArchiveError(f"member {info.filename!r} collides with another member's path") from e
                except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as e:
                    raise ArchiveError(f"member {info.filename!r} cannot be extracted: {e}") from e
                result.files.append(rel.as_posix())
            try:
                os.rename(tmp, target)
            except OSError as e:
                raise ArchiveError(f"cannot move the extracted files to {target}: {e}") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return result

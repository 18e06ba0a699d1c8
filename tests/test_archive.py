"""Safe zip extraction (toast_core.data.archive): hostile archives are refused with a clear message and
leave nothing behind, inside or outside the target."""
from __future__ import annotations

import io
import stat
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toast_core.data.archive import ArchiveError, ArchiveLimits, extract_zip
from toast_core.data.photos import load_photo
from toast_core.errors import ToastError


def _jpeg(name: str = "chelsea", box=(0, 0, 64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(load_photo(name))).crop(box).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _zip(members: list[tuple[zipfile.ZipInfo | str, bytes]], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return buf.getvalue()


def _dataset_members(prefix: str = "") -> list[tuple[str, bytes]]:
    img = _jpeg()
    return [(f"{prefix}train/cat/{i}.jpg", img) for i in range(2)] + \
           [(f"{prefix}train/coffee/{i}.jpg", _jpeg("coffee")) for i in range(2)]


def _nothing_written(tmp_path: Path, target: Path) -> None:
    assert not target.exists()
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert left == ["upload.zip"] or left == [], left  # no partial directory, nothing beside the target


def _refused(tmp_path: Path, data: bytes, match: str, limits: ArchiveLimits = ArchiveLimits()) -> None:
    (tmp_path / "upload.zip").write_bytes(data)
    target = tmp_path / "datasets" / "mine"
    with pytest.raises(ArchiveError, match=match) as err:
        extract_zip(tmp_path / "upload.zip", target, limits)
    assert isinstance(err.value, ToastError)
    assert not target.exists()
    assert not any((tmp_path / "datasets").iterdir())  # the hidden partial directory is gone too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datasets", "upload.zip"]


def test_a_dataset_zip_extracts_into_a_new_directory_and_litter_is_skipped(tmp_path):
    members = _dataset_members("birds/") + [("__MACOSX/birds/._x.jpg", b"junk"), ("birds/.DS_Store", b"junk"),
                                            ("birds/boxes.json", b"{}")]
    res = extract_zip(io.BytesIO(_zip(members)), tmp_path / "out")
    assert res.dataset_root == tmp_path / "out" / "birds"
    assert sorted(res.files) == sorted(["birds/boxes.json"] + [m for m, _ in _dataset_members("birds/")])
    assert sorted(res.skipped) == ["__MACOSX/birds/._x.jpg", "birds/.DS_Store"]
    assert (tmp_path / "out/birds/train/cat/0.jpg").read_bytes() == _jpeg()
    assert res.total_bytes == sum(len(d) for _, d in members[:4]) + 2
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(ArchiveError, match="exists already"):  # never overwritten
        extract_zip(io.BytesIO(_zip(members)), tmp_path / "out")


def test_path_traversal_member_is_refused_and_nothing_is_written(tmp_path):
    data = _zip(_dataset_members() + [("train/cat/../../../evil.jpg", _jpeg())])
    _refused(tmp_path, data, r"outside the archive's folder \('\.\.'")
    assert not (tmp_path / "evil.jpg").exists()


@pytest.mark.parametrize("name", ["/tmp/toast-abs.jpg", "C:/windows/abs.jpg", "\\\\server\\share\\abs.jpg"])
def test_absolute_member_path_is_refused(tmp_path, name):
    _refused(tmp_path, _zip(_dataset_members() + [(name, _jpeg())]), "absolute path")
    assert not Path("/tmp/toast-abs.jpg").exists()


def test_symlink_member_is_refused(tmp_path):
    link = zipfile.ZipInfo("train/cat/link.jpg")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    _refused(tmp_path, _zip(_dataset_members() + [(link, b"/etc/passwd")]), "is a symbolic link")


def test_zip_bomb_by_compression_ratio_is_refused_before_writing(tmp_path):
    bomb = b"\x00" * (8 * 2**20)  # 8 MiB of zeros deflate to ~8 kB
    data = _zip(_dataset_members() + [("train/cat/bomb.png", bomb)])
    assert len(data) < 100_000
    _refused(tmp_path, data, r"expands \d[\d,]*-fold .* zip bomb")


def test_zip_bomb_by_entry_count_is_refused(tmp_path):
    members = [(f"train/cat/{i}.jpg", b"\xff\xd8\xff") for i in range(120)]
    _refused(tmp_path, _zip(members, zipfile.ZIP_STORED), "has 120 members; the limit is 100",
             ArchiveLimits(max_entries=100))


def test_total_size_over_the_limit_is_refused(tmp_path):
    _refused(tmp_path, _zip(_dataset_members()), "unpacks to more than",
             ArchiveLimits(max_total_bytes=len(_jpeg()) * 2 + 10))


def test_a_member_that_lies_about_its_size_is_caught_while_extracting(tmp_path):
    """The central directory declares 10 bytes for a member that holds a whole photo: the declared-size
    checks pass, the bytes actually read do not match and the archive is refused mid-way."""
    data = bytearray(_zip(_dataset_members(), zipfile.ZIP_STORED))
    cd = data.rfind(b"PK\x01\x02")  # the last member's central-directory record
    struct.pack_into("<I", data, cd + 24, 10)  # uncompressed size
    _refused(tmp_path, bytes(data), "cannot be extracted|produces more bytes")


def test_non_image_members_are_refused_by_name_and_by_content(tmp_path):
    _refused(tmp_path, _zip(_dataset_members() + [("train/cat/run.sh", b"#!/bin/sh\nrm -rf /\n")]),
             r"'train/cat/run.sh' is not an image \(\.sh\)")
    _refused(tmp_path, _zip(_dataset_members() + [("train/cat/fake.jpg", b"#!/bin/sh\nrm -rf /\n" * 4)]),
             "'train/cat/fake.jpg' is named like an image but its content is not")


def test_oversized_member_and_not_a_zip(tmp_path):
    _refused(tmp_path, _zip(_dataset_members(), zipfile.ZIP_STORED), "too large: .* the limit is 1,000 per file",
             ArchiveLimits(max_member_bytes=1000))
    _refused(tmp_path, b"this is not a zip", "not a readable zip archive")


def test_duplicate_member_is_refused(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it writes
        data = _zip(_dataset_members() + [("train/cat/0.jpg", _jpeg("coffee"))])
    _refused(tmp_path, data, "appears twice")


def test_extract_upload_is_content_addressed_and_looks_through_one_top_folder(tmp_path):
    from toast_core.data.archive import extract_upload

    data = _zip(_dataset_members("birds/"))
    root = extract_upload(data, "My Birds.zip", home=tmp_path)
    assert root.name == "birds" and (root / "train/cat/0.jpg").is_file()
    assert root.parent.parent == tmp_path / "uploads" / "datasets" and root.parent.name.startswith("my-birds-")
    (tmp_path / "upload.zip").write_bytes(data)
    assert extract_upload(tmp_path / "upload.zip", "My Birds.zip", home=tmp_path) == root  # reused, not re-extracted
    with pytest.raises(ArchiveError, match="absolute path"):
        extract_upload(_zip([("/abs.jpg", _jpeg())]), "evil.zip", home=tmp_path)
    assert sorted(p.name for p in (tmp_path / "uploads" / "datasets").iterdir()) == [root.parent.name]

"""Safe extraction of uploaded zip / tar archives: no path escape, no links, bounded size,
file count and compression ratio. Nothing is written outside ``dest``."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from ..errors import InvalidInput

MAX_FILES = 64
MAX_RATIO = 200  # uncompressed / compressed, beyond which a big member is a bomb


def is_archive(head: bytes) -> bool:
    return head.startswith(b"PK\x03\x04") or head.startswith(b"\x1f\x8b") or (
        len(head) > 262 and head[257:262] == b"ustar")


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if not path.parts or path.is_absolute() or ":" in path.parts[0]:
        raise InvalidInput(f"archive member '{name}' has an absolute path",
                           code="archive_path_escape")
    if any(part == ".." for part in path.parts):
        raise InvalidInput(f"archive member '{name}' escapes the archive ('..')",
                           code="archive_path_escape")
    return path


def extract(data: bytes, dest: Path, *, max_bytes: int) -> list[Path]:
    """Extract ``data`` (zip or tar, optionally gzip) into ``dest``; returns the files."""
    dest.mkdir(parents=True, exist_ok=True)
    if data.startswith(b"PK\x03\x04"):
        return _extract_zip(data, dest, max_bytes)
    return _extract_tar(data, dest, max_bytes)


def _check_count(n: int) -> None:
    if n > MAX_FILES:
        raise InvalidInput(f"archive holds {n} entries; at most {MAX_FILES}",
                           code="archive_too_many_files")


def _write(dest: Path, name: PurePosixPath, stream: IO[bytes] | None, limit: int,
           declared: int, compressed: int) -> int:
    if declared > limit:
        raise InvalidInput("archive expands beyond the upload size limit", code="archive_bomb")
    if compressed and declared > 10_000_000 and declared / compressed > MAX_RATIO:
        raise InvalidInput(f"archive member '{name}' has a compression ratio of "
                           f"{declared // compressed}:1 (a zip bomb?)", code="archive_bomb")
    target = (dest / name).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise InvalidInput(f"archive member '{name}' escapes the archive",
                           code="archive_path_escape")
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with target.open("xb") as out:
        while stream is not None and (chunk := stream.read(1 << 20)):
            written += len(chunk)
            if written > limit:  # declared sizes can lie
                raise InvalidInput("archive expands beyond the upload size limit",
                                   code="archive_bomb")
            out.write(chunk)
    return written


def _extract_zip(data: bytes, dest: Path, max_bytes: int) -> list[Path]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        members = zf.infolist()
    except (zipfile.BadZipFile, ValueError) as exc:
        raise InvalidInput("the zip archive is corrupt", code="invalid_archive") from exc
    files = [m for m in members if not m.is_dir()]
    _check_count(len(files))
    budget, out = max_bytes, []
    for m in files:
        name = _safe_name(m.filename)
        if stat.S_ISLNK(m.external_attr >> 16):
            raise InvalidInput(f"archive member '{m.filename}' is a symbolic link",
                               code="archive_link")
        with zf.open(m) as stream:
            budget -= _write(dest, name, stream, budget, m.file_size, m.compress_size)
        out.append(dest / name)
    return out


def _extract_tar(data: bytes, dest: Path, max_bytes: int) -> list[Path]:
    try:
        tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115 (in memory)
        members = tf.getmembers()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidInput("the tar archive is corrupt", code="invalid_archive") from exc
    _check_count(len(members))
    budget, out = max_bytes, []
    for m in members:
        name = _safe_name(m.name)
        if m.issym() or m.islnk():
            raise InvalidInput(f"archive member '{m.name}' is a link", code="archive_link")
        if m.isdir():
            continue
        if not m.isfile():
            raise InvalidInput(f"archive member '{m.name}' is not a regular file",
                               code="archive_link")
        budget -= _write(dest, name, tf.extractfile(m), budget, m.size, 0)
        out.append(dest / name)
    return out

"""Bundles as zip bytes: the limits, safe extraction, and comparing a tree with a zip.

A bundle arriving from the database may have been crafted by a hostile tenant.
`extract` therefore checks what the zip's directory declares before writing anything
(entries, the directory's own size, the total size, names, entry types) and counts the
bytes it actually writes, so a zip bomb stops at MAX_EXTRACTED_BYTES; it writes only
regular files and directories under names that stay inside the target.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from flpg.errors import AppError

MAX_BUNDLE_BYTES = 64 << 20
"""A bundle (the zip) is at most this big."""
MAX_EXTRACTED_BYTES = 256 << 20
"""The files of a bundle add up to at most this many bytes."""
MAX_FILES = 10_000
"""A bundle holds at most this many entries."""
MAX_NAME_BYTES = 512
"""A path inside a bundle is at most this many bytes of UTF-8."""
_MAX_CENTRAL_DIRECTORY = MAX_FILES * (46 + MAX_NAME_BYTES)
"""Bytes of zip directory that MAX_FILES entries of the longest names need."""

CORRUPT = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    struct.error,
)
"""What zipfile raises on malformed or unsupported archives."""
_CHUNK = 1 << 20


def member_name_problem(name: str) -> str | None:
    """Why `name` cannot be a path inside a bundle, or None if it can."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if not name or "\\" in name or not name.isprintable():
        return "holds a control character, a backslash or nothing"
    if size > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    path = PurePosixPath(name)
    if path.is_absolute() or any(p in ("", ".", "..") for p in name.rstrip("/").split("/")):
        return "is absolute or has an empty, '.' or '..' part"
    return None


def _check_directory(data: bytes, label: str) -> None:
    """Refuse a zip whose end record declares more entries, or a bigger directory,
    than any valid bundle has, before zipfile parses (and allocates for) it."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise AppError(f"{label} is {len(data)} bytes (limit {MAX_BUNDLE_BYTES})")
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - (22 + 0xFFFF)))
    if end < 0 or len(data) < end + 22:
        raise AppError(f"{label} is not a zip archive")
    entries, directory_size = struct.unpack("<HI", data[end + 10 : end + 16])
    if entries > MAX_FILES or directory_size > _MAX_CENTRAL_DIRECTORY:
        raise AppError(f"{label} declares too many entries ({entries}; limit {MAX_FILES})")


def extract(data: bytes, target: Path, label: str) -> int:
    """Unzip `data` into the existing empty directory `target`; returns bytes written.

    Raises AppError (naming `label`) for anything but a well-formed bundle within the
    limits: too many entries, a declared or actual total above MAX_EXTRACTED_BYTES,
    unsafe or duplicate names, entries that are not files or directories, corrupt data.
    """
    _check_directory(data, label)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            _check_members(infos, label)
            written = 0
            for info in infos:
                dest = target.joinpath(*info.filename.rstrip("/").split("/"))
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                written += _extract_file(zf, info, dest, MAX_EXTRACTED_BYTES - written, label)
            return written
    except CORRUPT as exc:
        raise AppError(f"{label} is corrupt: {exc}") from None
    except OSError as exc:
        raise AppError(f"{label} could not be extracted: {exc.strerror or exc}") from None


def _check_members(infos: list[zipfile.ZipInfo], label: str) -> None:
    if len(infos) > MAX_FILES:
        raise AppError(f"{label} has {len(infos)} entries (limit {MAX_FILES})")
    declared = sum(i.file_size for i in infos)
    if declared > MAX_EXTRACTED_BYTES:
        raise AppError(
            f"{label} would extract to {declared} bytes (limit {MAX_EXTRACTED_BYTES}); refused"
        )
    seen: set[str] = set()
    for info in infos:
        problem = member_name_problem(info.filename)
        if problem:
            raise AppError(f"{label} has an unsafe path {info.filename!r}: it {problem}")
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise AppError(f"{label}: {info.filename!r} is not a regular file or directory")
        name = info.filename.rstrip("/")
        if name in seen:
            raise AppError(f"{label} holds {name!r} twice")
        seen.add(name)


def _extract_file(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, budget: int, label: str
) -> int:
    """Write one member, never more than its declared size nor `budget` bytes."""
    written = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out, zf.open(info) as src:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > info.file_size or written > budget:
                raise AppError(
                    f"{label} extracts to more bytes than it declares or than "
                    f"{MAX_EXTRACTED_BYTES} (at {info.filename!r}); refused"
                )
            out.write(chunk)
    return written


def tree_matches(data: bytes, tree: Path) -> bool:
    """True if the files under `tree` are exactly the bundle's, byte for byte."""
    expected: dict[str, bytes] = {}
    dirs: set[str] = set()
    _check_directory(data, "a cached bundle")
    budget = MAX_EXTRACTED_BYTES
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            name = info.filename.rstrip("/")
            parts = name.split("/")
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
            if info.is_dir():
                dirs.add(name)
                continue
            digest = hashlib.sha256()
            with zf.open(info) as src:
                while chunk := src.read(_CHUNK):
                    budget -= len(chunk)
                    if budget < 0:
                        return False
                    digest.update(chunk)
            expected[name] = digest.digest()
    for root, subdirs, files in os.walk(tree, onerror=_raise):
        rel = Path(root).relative_to(tree).as_posix()
        prefix = "" if rel == "." else rel + "/"
        for d in subdirs:
            if prefix + d not in dirs or os.path.islink(os.path.join(root, d)):
                return False
        for f in files:
            name = prefix + f
            if name not in expected or _file_digest(Path(root, f)) != expected.pop(name):
                return False
    return not expected


def _file_digest(path: Path) -> bytes | None:
    """SHA-256 of a regular file (None for anything else), never following a link
    and never opening a device or FIFO."""
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        digest = hashlib.sha256()
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
        return digest.digest()


def _raise(exc: OSError) -> None:
    raise exc

"""Bundles without a database: safe extraction of hostile zips, what `bundle` reads,
and the node cache (verified on every use, evicted least recently used first, never
while a process uses a bundle)."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from flpg.bundle.appdir import bundle
from flpg.bundle.archive import MAX_EXTRACTED_BYTES, MAX_FILES, extract
from flpg.bundle.cache import BundleCache
from flpg.errors import AppError

APPS = Path(__file__).resolve().parents[1] / "e2e" / "apps"

# ---------------------------------------------------------------- zips by hand

Entry = tuple[str, bytes, int, int, int, int]
"""(name, stored data, declared size, crc32, method: 0 stored / 8 deflated, mode)."""


def raw_zip(entries: list[Entry], directory_size: int | None = None) -> bytes:
    """A zip written byte by byte, so a test can make it lie."""
    out = bytearray()
    central = bytearray()
    for name, data, size, crc, method, mode in entries:
        encoded = name.encode("utf-8", "surrogateescape")
        offset = len(out)
        out += struct.pack(
            "<4s5H3L2H",
            b"PK\x03\x04",
            20,
            0,
            method,
            0,
            0x21,
            crc,
            len(data),
            size,
            len(encoded),
            0,
        )
        out += encoded + data
        central += struct.pack(
            "<4s6H3L5H2L",
            b"PK\x01\x02",
            20,
            20,
            0,
            method,
            0,
            0x21,
            crc,
            len(data),
            size,
            len(encoded),
            0,
            0,
            0,
            0,
            mode << 16,
            offset,
        )
        central += encoded
    start = len(out)
    out += central
    size_field = len(central) if directory_size is None else directory_size
    out += struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), size_field, start, 0
    )
    return bytes(out)


def stored(name: str, data: bytes, mode: int = 0o100644) -> Entry:
    return (name, data, len(data), zlib.crc32(data), 0, mode)


def zero_bomb(name: str, mib: int) -> Entry:
    """A deflated member of `mib` MiB of zeros, about 1 KiB per MiB compressed."""
    chunk = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)  # the same bytes for every MiB
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    return (name, block * mib + c.flush(), mib << 20, crc, 8, 0o100644)


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


# ---------------------------------------------------------------- extraction


def test_a_zip_bomb_is_refused_from_its_directory_before_anything_is_written(
    tmp_path: Path,
) -> None:
    data = raw_zip([stored("pyproject.toml", b"x"), zero_bomb("weights.bin", 2100)])
    assert len(data) < 3 << 20  # a 2 MB bundle ...
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(AppError, match=r"would extract to 2202009601 bytes .*refused"):
        extract(data, target, "bundle")  # ... that would be 2.1 GB on the node
    assert listing(target) == []


def test_a_member_bigger_than_its_declared_size_never_writes_more(tmp_path: Path) -> None:
    """The directory says 1 KiB, the data inflates to 10 MiB: extraction stops at the
    declared size and refuses the bundle (the data does not match its checksum)."""
    name, data, _, crc, method, mode = zero_bomb("weights.bin", 10)
    lying = raw_zip([stored("pyproject.toml", b"x"), (name, data, 1024, crc, method, mode)])
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(AppError, match=r"corrupt|more bytes than it declares"):
        extract(lying, target, "bundle")
    written = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    assert written <= 1025


@pytest.mark.parametrize(
    "name",
    [
        "/etc/cron.d/evil",
        "../escape.py",
        "pkg/../../escape.py",
        "pkg\\..\\escape.py",
        "./x.py",
        "pkg//x.py",
        "line\nbreak.py",
        "nul\x07bell.py",
    ],
)
def test_unsafe_member_names_are_refused(tmp_path: Path, name: str) -> None:
    target = tmp_path / "deep" / "out"
    target.mkdir(parents=True)
    with pytest.raises(AppError, match="unsafe path"):
        extract(raw_zip([stored("ok.py", b"1"), stored(name, b"pwned")]), target, "bundle")
    assert "escape.py" not in listing(tmp_path)
    assert listing(target) == []  # checked before the first file is written


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([stored("link", b"/etc/passwd", 0o120777)], "not a regular file or directory"),
        ([stored("fifo", b"", 0o010644)], "not a regular file or directory"),
        ([stored("a.py", b"1"), stored("a.py", b"2")], "twice"),
        ([stored("a", b"1"), stored("a/", b"", 0o040755)], "twice"),
        ([stored(f"f{i}", b"") for i in range(MAX_FILES + 1)], "entries"),
    ],
    ids=["symlink", "fifo", "duplicate", "file-and-dir", "too-many"],
)
def test_entries_that_are_not_plain_files_or_too_many_are_refused(
    tmp_path: Path, entries: list[Entry], match: str
) -> None:
    with pytest.raises(AppError, match=match):
        extract(raw_zip(entries), tmp_path, "bundle")
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a zip at all",
        raw_zip([stored("a.py", b"1")])[:-30],
        raw_zip([stored("a.py", b"1")], directory_size=1 << 30),
        b"\0" * (65 << 20),
    ],
    ids=["empty", "text", "truncated", "huge-directory", "over-64-MiB"],
)
def test_malformed_archives_are_refused_with_an_app_error(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(AppError):
        extract(data, tmp_path, "bundle")


def test_a_bundle_extracts_to_exactly_its_files(tmp_path: Path) -> None:
    app = APPS / "deterministic"
    _, data = bundle(app)
    extract(data, tmp_path, "bundle")
    expected = sorted(
        p.relative_to(app).as_posix()
        for p in app.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert [p for p in listing(tmp_path) if (tmp_path / p).is_file()] == expected
    for rel in expected:
        assert (tmp_path / rel).read_bytes() == (app / rel).read_bytes()
    assert MAX_EXTRACTED_BYTES >= 256 << 20


def test_bundling_is_deterministic_and_skips_bytecode(tmp_path: Path) -> None:
    app = tmp_path / "app"
    shutil.copytree(APPS / "deterministic", app)
    first = bundle(app)
    (app / "det_app" / "__pycache__").mkdir(exist_ok=True)
    (app / "det_app" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    (app / "det_app" / "stale.pyc").write_bytes(b"junk")
    assert bundle(app) == first


# ---------------------------------------------------------------- unreadable files


@pytest.fixture
def world_readable_app() -> Iterator[Path]:
    """A copy of apps/deterministic that the user `nobody` can traverse."""
    base = Path(tempfile.mkdtemp(prefix="flpg-unreadable-", dir="/tmp"))
    try:
        base.chmod(0o755)
        app = base / "app"
        shutil.copytree(APPS / "deterministic", app, ignore=shutil.ignore_patterns("__pycache__"))
        for current, dirs, files in os.walk(app):
            for d in dirs:
                os.chmod(os.path.join(current, d), 0o755)
            for f in files:
                os.chmod(os.path.join(current, f), 0o644)
        yield app
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    ("rel", "needle"),
    [
        ("det_app/weights.bin", "cannot read det_app/weights.bin: Permission denied"),
        ("det_app/private", "cannot read directory det_app/private: Permission denied"),
        ("pyproject.toml", "cannot read pyproject.toml: Permission denied"),
    ],
)
def test_a_file_or_directory_the_user_cannot_read_is_named(
    world_readable_app: Path, rel: str, needle: str
) -> None:
    """As root every file is readable, so the check then runs as `nobody` (setpriv)."""
    target = world_readable_app / rel
    if rel == "det_app/private":
        target.mkdir()
        (target / "a.txt").write_text("x")
    elif not target.exists():
        target.write_bytes(b"\0" * 10)
    target.chmod(0)
    code = (
        "import sys\nfrom pathlib import Path\nfrom flpg.bundle.appdir import bundle, read_app\n"
        "from flpg.errors import AppError\n"
        "try:\n    read_app(Path(sys.argv[1])); bundle(Path(sys.argv[1]))\n"
        "except AppError as e:\n    print(e)\nelse:\n    print('no error')\n"
    )
    argv = [sys.executable, "-c", code, str(world_readable_app)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv")
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    assert needle in done.stdout, done.stdout


# ---------------------------------------------------------------- the cache


class Source:
    """The database's side of a fetch: counts how often the cache asked."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.fetches = 0

    def __call__(self) -> bytes:
        self.fetches += 1
        return self.data


@pytest.fixture
def app_bundle() -> tuple[str, bytes]:
    return bundle(APPS / "deterministic")


def test_a_bundle_is_fetched_once_and_reused(tmp_path: Path, app_bundle: tuple[str, bytes]) -> None:
    app_hash, data = app_bundle
    source = Source(data)
    cache = BundleCache(tmp_path)
    root = cache.path(app_hash, source)
    assert root == tmp_path / app_hash
    assert cache.path(app_hash, source) == root
    assert source.fetches == 1
    assert {p.name for p in tmp_path.iterdir()} == {
        ".lock",
        app_hash,
        f"{app_hash}.zip",
        f"{app_hash}.lock",
    }
    cache.release(app_hash)


def _tamper(root: Path, how: str) -> None:
    server = root / "det_app" / "server_app.py"
    if how == "modified":
        server.write_text("import os\nos.system('echo pwned')\n")
    elif how == "same-size":
        text = server.read_bytes()
        server.write_bytes(text[:-1] + (b"X" if text[-1:] != b"X" else b"Y"))
    elif how == "extra-module":
        (root / "det_app" / "sitecustomize.py").write_text("print('pwned')\n")
    elif how == "injected-bytecode":
        (root / "det_app" / "__pycache__").mkdir()
        (root / "det_app" / "__pycache__" / "server_app.cpython-311.pyc").write_bytes(b"x")
    elif how == "removed":
        server.unlink()
    elif how == "symlinked":
        server.unlink()
        server.symlink_to("/etc/hostname")
    elif how == "zip":
        zip_path = root.with_name(root.name + ".zip")
        zip_path.write_bytes(zip_path.read_bytes() + b"tail")
    elif how == "tree-gone":
        shutil.rmtree(root)


@pytest.mark.parametrize(
    "how",
    [
        "modified",
        "same-size",
        "extra-module",
        "injected-bytecode",
        "removed",
        "symlinked",
        "zip",
        "tree-gone",
    ],
)
def test_a_tampered_cache_entry_is_detected_and_fetched_again(
    tmp_path: Path, app_bundle: tuple[str, bytes], how: str
) -> None:
    app_hash, data = app_bundle
    source = Source(data)
    cache = BundleCache(tmp_path)
    root = cache.path(app_hash, source)
    _tamper(root, how)
    assert cache.path(app_hash, source) == root
    assert source.fetches == 2
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    extract(data, fresh, "bundle")
    assert listing(root) == listing(fresh)
    for rel in listing(fresh):
        if (fresh / rel).is_file():
            assert (root / rel).read_bytes() == (fresh / rel).read_bytes()
            assert not (root / rel).is_symlink()
    cache.release(app_hash)


def test_bytes_that_do_not_match_the_hash_are_refused(
    tmp_path: Path, app_bundle: tuple[str, bytes]
) -> None:
    app_hash, data = app_bundle
    with pytest.raises(AppError, match="is corrupt"):
        BundleCache(tmp_path).path(app_hash, lambda: data + b"x")
    assert not (tmp_path / app_hash).exists()
    assert not (tmp_path / f"{app_hash}.zip").exists()


def test_a_bomb_from_the_database_leaves_nothing_in_the_cache(tmp_path: Path) -> None:
    data = raw_zip([stored("pyproject.toml", b"x"), zero_bomb("weights.bin", 300)])
    app_hash = hashlib.sha256(data).hexdigest()
    with pytest.raises(AppError, match="would extract to"):
        BundleCache(tmp_path).path(app_hash, lambda: data)
    assert {p.name for p in tmp_path.iterdir()} <= {".lock", f"{app_hash}.lock"}
    BundleCache(tmp_path).release(app_hash)


@pytest.mark.parametrize("bad", ["../../etc", "ABC", "0" * 63, "0" * 64 + "/x"])
def test_a_malformed_hash_never_becomes_a_path(tmp_path: Path, bad: str) -> None:
    with pytest.raises(AppError, match="not a SHA-256"):
        BundleCache(tmp_path / "cache").path(bad, lambda: b"")
    assert not (tmp_path / "etc").exists()


# ---------------------------------------------------------------- eviction


def _variants(tmp_path: Path, n: int) -> list[tuple[str, bytes]]:
    """n different bundles (copies of apps/deterministic with one file apart)."""
    out = []
    for i in range(n):
        app = tmp_path / f"app{i}"
        shutil.copytree(APPS / "deterministic", app, ignore=shutil.ignore_patterns("__pycache__"))
        (app / "version.txt").write_text(str(i))
        out.append(bundle(app))
    return out


def _cached(cache_dir: Path) -> set[str]:
    return {p.name for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}


HOLDER = """
import sys, time
from pathlib import Path
from flpg.bundle.cache import BundleCache
data = Path(sys.argv[3]).read_bytes()
BundleCache(Path(sys.argv[1]), max_entries=1).path(sys.argv[2], lambda: data)
print("holding", flush=True)
sys.stdin.read()
"""


def test_least_recently_used_bundles_are_evicted_beyond_the_count(
    tmp_path: Path,
) -> None:
    (a, da), (b, db_), (c, dc) = _variants(tmp_path, 3)
    cache_dir = tmp_path / "cache"
    cache = BundleCache(cache_dir, max_entries=2)
    for app_hash, data in [(a, da), (b, db_), (a, da)]:  # a used after b
        cache.path(app_hash, lambda data=data: data)
        cache.release(app_hash)
    os.utime(cache_dir / f"{b}.lock", (1, 1))  # b's last use is the oldest, whatever the clock
    cache.path(c, lambda: dc)
    assert _cached(cache_dir) == {a, c}
    assert not (cache_dir / f"{b}.zip").exists() and not (cache_dir / f"{b}.lock").exists()
    cache.release(c)


def test_a_bundle_in_use_by_another_process_is_never_evicted(tmp_path: Path) -> None:
    (a, da), (b, db_), (c, dc) = _variants(tmp_path, 3)
    cache_dir = tmp_path / "cache"
    (tmp_path / "a.zip").write_bytes(da)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(cache_dir), a, str(tmp_path / "a.zip")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        os.utime(cache_dir / f"{a}.lock", (1, 1))  # the least recently used of all
        cache = BundleCache(cache_dir, max_entries=1)
        for app_hash, data in [(b, db_), (c, dc)]:
            cache.path(app_hash, lambda data=data: data)
            cache.release(app_hash)
        assert a in _cached(cache_dir)  # held: kept beyond the bound
        assert b not in _cached(cache_dir)
    finally:
        holder.communicate("", timeout=30)
    cache.path(b, lambda: db_)  # the holder ended: a may go now
    assert _cached(cache_dir) == {b}
    cache.release(b)


def test_the_size_bound_evicts_too(tmp_path: Path) -> None:
    (a, da), (b, db_) = _variants(tmp_path, 2)
    cache_dir = tmp_path / "cache"
    cache = BundleCache(cache_dir, max_bytes=1, max_entries=100)
    cache.path(a, lambda: da)
    cache.release(a)
    cache.path(b, lambda: db_)
    assert _cached(cache_dir) == {b}  # b is over the bound too, but in use
    cache.release(b)

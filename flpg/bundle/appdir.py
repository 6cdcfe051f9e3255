"""Apps: reading an app directory, bundling it, and loading a component of a bundle.

An app is a directory with a `pyproject.toml` naming its components:

    [tool.flpg.app.components]
    serverapp = "mypkg.server_app:app"
    clientapp = "mypkg.client_app:app"

    [tool.flpg.app.config]
    num-server-rounds = 3

A Flower app's `[tool.flwr.app.components]` and `[tool.flwr.app.config]` are read
too: each of the two tables is taken from `[tool.flpg.app.*]` if the pyproject has
it, else from `[tool.flwr.app.*]` (the tables are not merged).

A bundle is a deterministic zip of the directory, addressed by its SHA-256, so
the same app is stored once and a worker can verify what it runs. What goes in:
every regular file under the directory except `__pycache__`, `.git`, virtualenvs,
`build`, `dist`, `*.egg-info` and `*.pyc`. A symlink is bundled as a copy of its
target only if that target is a regular file inside the app directory; a symlink
out of the directory, to a directory, or to nothing is refused, as are FIFOs,
sockets and devices. At most MAX_FILES files, MAX_EXTRACTED_BYTES of them in all,
MAX_BUNDLE_BYTES zipped. Every refusal is an AppError naming the file.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import stat
import sys
import threading
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flpg.bundle.archive import (
    MAX_BUNDLE_BYTES,
    MAX_EXTRACTED_BYTES,
    MAX_FILES,
    member_name_problem,
)
from flpg.bundle.cache import BundleCache, default_cache_dir
from flpg.compat.flwr import FlwrUnsupported
from flpg.errors import AppError
from flpg.store.text import storable

__all__ = [
    "MAX_BUNDLE_BYTES",
    "AppSpec",
    "BundleCache",
    "bundle",
    "check_components",
    "default_cache_dir",
    "load_component",
    "parse_pyproject",
    "read_app",
]

_EXCLUDED_DIRS = {
    "__pycache__",
    ".git",
    ".venv",
    "venv",
    ".mypy_cache",
    ".pytest_cache",
    "build",
    "dist",
}
_EXCLUDED_SUFFIXES = {".pyc", ".pyo"}
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)
PYPROJECT_LIMIT = 1 << 20
"""Bytes a pyproject.toml may have."""
NAME_LIMIT = 128
"""Characters an app's name may have."""
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
}


def shown(text: object, limit: int = 300) -> str:
    """`text` fit for one line: controls and bad bytes escaped, about `limit` chars."""
    out = str(text)
    if not out.isprintable():
        out = repr(out)[1:-1]
    return out if len(out) <= limit else out[:limit] + "..."


@dataclass(frozen=True)
class AppSpec:
    """What an app's pyproject says."""

    name: str
    serverapp: str
    clientapp: str
    config: dict[str, Any]
    config_table: str = "[tool.flpg.app.config]"
    """The table `config` was read from (flpg's, or Flower's `[tool.flwr.app.config]`)."""


def _table(doc: dict[str, Any], path: str) -> Any:
    """The value at dotted `path` of a TOML document (None where a level is missing)."""
    value: Any = doc
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


_SECTIONS = ("tool.flpg.app", "tool.flwr.app")  # first match wins: flpg's, then Flower's


def _app_table(doc: dict[str, Any], name: str) -> tuple[str, Any]:
    """`([header], value)` of the app table `name`: `[tool.flpg.app.NAME]` if the
    document has it, else `[tool.flwr.app.NAME]`, else flpg's header and None."""
    for section in _SECTIONS:
        value = _table(doc, f"{section}.{name}")
        if value is not None:
            return f"[{section}.{name}]", value
    return f"[{_SECTIONS[0]}.{name}]", None


def _valid_ref(ref: object) -> bool:
    if not isinstance(ref, str) or ref.count(":") != 1:
        return False
    module, attr = ref.split(":")
    return all(p.isidentifier() for p in [*module.split("."), *attr.split(".")])


def parse_pyproject(text: str, where: str) -> AppSpec:
    """Read the app sections of a pyproject; AppError naming `where` if malformed."""
    where = shown(where)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AppError(f"{where} is not valid TOML: {shown(exc)}") from None
    header, components = _app_table(doc, "components")
    if not isinstance(components, dict):
        raise AppError(
            f"{where} has no [tool.flpg.app.components] table (or Flower's "
            "[tool.flwr.app.components]) naming serverapp and clientapp"
        )
    refs: dict[str, str] = {}
    for key in ("serverapp", "clientapp"):
        ref = components.get(key)
        if not _valid_ref(ref):
            raise AppError(
                f"{where}: {header} {key} must be 'module:attribute' "
                f"(Python names), got {shown(repr(ref), 80)}"
            )
        refs[key] = str(ref)
    config_table, config = _app_table(doc, "config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise AppError(f"{where}: {config_table} must be a table")
    name = _table(doc, "project.name")
    if name is None:
        name = storable(Path(where).parent.name, NAME_LIMIT) or "app"
    elif not isinstance(name, str) or not name or len(name) > NAME_LIMIT or not name.isprintable():
        raise AppError(
            f"{where}: [project] name must be a printable string of 1 to {NAME_LIMIT} "
            f"characters, got {shown(repr(name), 80)}"
        )
    return AppSpec(
        name=name,
        serverapp=refs["serverapp"],
        clientapp=refs["clientapp"],
        config=config,
        config_table=config_table,
    )


def _app_root(app_dir: Path) -> Path:
    """`app_dir` resolved; AppError unless it is a directory this process can read."""
    where = shown(app_dir)
    try:
        mode = app_dir.stat().st_mode
    except ValueError:
        raise AppError(f"app directory {where} is not a valid path") from None
    except (FileNotFoundError, NotADirectoryError):
        raise AppError(f"app directory {where} does not exist") from None
    except OSError as exc:
        raise AppError(f"cannot access app directory {where}: {exc.strerror}") from None
    if not stat.S_ISDIR(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "a file")
        raise AppError(f"{where} is {kind}, not a directory (an app is a directory)")
    return app_dir.resolve()


def _read_file(root: Path, path: Path, rel: str, where: str, limit: int) -> bytes:
    """The bytes of the app's file `rel` at `path`, following a symlink only to a
    regular file inside `root`; AppError for anything else or beyond `limit` bytes."""
    try:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            target = Path(os.path.realpath(path))
            if target != root and root not in target.parents:
                raise AppError(
                    f"app directory {where}: {shown(rel)} is a symlink to {shown(target)}, "
                    "outside the app directory; flpg bundles nothing from outside it"
                )
            if _excluded(target.relative_to(root).parts[:-1]):
                raise AppError(
                    f"app directory {where}: {shown(rel)} is a symlink into a directory "
                    "that is not bundled (such as .git or .venv)"
                )
            st = target.stat()
            path = target
        kind = stat.S_IFMT(st.st_mode)
        if kind != stat.S_IFREG:
            raise AppError(
                f"app directory {where}: {shown(rel)} is {_KINDS.get(kind, 'not a regular file')}"
                "; an app holds regular files only (remove it or move it out of the directory)"
            )
        if st.st_size > limit:
            raise _too_big(where)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # swapped since lstat
                raise AppError(f"app directory {where}: {shown(rel)} is not a regular file")
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise AppError(
            f"app directory {where}: {shown(rel)} vanished or is a symlink to nothing"
        ) from None
    except OSError as exc:
        raise AppError(f"app directory {where}: cannot read {shown(rel)}: {exc.strerror}") from None
    if len(data) > limit:
        raise _too_big(where)
    return data


def _excluded(dirs: tuple[str, ...]) -> bool:
    """True if a path under these directory names is left out of bundles."""
    return any(d in _EXCLUDED_DIRS or d.endswith(".egg-info") for d in dirs)


def _too_big(where: str) -> AppError:
    return AppError(
        f"the files of app directory {where} add up to more than "
        f"{MAX_EXTRACTED_BYTES >> 20} MiB (the limit); keep data sets out of the app directory"
    )


def read_app(app_dir: Path) -> AppSpec:
    """The spec of the app in `app_dir`; AppError if the directory or its pyproject is
    missing, unreadable, not a regular UTF-8 file, or malformed."""
    root = _app_root(app_dir)
    where = shown(app_dir)
    pyproject = root / "pyproject.toml"
    if not os.path.lexists(pyproject):
        raise AppError(f"{where} has no pyproject.toml; an app needs one (see `flpg new`)")
    data = _read_file(root, pyproject, "pyproject.toml", where, PYPROJECT_LIMIT)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AppError(
            f"{where}/pyproject.toml is not UTF-8 text (byte {data[exc.start]:#04x} "
            f"at offset {exc.start})"
        ) from None
    return parse_pyproject(text, str(app_dir / "pyproject.toml"))


def _files(root: Path, where: str) -> list[tuple[str, Path]]:
    """`(name in the bundle, path)` of every file to bundle, in a stable order."""

    def refuse(exc: OSError) -> None:
        path = Path(exc.filename or root)
        rel = path.relative_to(root).as_posix() if root in (path, *path.parents) else path
        raise AppError(f"app directory {where}: cannot read directory {shown(rel)}: {exc.strerror}")

    found: list[tuple[str, Path]] = []
    for current, dirs, files in os.walk(root, onerror=refuse):
        base = Path(current)
        keep = []
        for d in sorted(dirs):
            if _excluded((d,)):
                continue
            if (base / d).is_symlink():
                rel = (base / d).relative_to(root).as_posix()
                raise AppError(
                    f"app directory {where}: {shown(rel)} is a symlink to a directory; "
                    "flpg bundles symlinks to regular files inside the app directory only"
                )
            keep.append(d)
        dirs[:] = keep
        for f in sorted(files):
            if Path(f).suffix in _EXCLUDED_SUFFIXES:
                continue
            rel = (base / f).relative_to(root).as_posix()
            problem = member_name_problem(rel)
            if problem:
                raise AppError(f"app directory {where}: the name {shown(repr(rel))} {problem}")
            found.append((rel, base / f))
            if len(found) > MAX_FILES:
                raise AppError(
                    f"app directory {where} holds more than {MAX_FILES} files; "
                    "keep data sets out of the app directory"
                )
    return found


def bundle(app_dir: Path) -> tuple[str, bytes]:
    """Zip the app deterministically; returns `(sha256 hex, bytes)`. AppError for a
    file that cannot be bundled (see the module docstring) or a bundle over the limits."""
    root = _app_root(app_dir)
    where = shown(app_dir)
    buf = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel, path in _files(root, where):
            content = _read_file(root, path, rel, where, MAX_EXTRACTED_BYTES - total)
            total += len(content)
            info = zipfile.ZipInfo(rel, _ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, content)
    data = buf.getvalue()
    if len(data) > MAX_BUNDLE_BYTES:
        raise AppError(
            f"the bundle of {where} is {len(data) >> 20} MiB "
            f"(limit {MAX_BUNDLE_BYTES >> 20} MiB); keep data sets out of the app directory"
        )
    return hashlib.sha256(data).hexdigest(), data


_import_lock = threading.Lock()
_loaded_roots: dict[str, Path] = {}  # top-level module name -> app root it was loaded from


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # app code's __str__ may raise too
        text = "<unprintable>"
    return shown(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, 500)


def load_component(root: Path, ref: str, kind: type) -> Any:
    """Import `module:attribute` from the app at `root` and check it is a `kind`.

    Modules of another app with the same top-level name are unloaded first, so
    two apps that both call their package `app` do not see each other's code.
    No bytecode is written (a cached bundle is verified file by file). Raises
    AppError naming the reference on any import failure, including SystemExit.
    """
    module_name, _, attr = ref.partition(":")
    top = module_name.split(".")[0]
    sys.dont_write_bytecode = True
    with _import_lock:
        previous = _loaded_roots.get(top)
        if previous is not None and previous != root:
            for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
                del sys.modules[name]
        root_str = str(root)
        if root_str in sys.path:
            sys.path.remove(root_str)
        sys.path.insert(0, root_str)
        try:
            module = importlib.import_module(module_name)
        except SystemExit as exc:
            raise AppError(
                f"component {ref!r} exited with code {shown(exc.code, 80)} at import"
            ) from None
        except FlwrUnsupported as exc:  # one line naming the Flower name flpg lacks
            raise AppError(f"component {ref!r} does not import: {shown(exc, 500)}") from None
        except Exception as exc:
            raise AppError(f"component {ref!r} does not import: {_describe(exc)}") from None
        _loaded_roots[top] = root
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except Exception:
            raise AppError(
                f"component {ref!r}: module {module_name} has no attribute {attr!r}"
            ) from None
    if not isinstance(obj, kind):
        raise AppError(f"component {ref!r} is a {type(obj).__name__}, not a {kind.__name__}")
    return obj


def check_components(
    root: Path, spec: AppSpec, *, where: str | None = None, timeout: float | None = None
) -> None:
    """Import both components of the app at `root` in a child process with a time
    limit (see `flpg.bundle.check`); AppError naming the app (and `where`) otherwise."""
    from flpg.bundle.check import run_check

    run_check(root, spec, where=where or str(root), timeout=timeout)

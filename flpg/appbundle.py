"""Apps: reading an app directory, bundling it, and loading a bundle on a worker.

An app is a directory with a `pyproject.toml` naming its components:

    [tool.flpg.app.components]
    serverapp = "mypkg.server_app:app"
    clientapp = "mypkg.client_app:app"

    [tool.flpg.app.config]
    num-server-rounds = 3

A bundle is a deterministic zip of the directory, addressed by its SHA-256, so
the same app is stored once and a worker can verify what it runs.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import shutil
import sys
import tempfile
import threading
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flpg.errors import AppError

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
MAX_BUNDLE_BYTES = 64 << 20


@dataclass(frozen=True)
class AppSpec:
    """What an app's pyproject says."""

    name: str
    serverapp: str
    clientapp: str
    config: dict[str, Any]


def parse_pyproject(text: str, where: str) -> AppSpec:
    """Read the app sections of a pyproject; AppError naming `where` if malformed."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AppError(f"{where} is not valid TOML: {exc}") from None
    app = doc.get("tool", {}).get("flpg", {}).get("app", {})
    components = app.get("components")
    if not isinstance(components, dict):
        raise AppError(
            f"{where} has no [tool.flpg.app.components] table naming serverapp and clientapp"
        )
    refs: dict[str, str] = {}
    for key in ("serverapp", "clientapp"):
        ref = components.get(key)
        if not isinstance(ref, str) or ":" not in ref:
            raise AppError(
                f"{where}: [tool.flpg.app.components] {key} must be 'module:attribute', got {ref!r}"
            )
        refs[key] = ref
    config = app.get("config", {})
    if not isinstance(config, dict):
        raise AppError(f"{where}: [tool.flpg.app.config] must be a table")
    name = doc.get("project", {}).get("name") or Path(where).parent.name
    return AppSpec(
        name=str(name), serverapp=refs["serverapp"], clientapp=refs["clientapp"], config=config
    )


def read_app(app_dir: Path) -> AppSpec:
    """The spec of the app in `app_dir`; AppError if the directory or pyproject is missing."""
    if not app_dir.is_dir():
        raise AppError(f"app directory {app_dir} does not exist")
    pyproject = app_dir / "pyproject.toml"
    if not pyproject.is_file():
        raise AppError(f"{app_dir} has no pyproject.toml; an app needs one (see `flpg new`)")
    return parse_pyproject(pyproject.read_text(), str(pyproject))


def _files(app_dir: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(app_dir):
        dirs[:] = sorted(d for d in dirs if d not in _EXCLUDED_DIRS and not d.endswith(".egg-info"))
        for f in sorted(files):
            path = Path(root, f)
            if path.suffix not in _EXCLUDED_SUFFIXES:
                found.append(path)
    return found


def bundle(app_dir: Path) -> tuple[str, bytes]:
    """Zip the app deterministically; returns `(sha256 hex, bytes)`."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in _files(app_dir):
            info = zipfile.ZipInfo(path.relative_to(app_dir).as_posix(), _ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    data = buf.getvalue()
    if len(data) > MAX_BUNDLE_BYTES:
        raise AppError(
            f"the bundle of {app_dir} is {len(data) >> 20} MiB "
            f"(limit {MAX_BUNDLE_BYTES >> 20} MiB); keep data sets out of the app directory"
        )
    return hashlib.sha256(data).hexdigest(), data


_import_lock = threading.Lock()
_loaded_roots: dict[str, Path] = {}  # top-level module name -> app root it was loaded from


def load_component(root: Path, ref: str, kind: type) -> Any:
    """Import `module:attribute` from the app at `root` and check it is a `kind`.

    Modules of another app with the same top-level name are unloaded first, so
    two apps that both call their package `app` do not see each other's code.
    Raises AppError naming the reference on any import failure.
    """
    module_name, _, attr = ref.partition(":")
    top = module_name.split(".")[0]
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
        except Exception as exc:
            raise AppError(
                f"component {ref!r} does not import: {type(exc).__name__}: {exc}"
            ) from exc
        _loaded_roots[top] = root
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppError(
                f"component {ref!r}: module {module_name} has no attribute {attr!r}"
            ) from None
    if not isinstance(obj, kind):
        raise AppError(f"component {ref!r} is a {type(obj).__name__}, not a {kind.__name__}")
    return obj


def check_components(app_dir: Path, spec: AppSpec) -> None:
    """Import both components of a local app directory (raises AppError)."""
    from flpg.clientapp import ClientApp
    from flpg.serverapp import ServerApp

    root = app_dir.resolve()
    load_component(root, spec.serverapp, ServerApp)
    load_component(root, spec.clientapp, ClientApp)


class BundleCache:
    """Extracted bundles on local disk, one directory per hash, verified on fetch."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, app_hash: str, fetch: Any) -> Path:
        """The extracted app for `app_hash`; `fetch()` returns the bundle bytes if absent.

        Raises AppError if the fetched bytes do not hash to `app_hash`.
        """
        target = self.directory / app_hash
        if target.is_dir():
            return target
        data: bytes = fetch()
        actual = hashlib.sha256(data).hexdigest()
        if actual != app_hash:
            raise AppError(
                f"app bundle {app_hash[:12]} is corrupt (its bytes hash to {actual[:12]})"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{app_hash[:12]}-", dir=self.directory))
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for member in zf.namelist():
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise AppError(f"app bundle {app_hash[:12]} has an unsafe path {member!r}")
                zf.extractall(tmp)
            try:
                tmp.rename(target)
            except OSError:
                if not target.is_dir():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target


def default_cache_dir() -> Path:
    """`$FLPG_CACHE_DIR`, else `$XDG_CACHE_HOME/flpg/apps` (~/.cache/flpg/apps)."""
    explicit = os.environ.get("FLPG_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flpg" / "apps"

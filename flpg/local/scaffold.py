"""`flpg new`: write a working app skeleton from the templates in
`flpg/local/templates/<framework>/`, one directory per framework (`FRAMEWORKS`,
named as Flower's `flwr new --framework` names them, matched case-insensitively).

Template files end in `.tmpl` (so linters and type checkers leave them alone);
`{{name}}` and `{{package}}` in their paths and contents are replaced by the
project name and its Python package name.
"""

from __future__ import annotations

import keyword
import re
import shutil
import sys
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from flpg.errors import AppError

__all__ = ["DEFAULT_FRAMEWORK", "FRAMEWORKS", "create_app", "framework_name", "package_name"]

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_SUFFIX = ".tmpl"
# Packages a generated app imports itself: a package of that name would shadow them.
_RESERVED = {"flpg", "numpy", "sklearn", "torch"}

FRAMEWORKS = ("numpy", "sklearn", "pytorch")
"""The frameworks `flpg new` has a template for: numpy (linear regression on
synthetic data, needs nothing else), sklearn (logistic regression on
scikit-learn's bundled digits), pytorch (an MLP; torch is imported only when the
app runs, so submitting it needs no torch, running it does)."""
DEFAULT_FRAMEWORK = "numpy"


def package_name(name: str) -> str:
    """The Python package of project `name`: lower case, `-` becomes `_` ("my-app" -> "my_app")."""
    return name.lower().replace("-", "_")


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise AppError(
            f"{name!r} is not a valid app name: use letters, digits, '-' and '_', "
            "starting with a letter"
        )
    package = package_name(name)
    if keyword.iskeyword(package):
        raise AppError(
            f"app name {name!r} would make a package named {package!r}, a Python keyword"
        )
    if package in sys.stdlib_module_names or package in _RESERVED:
        raise AppError(
            f"app name {name!r} would make a package {package!r} that shadows the module "
            "of the same name; pick another name"
        )
    return package


def framework_name(framework: str) -> str:
    """The template directory of `framework` ("NumPy" -> "numpy"); AppError if none."""
    name = framework.lower()
    if name not in FRAMEWORKS:
        raise AppError(
            f"no app template for framework {framework!r} (available: {', '.join(FRAMEWORKS)})"
        )
    return name


def _templates(framework: str) -> Traversable:
    return resources.files("flpg.local").joinpath("templates", framework)


def _render(text: str, name: str, package: str) -> str:
    return text.replace("{{name}}", name).replace("{{package}}", package)


def _write_tree(source: Traversable, target: Path, name: str, package: str) -> None:
    for entry in sorted(source.iterdir(), key=lambda e: e.name):
        rendered = _render(entry.name, name, package)
        if entry.is_dir():
            (target / rendered).mkdir()
            _write_tree(entry, target / rendered, name, package)
        elif rendered.endswith(_SUFFIX):
            text = _render(entry.read_text(encoding="utf-8"), name, package)
            (target / rendered.removesuffix(_SUFFIX)).write_text(text, encoding="utf-8")


def create_app(name: str, target_dir: Path, framework: str = DEFAULT_FRAMEWORK) -> Path:
    """Write a new app `name` into `target_dir / name` and return its path.

    The app has a pyproject.toml, a README and a package (`package_name(name)`)
    with a FedAvg ServerApp and a ClientApp in `framework` (one of FRAMEWORKS,
    any case). Raises AppError if the name or framework is invalid or the target
    already exists; never leaves a partial app behind.
    """
    templates = _templates(framework_name(framework))
    package = _check_name(name)
    app_dir = Path(target_dir) / name
    if app_dir.exists() or app_dir.is_symlink():
        raise AppError(f"{app_dir} already exists; pick another name or directory")
    try:
        app_dir.parent.mkdir(parents=True, exist_ok=True)
        app_dir.mkdir()  # exclusive: fails if it appeared meanwhile
    except OSError as exc:
        raise AppError(f"cannot create {app_dir}: {exc.strerror or exc}") from None
    try:
        _write_tree(templates, app_dir, name, package)
    except OSError as exc:
        shutil.rmtree(app_dir, ignore_errors=True)
        raise AppError(f"cannot write {app_dir}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(app_dir, ignore_errors=True)
        raise
    return app_dir

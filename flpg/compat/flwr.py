"""`import flwr...` inside flpg's app processes: Flower's module paths, flpg's code.

`install()` puts a finder first on `sys.meta_path` that answers every import of
`flwr` or `flwr.*` itself, so an app written for Flower's Message API runs with no
edit. Each supported Flower module is an alias of an flpg module (MODULES): it
holds the very objects of that module's `__all__` (`flwr.app.Message is
flpg.app.Message`). Anything else fails at once with one line naming it:

    flwr.app.UserConfig is not supported by flpg (supported: Array, ArrayRecord, ...)
    flwr.server is not supported by flpg (supported: flwr, flwr.app, ...)

(`FlwrUnsupported`, an ImportError; a module also a ModuleNotFoundError.) An
unsupported name raises it on attribute access too, not only in `from ... import`.

The finder is installed only by flpg's own app processes (the ServerApp runner,
the ClientApp process, `flpg run`'s component check), never as a `flwr` package
in the environment. Installed first on `sys.meta_path`, and dropping any `flwr`
modules already imported, it wins over a real Flower installed beside flpg.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence
from typing import Any

__all__ = ["MODULES", "FlwrFinder", "FlwrUnsupported", "FlwrUnsupportedModule", "install"]

MODULES: dict[str, str | None] = {
    "flwr": None,
    "flwr.app": "flpg.app",
    "flwr.clientapp": "flpg.clientapp",
    "flwr.clientapp.mod": "flpg.clientapp.mod",
    "flwr.common": "flpg.common",
    "flwr.common.config": "flpg.common.config",
    "flwr.common.constant": "flpg.common.constant",
    "flwr.common.logger": "flpg.common.logger",
    "flwr.common.typing": "flpg.common.typing",
    "flwr.serverapp": "flpg.serverapp",
    "flwr.serverapp.strategy": "flpg.serverapp.strategy",
    "flwr.serverapp.strategy.strategy_utils": "flpg.serverapp.strategy.strategy_utils",
}
"""Each supported Flower module and the flpg module it aliases (`flwr` itself holds
only its submodules)."""

_ROOT = "flwr"


class FlwrUnsupported(ImportError):
    """A Flower name or module flpg does not provide; the message is one line."""


class FlwrUnsupportedModule(FlwrUnsupported, ModuleNotFoundError):
    """A Flower module flpg does not provide."""


def _children(name: str) -> list[str]:
    """The last parts of the supported modules directly under `name`."""
    prefix = name + "."
    return sorted(
        m[len(prefix) :] for m in MODULES if m.startswith(prefix) and "." not in m[len(prefix) :]
    )


def _unsupported(what: str, supported: Sequence[str]) -> str:
    return f"{what} is not supported by flpg (supported: {', '.join(supported) or 'none yet'})"


class FlwrModule(types.ModuleType):
    """The alias of one flpg module under its Flower name: the target's `__all__`
    names, the supported submodules (imported on first access), nothing else."""

    def __init__(self, name: str, target: types.ModuleType | None) -> None:
        super().__init__(
            name, target.__doc__ if target is not None else "Flower's names, flpg's code."
        )
        exported = [str(n) for n in getattr(target, "__all__", ())]
        for attr in exported:
            setattr(self, attr, getattr(target, attr))
        self.__all__ = sorted({*exported, *_children(name)})
        self.__flpg_target__ = target.__name__ if target is not None else None

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")
        if attr in _children(self.__name__):
            return importlib.import_module(f"{self.__name__}.{attr}")
        raise FlwrUnsupported(
            _unsupported(f"{self.__name__}.{attr}", self.__all__), name=self.__name__
        )


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        target = MODULES[spec.name]
        return FlwrModule(spec.name, importlib.import_module(target) if target else None)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the alias is complete when created."""


class FlwrFinder(importlib.abc.MetaPathFinder):
    """Answers every `flwr` import: an alias for a supported module, FlwrUnsupportedModule
    for any other."""

    _loader = _Loader()

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _ROOT and not fullname.startswith(_ROOT + "."):
            return None
        if fullname not in MODULES:
            raise FlwrUnsupportedModule(_unsupported(fullname, sorted(MODULES)), name=fullname)
        return importlib.machinery.ModuleSpec(fullname, self._loader, is_package=True)


def install() -> None:
    """Make `flwr` imports in this process resolve to flpg (idempotent): the finder goes
    first on `sys.meta_path`, and `flwr` modules imported before are dropped."""
    if any(isinstance(f, FlwrFinder) for f in sys.meta_path):
        return
    for name in [m for m in sys.modules if m == _ROOT or m.startswith(_ROOT + ".")]:
        if not isinstance(sys.modules[name], FlwrModule):
            del sys.modules[name]
    sys.meta_path.insert(0, FlwrFinder())

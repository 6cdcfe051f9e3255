"""`import flwr...` inside flpg's app processes: Flower's module paths, flpg's code.

`install()` puts a finder first on `sys.meta_path` that answers every import of
`flwr` or `flwr.*` itself, so an app written for Flower's Message API runs with no
edit. Every public module path of Flower's Message API (MODULES, from
`flpg.compat.flwr_modules`) imports, as an alias holding the very flpg objects
for the Flower names flpg has (`flwr.app.Message is flpg.app.Message`,
`flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords` where Flower has
it). Anything else fails at once with one line naming it:

    flwr.serverapp.strategy.fedprox.FedProx is not supported by flpg (supported: none yet)
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
import importlib.util
import sys
import types
from collections.abc import Sequence
from typing import Any

from flpg.compat.flwr_modules import FLOWER_MODULES

__all__ = ["MODULES", "FlwrFinder", "FlwrUnsupported", "FlwrUnsupportedModule", "install"]

MODULES = FLOWER_MODULES
"""Each Flower module path flpg serves: `(flpg modules, Flower's names)` (see
`flpg.compat.flwr_modules`)."""

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


def _unsupported_module(name: str) -> str:
    """The one line for a Flower module flpg lacks: it lists the nearest supported
    package above it and the supported modules under that package."""
    parent = name.rpartition(".")[0]
    while parent not in MODULES:
        parent = parent.rpartition(".")[0]
    under = [m for m in sorted(MODULES) if m == parent or m.startswith(parent + ".")]
    return _unsupported(name, under)


def _own_targets(name: str) -> list[str]:
    """The flpg modules of `name` itself: the ones its entry names, else the flpg
    module at the same path if there is one."""
    if name == _ROOT:
        return []
    explicit = MODULES[name][0]
    if explicit is not None:
        return explicit.split()
    same = "flpg" + name[len(_ROOT) :]
    try:
        found = importlib.util.find_spec(same)
    except ImportError:  # a parent is a module, not a package
        found = None
    return [same] if found is not None else []


def _chain(name: str) -> list[str]:
    """Where the Flower names of `name` are looked up: its own flpg modules, then its
    ancestors', nearest first."""
    chain: list[str] = []
    while name:
        chain += [t for t in _own_targets(name) if t not in chain]
        name = name.rpartition(".")[0]
    return chain


def _lookup(chain: Sequence[str], attr: str) -> tuple[bool, object]:
    """`(True, value)` of `attr` in the first module of `chain` that has it."""
    for target in chain:
        module = importlib.import_module(target)
        if hasattr(module, attr):
            return True, getattr(module, attr)
    return False, None


class FlwrModule(types.ModuleType):
    """The alias of one Flower module: the names of Flower's that flpg has (found along
    `_chain`), the flpg module's `__all__` where its entry says `*`, and the
    supported submodules (imported on first access). Nothing else."""

    def __init__(self, name: str) -> None:
        own = [importlib.import_module(t) for t in _own_targets(name)]
        super().__init__(name, own[0].__doc__ if own else "Flower's names, flpg's code.")
        names = MODULES[name][1].split()
        children = _children(name)
        exported: dict[str, object] = {}
        if "*" in names:
            for module in own:
                exported.update(
                    {str(n): getattr(module, n) for n in getattr(module, "__all__", ())}
                )
        chain = _chain(name)
        for attr in names:
            if attr == "*" or attr in exported or attr in children:
                continue
            found, value = _lookup(chain, attr)
            if found:
                exported[attr] = value
        for attr, value in exported.items():
            setattr(self, attr, value)
        self.__all__ = sorted({*exported, *(n for n in names if n in children)})
        self.__flpg_target__ = own[0].__name__ if own else None

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
        return FlwrModule(spec.name)

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
            raise FlwrUnsupportedModule(_unsupported_module(fullname), name=fullname)
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

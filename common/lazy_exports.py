"""Lazy package exports (PEP 562): a package's public names import their submodule on first use, not with it.

Why: importing ``common.privacy.noise_seed`` or ``server.report.run_folder`` runs the package's ``__init__``
first; one that imported every submodule eagerly pulled Opacus, scikit-learn and matplotlib (seconds) into
processes that need none of them: the ``fedmammo`` command, the simulation's ServerApp.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for ``package``, whose public names live in submodules.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    exports : mapping
        Submodule (full dotted name) to the public names it defines.

    Returns
    -------
    tuple
        ``(__all__, __getattr__, __dir__)``, to assign at the package's top level. ``__getattr__`` imports the
        submodule that defines a name when it is first asked for (``from package import name`` included);
        any other name raises `AttributeError` as a module without it would.

    Raises
    ------
    ValueError
        If two submodules claim the same name.
    """
    where: dict[str, str] = {}
    for module, names in exports.items():
        for name in names:
            if where.setdefault(name, module) != module:
                raise ValueError(f"{package}: {name!r} is exported by both {where[name]} and {module}")

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(set(where) | set(vars(sys.modules[package])))

    clashes = {name for name, module in where.items() if module == f"{package}.{name}"}
    if clashes:  # e.g. server.report.class_results, both a function and the module defining it
        module = sys.modules[package]
        module.__class__ = _ExportsOverSubmodules
        module._exports_over_submodules = frozenset(clashes)  # type: ignore[attr-defined]
    return sorted(where), __getattr__, __dir__


class _ExportsOverSubmodules(types.ModuleType):
    """A package one of whose public names is also the name of the submodule that defines it.

    Importing a submodule sets it as an attribute of its package, which would hide the public object of the same
    name; an eager ``from package.name import name`` in ``__init__`` replaced it again. Here the public object
    (the submodule's attribute of that name) is stored instead, whenever the import system sets the submodule.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        clashes = self.__dict__.get("_exports_over_submodules", frozenset())
        if name in clashes and isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)

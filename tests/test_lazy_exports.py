"""Lazy package exports: names resolve on first use, and the launcher's imports stay free of the heavy libraries."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from common.lazy_exports import lazy_exports

HEAVY = ("torch", "torchvision", "opacus", "sklearn", "matplotlib", "pydicom", "skimage", "scipy")
"""Libraries the launcher never needs; each takes 0.1 to 1.5 s to import."""


def test_a_name_imports_its_submodule_on_first_use() -> None:
    # Prepare: a package whose export lives in a stdlib module
    package = types.ModuleType("lazy_pkg")
    package.__all__, package.__getattr__, package.__dir__ = lazy_exports("lazy_pkg", {"json": ("dumps", "loads")})
    sys.modules["lazy_pkg"] = package
    try:
        # Execute / Assert
        from lazy_pkg import dumps  # type: ignore[import-not-found]

        assert dumps({"a": 1}) == '{"a": 1}'
        assert package.__all__ == ["dumps", "loads"] and "loads" in dir(package)
        with pytest.raises(AttributeError, match="module 'lazy_pkg' has no attribute 'missing'"):
            package.missing  # noqa: B018
    finally:
        del sys.modules["lazy_pkg"]


def test_a_name_claimed_by_two_submodules_is_refused() -> None:
    with pytest.raises(ValueError, match="'dumps' is exported by both json and pickle"):
        lazy_exports("pkg", {"json": ("dumps",), "pickle": ("dumps",)})


@pytest.mark.parametrize("package", ["common.privacy", "common.data", "common.metrics", "server.report",
                                     "simulations.phantoms"])  # fmt: skip
def test_every_public_name_of_a_lazy_package_resolves_to_its_object_even_after_its_submodule_is_imported(
    package: str,
) -> None:
    # Prepare: import every submodule (the import system then sets each one on the package, by its name)
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        importlib.import_module(f"{package}.{info.name}")
    # Execute / Assert: server.report.class_results is the function, as with an eager __init__, not its module
    wrong = [name for name in module.__all__ if getattr(module, name, None) is None
             or isinstance(getattr(module, name), types.ModuleType)]  # fmt: skip
    assert wrong == []


def test_starting_a_simulation_imports_no_heavy_library(tmp_path: Path) -> None:
    # Prepare: `fedmammo simulate` in a fresh interpreter, stopped where it would start the SuperLink (the phantom
    # sites taken as already generated, as on every run after the first)
    code = f"""
import sys
import simulations.launcher as launcher
import simulations.phantoms.generate as generate

class Stop(Exception):
    pass

def stop(*args, **kwargs):
    raise Stop

launcher.run_simulation = stop
generate.generate_configured_federation = lambda *args, **kwargs: []
from simulations.cli import main
try:
    main(["simulate", "output.run_dir={tmp_path / "run"}"])
except Stop:
    print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    # Execute
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # Assert: each of these costs 0.1 to 1.5 s of every run's start, before Flower has even been started
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout

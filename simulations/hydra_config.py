"""Composes the Hydra config groups in simulations/conf into the typed AppConfig plus launcher settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.config import AppConfig, load_config
from common.errors import ConfigError
from server.report.run_folder import timestamped_run_dir
from simulations.launcher import SimulationResources

__all__ = ["CONF_DIR", "compose_simulation"]

CONF_DIR = Path(__file__).resolve().parent / "conf"


def compose_simulation(overrides: Sequence[str] = ()) -> tuple[AppConfig, SimulationResources]:
    """Compose ``simulations/conf`` with Hydra ``overrides`` (``model=resnet50``, ``privacy.delta=1e-5``).

    An empty ``output.run_dir`` becomes ``runs/<timestamp>`` under the current folder (the launcher claims
    it, or ``<timestamp>-N`` when another run took that second).

    Raises
    ------
    ConfigError
        For an unknown group option or key, or a value the schema rejects, in the ``simulation`` section too
        (the message says which).
    """
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            composed = compose(config_name="config", overrides=list(overrides))
        values: dict[str, Any] = OmegaConf.to_container(composed, resolve=True)  # type: ignore[assignment]
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"cannot compose the simulation config with overrides {list(overrides)}: {exc}") from exc
    launcher = values.pop("simulation", {}) or {}
    if not values.get("output", {}).get("run_dir"):
        values.setdefault("output", {})["run_dir"] = str(timestamped_run_dir(Path("runs")))
    config = load_config(values)
    return config, _resources(launcher)


def _resources(section: object) -> SimulationResources:
    """The ``simulation`` section as `SimulationResources`: known keys only, ints as ints, floats finite.

    Why strict: ``int("2.5")``-style coercion would silently change what the user asked for, and Ray only
    rejects bad resources after the SuperLink has started.
    """
    if not isinstance(section, Mapping):
        raise ConfigError(f"config key 'simulation' must be a table of keys, got {section!r}")
    known = {f.name for f in dataclasses.fields(SimulationResources)}
    unknown = sorted(set(section) - known)
    if unknown:
        names = ", ".join(f"'simulation.{key}'" for key in unknown)
        raise ConfigError(f"unknown config key(s) {names}; known keys here: {sorted(known)}")
    gpus = section.get("gpus_per_site", 0.0)
    if isinstance(gpus, int) and not isinstance(gpus, bool):
        gpus = float(gpus)
    return SimulationResources(cpus_per_site=section.get("cpus_per_site", 2), gpus_per_site=gpus)

"""Composes the Hydra config groups in simulations/conf into the typed AppConfig plus launcher settings."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.config import AppConfig, load_config
from common.errors import ConfigError
from simulations.launcher import SimulationResources

__all__ = ["CONF_DIR", "compose_simulation"]

CONF_DIR = Path(__file__).resolve().parent / "conf"


def compose_simulation(overrides: Sequence[str] = ()) -> tuple[AppConfig, SimulationResources]:
    """Compose ``simulations/conf`` with Hydra ``overrides`` (``model=resnet50``, ``privacy.delta=1e-5``).

    An empty ``output.run_dir`` becomes ``runs/<timestamp>`` under the current folder.

    Raises
    ------
    ConfigError
        For an unknown group option or key, or a value the schema rejects (the message says which).
    """
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            composed = compose(config_name="config", overrides=list(overrides))
        values: dict[str, Any] = OmegaConf.to_container(composed, resolve=True)  # type: ignore[assignment]
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"cannot compose the simulation config with overrides {list(overrides)}: {exc}") from exc
    launcher = values.pop("simulation", {}) or {}
    if not values.get("output", {}).get("run_dir"):
        values.setdefault("output", {})["run_dir"] = str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    config = load_config(values)
    try:
        resources = SimulationResources(
            cpus_per_site=int(launcher.get("cpus_per_site", 2)), gpus_per_site=float(launcher.get("gpus_per_site", 0.0))
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config section 'simulation' is invalid: {exc}") from exc
    return config, resources

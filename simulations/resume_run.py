"""``fedmammo simulate resume=RUN_DIR``: a stopped run's own config, read back from its folder, to continue it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from common.config import AppConfig, load_config
from common.config.schema import flatten
from common.errors import ConfigError
from server.report import RunDirectory
from simulations.launcher import SimulationResources

__all__ = ["RESUME_ARGUMENT", "resumed_simulation", "split_resume"]

RESUME_ARGUMENT = "resume"
"""``resume=RUN_DIR`` among the overrides: continue the run in that folder instead of composing a new one."""


def split_resume(overrides: Sequence[str]) -> tuple[Path | None, list[str]]:
    """The folder of ``resume=RUN_DIR`` (None without one) and the other overrides.

    Raises
    ------
    ConfigError
        If ``resume=`` is given twice or without a folder.
    """
    given = [item for item in overrides if item.split("=", 1)[0] == RESUME_ARGUMENT]
    rest = [item for item in overrides if item not in given]
    if not given:
        return None, rest
    folders = [item.split("=", 1)[1] if "=" in item else "" for item in given]
    if len(given) > 1 or not folders[0]:
        raise ConfigError(f"'{RESUME_ARGUMENT}=' must name one run folder (resume=runs/<timestamp>), got {given}")
    return Path(folders[0]).expanduser().resolve(), rest


def resumed_simulation(folder: Path, overrides: Sequence[str] = ()) -> tuple[AppConfig, SimulationResources]:
    """The config of the run in ``folder`` (its ``config.yaml``) set to continue there, and the launcher's resources.

    ``overrides`` are ``key=value`` for the keys a resumed run may change (`server.resume.RESUMABLE_KEYS`: e.g.
    ``strategy.num_rounds=20`` to run on) and ``simulation.*`` (resources, which do not change results).

    Raises
    ------
    ConfigError
        If the folder holds no run config, or an override names another key (it would make another run).
    """
    from server.resume import RESUMABLE_KEYS  # torch (checkpoints): not on every `fedmammo simulate`'s start
    from simulations.hydra_config import compose_simulation  # Hydra: only for the simulation section's defaults

    if not folder.is_dir():
        raise ConfigError(f"'{RESUME_ARGUMENT}={folder}': no such folder; name the folder of the run to continue")
    stored = RunDirectory(folder, create=False).read_config()
    if stored is None:
        raise ConfigError(f"'{RESUME_ARGUMENT}={folder}': the folder holds no config.yaml, so it is no run folder")
    values = flatten(stored)
    launcher = [item for item in overrides if item.startswith("simulation.")]
    for item in (item for item in overrides if item not in launcher):
        key, _, value = item.partition("=")
        if key not in RESUMABLE_KEYS - {"output.run_dir", "output.resume_from"} or not value:
            raise ConfigError(
                f"'{item}' cannot be given with '{RESUME_ARGUMENT}=': a resumed run keeps its own config, except "
                f"key=value for {sorted(RESUMABLE_KEYS - {'output.run_dir', 'output.resume_from'})} and simulation.*"
            )
        values[key] = yaml.safe_load(value)
    values["output.run_dir"] = values["output.resume_from"] = str(folder)
    _, resources = compose_simulation(launcher)
    return load_config(values), resources

"""Runs the Flower app as a local simulation through `flwr run`, on a private SuperLink this process owns."""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path

from common.config import AppConfig
from common.errors import ConfigError, FedMammoError
from common.file_log import FILE_LOG_ENV
from common.privacy.noise_seed import SIMULATION_NOISE_SEED_ENV
from server.report.run_folder import CLAIMED_RUN_DIR_ENV, claim_run_dir
from simulations.processes import ChildProcesses, SimulationInterrupted, finish_despite_signal, stop_on_signals
from simulations.run_outcome import failure_message, parse_run_id, read_run_status

__all__ = [
    "APP_DIR",
    "SimulationError",
    "SimulationInterrupted",
    "SimulationResources",
    "run_simulation",
    "simulated_nodes",
    "write_run_config",
]

logger = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parents[1]
"""The Flower app (the folder holding pyproject.toml's [tool.flwr.app])."""

_CONNECTION = "fedmammo-local"
_STARTUP_TIMEOUT_S = 60.0


class SimulationError(FedMammoError, RuntimeError):
    """The simulation did not finish; the message names the log to read."""


@dataclass(frozen=True)
class SimulationResources:
    """Ray resources: how many CPUs (and GPUs) each simulated site may use at once."""

    cpus_per_site: int = 2
    gpus_per_site: float = 0.0

    def __post_init__(self) -> None:
        """Refuse what Ray would only reject (or hang on) after the SuperLink started, naming the config key."""
        cpus, gpus = self.cpus_per_site, self.gpus_per_site
        if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
            raise ConfigError(f"config key 'simulation.cpus_per_site' = {cpus!r} is invalid: it must be an int >= 1")
        if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not math.isfinite(gpus) or gpus < 0:
            raise ConfigError(
                f"config key 'simulation.gpus_per_site' = {gpus!r} is invalid: it must be a finite number >= 0"
            )


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def write_run_config(config: AppConfig, path: Path) -> Path:
    """Write the config as the run-config TOML that ``flwr run --run-config`` reads (dotted keys)."""
    lines = [f'"{key}" = {_toml_value(value)}' for key, value in config.to_flat().items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _executable(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SimulationError(f"`{name}` was not found next to {sys.executable} or on PATH; install flwr[simulation]")
    return found


def _healthy(port: int) -> bool:
    try:
        with closing(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0)) as response:
            return 200 <= response.status < 300
    except OSError:
        return False


def _local_superlink(
    flwr_home: Path, log_path: Path, env: dict[str, str], children: ChildProcesses
) -> tuple[subprocess.Popen, int]:
    """Start a simulation SuperLink on free loopback ports as one of ``children`` (which stop it), without waiting
    for it (`_wait_healthy`); return the process and its HTTP port.

    Runtime dependency installation is disabled: the app runs in this environment, which already has
    torch (Flower would otherwise `uv sync` the app's dependencies into a fresh env for every run).
    """
    http_port, fleet_port, control_port = _free_ports(3)
    command = [
        _executable("flower-superlink"),
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(http_port),
        "--fleet-api-address",
        f"127.0.0.1:{fleet_port}",
        "--control-api-address",
        f"127.0.0.1:{control_port}",
        "--database",
        str(flwr_home / "state.db"),
    ]
    with log_path.open("ab") as log:
        process = children.start(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=flwr_home)
    return process, http_port


def _wait_healthy(process: subprocess.Popen, port: int, log_path: Path) -> None:
    """Return once the SuperLink answers on ``port``; raise if it exits or stays silent past the start-up limit."""
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while not _healthy(port):
        if process.poll() is not None:
            raise SimulationError(f"flower-superlink exited with code {process.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            raise SimulationError(f"flower-superlink did not start within {_STARTUP_TIMEOUT_S:.0f}s; see {log_path}")
        time.sleep(0.1)


def run_simulation(
    config: AppConfig,
    run_dir: Path,
    *,
    resources: SimulationResources | None = None,
    on_output: Callable[[str], None] | None = None,
    claimed: bool = False,
) -> Path:
    """Run ``config`` as a local Flower simulation with one SuperNode per site; return the run directory.

    ``run_dir`` is claimed first (`claim_run_dir`: a folder holding anything is never reused, the next free
    ``<run_dir>-N`` is taken), unless ``claimed`` says `claim_run_dir` already returned it, or the run continues a
    stopped one (``output.resume_from``, that run's folder: `simulations.resume`). The ServerApp
    writes into the returned folder: ``config.output.run_dir`` is overridden to it, and `CLAIMED_RUN_DIR_ENV`
    in the SuperLink's environment tells the ServerApp it was claimed for this run (otherwise it would claim
    another, as it does under a deployed SuperLink). Flower's log goes to ``flower.log`` there; each of its
    lines is also passed to ``on_output``.

    Every process this starts (the SuperLink, and through it the SuperExec, the apps and Ray) runs in a
    session of its own and is stopped, with the temporary Flower home removed, however the call ends.

    Raises
    ------
    SimulationError
        If the federation did not finish: `flwr run` failed, or Flower reports the run failed or stopped.
    SimulationInterrupted
        On SIGINT or SIGTERM (in the main thread), after everything was stopped.
    """
    if not (APP_DIR / "pyproject.toml").is_file():
        raise ConfigError(f"the Flower app's pyproject.toml was not found in {APP_DIR}; install fedmammo from a clone")
    resources = resources or SimulationResources()
    resuming = bool(config.output.resume_from)  # the stopped run's own folder: no new one is claimed
    run_dir = Path(run_dir).expanduser().resolve() if claimed or resuming else claim_run_dir(run_dir)
    log_path = run_dir / "flower.log"
    result_file = "study.json" if config.study.enabled else "summary.json"
    if resuming:  # the stopped run's result, if it had one, must not pass for this run's
        (run_dir / result_file).unlink(missing_ok=True)
    run_ids: list[int] = []
    on_output = _recording_run_id(on_output, run_ids)
    with stop_on_signals(), ExitStack() as stack:
        flwr_home = Path(tempfile.mkdtemp(prefix="fedmammo-flwr-"))
        stack.callback(finish_despite_signal, lambda: shutil.rmtree(flwr_home, ignore_errors=True))
        children = stack.enter_context(ChildProcesses())  # stopped before the Flower home is removed
        env = {**os.environ, "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(APP_DIR), env.get("PYTHONPATH", "")) if p)
        env[SIMULATION_NOISE_SEED_ENV] = str(config.seed)  # reproducible central-DP noise, in simulation only
        env[FILE_LOG_ENV] = "off"  # flower.log (in the run folder) gets the sites' output: no file names in it
        env[CLAIMED_RUN_DIR_ENV] = str(run_dir)  # the ServerApp writes here rather than claim a folder of its own
        # The SuperLink starts flower-superexec (and that the app processes) by name, from PATH.
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        superlink, port = _local_superlink(flwr_home, run_dir / "superlink.log", env, children)
        from simulations.app_bundle import staged_app  # imports flwr: here, while the SuperLink starts

        app = staged_app(APP_DIR, flwr_home / "app")  # `flwr run` bundles it in ms, not walking .venv and runs/
        _wait_healthy(superlink, port, run_dir / "superlink.log")
        (flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{_CONNECTION}"\n\n[superlink.{_CONNECTION}]\n'
            f'address = "127.0.0.1:{port}"\ninsecure = true\n',
            encoding="utf-8",
        )
        run_config = write_run_config(_with_run_dir(config, run_dir), run_dir / "run_config.toml")
        federation = (
            f"num-supernodes={simulated_nodes(config)} "
            f"client-resources-num-cpus={resources.cpus_per_site} "
            f"client-resources-num-gpus={resources.gpus_per_site}"
        )
        command = [
            _executable("flwr"), "run", str(app), _CONNECTION,
            "--run-config", str(run_config), "--federation-config", federation, "--stream",
        ]  # fmt: skip
        with log_path.open("a" if resuming else "w", encoding="utf-8") as log:  # a resumed run's log goes on
            process = children.start(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=run_dir, text=True, bufsize=1
            )
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                log.flush()
                if on_output is not None:
                    on_output(line.rstrip("\n"))
            code = process.wait()
        run_id = run_ids[0] if run_ids else None
        ended = run_id is not None and code == 0  # Flower's status says how; `flwr run`'s exit code cannot
        status = read_run_status(command[0], _CONNECTION, run_id, env=env, cwd=run_dir) if ended else None
    written = (run_dir / result_file).is_file()  # the folder was empty when claimed: no stale copy
    problem = failure_message(code, run_id, status, summary_written=written, log_path=log_path, result_file=result_file)
    if problem:
        raise SimulationError(problem)
    return run_dir


def simulated_nodes(config: AppConfig) -> int:
    """One SuperNode per site, plus, in a study with a centralized model, the node that pools their data
    (`client.site`: the partition after the last site)."""
    pooled = config.study.enabled and "centralized" in config.study.arm_names
    return config.federation.num_sites + int(pooled)


def _recording_run_id(on_output: Callable[[str], None] | None, run_ids: list[int]) -> Callable[[str], None]:
    """``on_output`` that also keeps the run id `flwr run` prints, for asking Flower how the run ended."""

    def record(line: str) -> None:
        if not run_ids and (run_id := parse_run_id(line)) is not None:
            run_ids.append(run_id)
        if on_output is not None:
            on_output(line)

    return record


def _with_run_dir(config: AppConfig, run_dir: Path) -> AppConfig:
    from dataclasses import replace

    return replace(config, output=replace(config.output, run_dir=str(run_dir)))

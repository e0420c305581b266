"""A real flwr 1.41 SuperLink with TLS and SuperNode authentication on loopback, for the integration tests.

`superlink_fixture` starts one SuperLink with the certificates `deploy.pki` writes, ``--enable-supernode-auth`` and
a database; `SuperLink.supernode` starts SuperNodes against it. Every process runs in a session of its own
(`ChildProcesses`) and is stopped with everything it started, however the test ends; each wait has a deadline.
Test modules bind the fixtures they use by name (``superlink = superlink_fixture``), so each module gets its own
SuperLink and its node registrations do not leak into another module.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.pki import create_node_key, main
from simulations.processes import ChildProcesses

BIN = Path(sys.executable).parent
CONNECTION = "hospital-test"
STARTUP_TIMEOUT_S = 45.0
CLI_TIMEOUT_S = 60.0
REJECTED_WITHIN_S = 40.0  # a refused SuperNode (max 1 retry, 5 s wait) must have exited by then
STAYS_UP_S = 8.0


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


needs_flower = pytest.mark.skipif(
    not (BIN / "flower-superlink").is_file(), reason=f"flower-superlink is not installed in {BIN}"
)


@dataclass(frozen=True)
class SuperLink:
    port: int
    pki: Path
    home: Path
    env: dict[str, str]
    log: Path
    children: ChildProcesses

    def flwr(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the `flwr` CLI against this SuperLink's connection; fail the test on a timeout."""
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )

    def supernode(
        self, name: str, *extra: str, runtime_port: int | None = None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """Start a SuperNode (its own runtime API port, a free one unless given), output to ``<name>.log``."""
        log = self.home / f"{name}.log"
        command = [
            str(BIN / "flower-supernode"),
            "--superlink", f"127.0.0.1:{self.port}",
            "--port", str(runtime_port or free_port()),
            *extra,
        ]  # fmt: skip
        with log.open("wb") as out:
            process = self.children.start(command, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.home)
        return process, log


def _serves_health(port: int, context: ssl.SSLContext) -> bool:
    try:
        url = f"https://127.0.0.1:{port}/health"
        with closing(urllib.request.urlopen(url, timeout=1.0, context=context)) as response:
            return 200 <= response.status < 300
    except OSError:
        return False


@pytest.fixture(scope="module")
def superlink_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuperLink]:
    """A SuperLink on a free loopback port with `deploy.pki`'s certificates, node auth and a database."""
    home = tmp_path_factory.mktemp("flwr_home")
    pki = home / "pki"
    main(["ca", "--out", str(pki)])
    main(["server", "--out", str(pki), "--host", "coordinator.test"])  # 127.0.0.1 is added by deploy.pki
    port = free_port()
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
        "PATH": os.pathsep.join((str(BIN), os.environ.get("PATH", ""))),  # it starts flower-superexec by name
    }
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{(pki / "ca.crt").resolve()}"\n',
        encoding="utf-8",
    )
    command = [
        str(BIN / "flower-superlink"),
        "--ssl-ca-certfile", str(pki / "ca.crt"),
        "--ssl-certfile", str(pki / "server.pem"),
        "--ssl-keyfile", str(pki / "server.key"),
        "--enable-supernode-auth",
        "--database", str(home / "state.db"),
        "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip
    log = home / "superlink.log"
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    with ChildProcesses() as children:
        with log.open("wb") as out:
            process = children.start(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=home)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _serves_health(port, context):
            if process.poll() is not None:
                pytest.fail(f"flower-superlink exited with {process.returncode}:\n{log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                pytest.fail(f"flower-superlink did not serve within {STARTUP_TIMEOUT_S:.0f} s:\n{log.read_text()}")
            time.sleep(0.3)
        yield SuperLink(port, pki, home, env, log, children)


def exit_within(process: subprocess.Popen[bytes], log: Path, seconds: float) -> tuple[int, str]:
    try:
        code = process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the SuperNode was still running after {seconds:.0f} s:\n{log.read_text(errors='replace')}")
    return code, log.read_text(errors="replace")


def node_statuses(link: SuperLink) -> dict[str, str]:
    result = link.flwr("supernode", "ls", CONNECTION, "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    listing = json.loads(result.stdout)
    assert listing["success"] is True
    return {node["node-id"]: node["status"] for node in listing["nodes"]}


def register(link: SuperLink, public_key: Path) -> str:
    """`flwr supernode register`; the new node id."""
    registered = link.flwr("supernode", "register", str(public_key), CONNECTION, "--format", "json")
    assert registered.returncode == 0, registered.stdout + registered.stderr
    return str(json.loads(registered.stdout)["node-id"])


def wait_for_status(link: SuperLink, node_id: str, status: str, log: Path, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (now := node_statuses(link).get(node_id)) != status:
        if time.monotonic() > deadline:
            pytest.fail(f"node {node_id} is {now!r}, not {status!r}, after {timeout_s:.0f} s:\n{log.read_text()}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def three_hospitals_fixture(superlink: SuperLink, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three registered SuperNodes, each serving a tiny phantom site from its own manifest (node config)."""
    from simulations.phantoms import generate_federation

    for node_id, status in node_statuses(superlink).items():  # other tests' nodes would join (and fail) the run
        if status != "unregistered":
            assert superlink.flwr("supernode", "unregister", node_id, CONNECTION).returncode == 0
    data = tmp_path_factory.mktemp("hospitals")
    manifests = generate_federation(data, num_sites=3, images_per_site=24, seed=5, matrix_scale=0.25)
    names = []
    for index, manifest in enumerate(manifests):
        name = f"hospital-{'abc'[index]}"
        keys = data / "keys"  # its own folder: other tests of this module write keys of their own
        create_node_key(keys, name)
        node_id = register(superlink, keys / f"{name}.pub")
        config = f'manifest="{manifest}" site-name="{name}" cache-dir="{data / "cache" / name}"'
        _, log = superlink.supernode(
            name,
            "--root-certificates", str(superlink.pki / "ca.crt"),
            "--auth-supernode-private-key", str(keys / name),
            "--node-config", config,
        )  # fmt: skip
        wait_for_status(superlink, node_id, "online", log)
        names.append(name)
    return names


def run_config(path: Path, run_dir: Path, overrides: dict[str, object] | None = None) -> Path:
    from common.config import load_config
    from simulations.launcher import write_run_config

    values = {"federation.num_sites": 3, "federation.synthetic": False, "data.image_size": 32,
              "training.batch_size": 8, "strategy.num_rounds": 2, "strategy.min_nodes": 3,
              "output.run_dir": str(run_dir), **(overrides or {})}  # fmt: skip
    return write_run_config(load_config(values), path)

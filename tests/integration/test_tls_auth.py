"""`deploy.pki` key material, and a real TLS SuperLink with SuperNode authentication on loopback (flwr 1.41).

The unit tests check the files themselves. The integration tests start one SuperLink with the certificates
`deploy.pki` wrote, ``--enable-supernode-auth`` and a database, then SuperNodes that should get in (a registered
key) or be turned away (an unregistered key, no TLS, TLS without the private CA). Every process runs in a
session of its own (`ChildProcesses`) and is stopped with everything it started, however the test ends; each
wait has a deadline.
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
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from deploy.pki import PkiError, create_ca, create_node_key, create_server_certificate, main
from simulations.processes import ChildProcesses

BIN = Path(sys.executable).parent
CONNECTION = "hospital-test"
STARTUP_TIMEOUT_S = 45.0
CLI_TIMEOUT_S = 60.0
REJECTED_WITHIN_S = 40.0  # a refused SuperNode (max 1 retry, 5 s wait) must have exited by then
STAYS_UP_S = 8.0


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- deploy.pki: the files -------------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    out = tmp_path / "pki"
    create_ca(out)
    create_server_certificate(out, hosts=["coordinator.example"], ips=["10.0.0.5"])
    return out


def test_server_certificate_names_loopback_and_given_names_and_verifies_against_ca(pki: Path) -> None:
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((pki / "server.pem").read_bytes())

    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.0.0.5"}
    assert set(san.get_values_for_type(x509.DNSName)) == {"coordinator.example", "localhost"}
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer does not match

    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp384r1"

    # The same chain as a TLS client sees it: Python's ssl (OpenSSL) accepts it for 127.0.0.1.
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(pki / "server.pem", pki / "server.key")  # the key belongs to the certificate

    for name in ("ca.key", "server.key"):
        assert (pki / name).stat().st_mode & 0o777 == 0o600, name


def test_node_key_is_an_openssh_ecdsa_p384_pair(tmp_path: Path) -> None:
    private_path, public_path = create_node_key(tmp_path, "hospital-a")

    assert private_path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    private = serialization.load_ssh_private_key(private_path.read_bytes(), password=None)
    public = serialization.load_ssh_public_key(public_path.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.public_numbers() == private.public_key().public_numbers()
    assert public_path.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert private_path.stat().st_mode & 0o777 == 0o600


def test_existing_files_are_not_overwritten_without_force(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (pki / "ca.key").read_bytes()
    with pytest.raises(PkiError, match=r"ca\.key"):
        create_ca(pki)
    assert main(["server", "--out", str(pki)]) == 2
    assert "server.pem" in capsys.readouterr().err
    create_node_key(pki, "hospital-a")
    with pytest.raises(PkiError, match="hospital-a"):
        create_node_key(pki, "hospital-a")
    assert (pki / "ca.key").read_bytes() == before

    assert main(["ca", "--out", str(pki), "--force"]) == 0
    assert (pki / "ca.key").read_bytes() != before
    assert (pki / "ca.key").stat().st_mode & 0o777 == 0o600


def test_invalid_arguments_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=r"ca\.crt not found"):
        create_server_certificate(tmp_path)
    create_ca(tmp_path)
    with pytest.raises(PkiError, match="not an IP address"):
        create_server_certificate(tmp_path, ips=["10.0.0.999"])
    with pytest.raises(PkiError, match="not a valid DNS name"):
        create_server_certificate(tmp_path, hosts=["bad host"])
    with pytest.raises(PkiError, match="--name"):
        create_node_key(tmp_path, "../escape")
    assert not (tmp_path / "server.pem").exists()


# --- a real SuperLink with TLS and SuperNode authentication ------------------------------------------------------

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

    def supernode(self, name: str, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
        """Start a SuperNode (its own runtime API port), output to ``<name>.log``."""
        log = self.home / f"{name}.log"
        command = [
            str(BIN / "flower-supernode"),
            "--superlink", f"127.0.0.1:{self.port}",
            "--port", str(_free_port()),
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
def superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuperLink]:
    """A SuperLink on a free loopback port with `deploy.pki`'s certificates, node auth and a database."""
    home = tmp_path_factory.mktemp("flwr_home")
    pki = home / "pki"
    main(["ca", "--out", str(pki)])
    main(["server", "--out", str(pki), "--host", "coordinator.test"])  # 127.0.0.1 is added by deploy.pki
    port = _free_port()
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


def _exit_within(process: subprocess.Popen[bytes], log: Path, seconds: float) -> tuple[int, str]:
    try:
        code = process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the SuperNode was still running after {seconds:.0f} s:\n{log.read_text(errors='replace')}")
    return code, log.read_text(errors="replace")


def _node_statuses(link: SuperLink) -> dict[str, str]:
    result = link.flwr("supernode", "ls", CONNECTION, "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    listing = json.loads(result.stdout)
    assert listing["success"] is True
    return {node["node-id"]: node["status"] for node in listing["nodes"]}


@needs_flower
def test_registered_node_connects_and_stays_up(superlink: SuperLink) -> None:
    private_key, public_key = create_node_key(superlink.home / "keys", "hospital-a")
    node_id = _register(superlink, public_key)
    assert _node_statuses(superlink).get(node_id) == "registered"

    process, log = superlink.supernode(
        "hospital-a",
        "--root-certificates", str(superlink.pki / "ca.crt"),
        "--auth-supernode-private-key", str(private_key),
        "--node-config", 'site-name="hospital-a"',
        "--max-retries", "3",
    )  # fmt: skip
    deadline = time.monotonic() + STAYS_UP_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}:\n{log.read_text(errors='replace')}"
        time.sleep(0.2)
    status = _node_statuses(superlink).get(node_id)
    assert status == "online", f"node {node_id} is {status!r}:\n{log.read_text(errors='replace')}"
    assert f"SuperNode ID: {node_id}" in log.read_text(errors="replace")
    # The SuperLink's own SuperExec dials https://127.0.0.1 and verifies this certificate: no failure logged.
    assert "CERTIFICATE_VERIFY_FAILED" not in superlink.log.read_text(errors="replace")


@needs_flower
def test_unregistered_key_is_refused_at_once(superlink: SuperLink) -> None:
    private_key, _ = create_node_key(superlink.home / "keys", "stranger")
    process, log = superlink.supernode(
        "stranger",
        "--root-certificates", str(superlink.pki / "ca.crt"),
        "--auth-supernode-private-key", str(private_key),
        "--max-retries", "1", "--max-wait-time", "5",
    )  # fmt: skip
    code, output = _exit_within(process, log, REJECTED_WITHIN_S)
    # flwr logs its own exit code (305) but the process exits with 1 (`flwr_exit` maps every error code to 1).
    assert code == 1, output
    assert "Exit Code: 305" in output and "Failed to activate SuperNode" in output, output


@needs_flower
def test_node_without_tls_cannot_connect(superlink: SuperLink) -> None:
    # flwr refuses an auth key on an insecure SuperNode (exit 303), so this node has none: it fails on TLS alone.
    process, log = superlink.supernode("plaintext", "--insecure", "--max-retries", "1", "--max-wait-time", "5")
    code, output = _exit_within(process, log, REJECTED_WITHIN_S)
    assert code == 1, output
    assert "Exit Code: 305" in output and "Server disconnected without sending a response" in output, output


@needs_flower
def test_node_without_the_private_ca_cannot_connect(superlink: SuperLink) -> None:
    # A registered key, so that only TLS can be the reason; no --root-certificates: the system trust store.
    private_key, public_key = create_node_key(superlink.home / "keys", "no-ca")
    _register(superlink, public_key)
    process, log = superlink.supernode(
        "no-ca", "--auth-supernode-private-key", str(private_key), "--max-retries", "1", "--max-wait-time", "5"
    )
    code, output = _exit_within(process, log, REJECTED_WITHIN_S)
    assert code == 1, output
    assert "Exit Code: 305" in output and "CERTIFICATE_VERIFY_FAILED" in output, output


@needs_flower
def test_key_rotation_new_key_in_old_node_out(superlink: SuperLink) -> None:
    """The runbook's rotation: register the new key, start the node with it, unregister the old node id."""
    keys, ca = superlink.home / "keys", str(superlink.pki / "ca.crt")
    old_key, old_pub = create_node_key(keys, "rotating-old")
    new_key, new_pub = create_node_key(keys, "rotating-new")
    old_id = _register(superlink, old_pub)
    old_node, old_log = superlink.supernode(
        "rotating-old", "--root-certificates", ca, "--auth-supernode-private-key", str(old_key)
    )
    _wait_for_status(superlink, old_id, "online", old_log)

    new_id = _register(superlink, new_pub)
    _, new_log = superlink.supernode(
        "rotating-new", "--root-certificates", ca, "--auth-supernode-private-key", str(new_key)
    )
    _wait_for_status(superlink, new_id, "online", new_log)

    unregistered = superlink.flwr("supernode", "unregister", old_id, CONNECTION)
    assert unregistered.returncode == 0, unregistered.stdout + unregistered.stderr
    code, output = _exit_within(old_node, old_log, REJECTED_WITHIN_S)  # flwr 1.41 stops it, exit code 0
    assert code == 0 and "SuperNode terminated gracefully" in output, output
    statuses = _node_statuses(superlink)
    assert (statuses.get(old_id), statuses.get(new_id)) == ("unregistered", "online")

    retry, retry_log = superlink.supernode(
        "rotating-old-again", "--root-certificates", ca, "--auth-supernode-private-key", str(old_key),
        "--max-retries", "1", "--max-wait-time", "5",
    )  # fmt: skip
    code, output = _exit_within(retry, retry_log, REJECTED_WITHIN_S)
    assert code == 1 and "Failed to activate SuperNode" in output, output


def _register(link: SuperLink, public_key: Path) -> str:
    """`flwr supernode register`; the new node id."""
    registered = link.flwr("supernode", "register", str(public_key), CONNECTION, "--format", "json")
    assert registered.returncode == 0, registered.stdout + registered.stderr
    return str(json.loads(registered.stdout)["node-id"])


def _wait_for_status(link: SuperLink, node_id: str, status: str, log: Path, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (now := _node_statuses(link).get(node_id)) != status:
        if time.monotonic() > deadline:
            pytest.fail(f"node {node_id} is {now!r}, not {status!r}, after {timeout_s:.0f} s:\n{log.read_text()}")
        time.sleep(0.5)


# --- the real app, deployed: three hospitals, two rounds, through deploy.submit -----------------------------------


@pytest.fixture(scope="module")
def three_hospitals(superlink: SuperLink, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three registered SuperNodes, each serving a tiny phantom site from its own manifest (node config)."""
    from simulations.phantoms import generate_federation

    for node_id, status in _node_statuses(superlink).items():  # other tests' nodes would join (and fail) the run
        if status != "unregistered":
            assert superlink.flwr("supernode", "unregister", node_id, CONNECTION).returncode == 0
    data = tmp_path_factory.mktemp("hospitals")
    manifests = generate_federation(data, num_sites=3, images_per_site=24, seed=5, matrix_scale=0.25)
    names = []
    for index, manifest in enumerate(manifests):
        name = f"hospital-{'abc'[index]}"
        keys = data / "keys"  # its own folder: other tests of this module write keys of their own
        create_node_key(keys, name)
        node_id = _register(superlink, keys / f"{name}.pub")
        config = f'manifest="{manifest}" site-name="{name}" cache-dir="{data / "cache" / name}"'
        _, log = superlink.supernode(
            name,
            "--root-certificates", str(superlink.pki / "ca.crt"),
            "--auth-supernode-private-key", str(keys / name),
            "--node-config", config,
        )  # fmt: skip
        _wait_for_status(superlink, node_id, "online", log)
        names.append(name)
    return names


def _run_config(path: Path, run_dir: Path, overrides: dict[str, object] | None = None) -> Path:
    from common.config import load_config
    from simulations.launcher import write_run_config

    values = {"federation.num_sites": 3, "federation.synthetic": False, "data.image_size": 32,
              "training.batch_size": 8, "strategy.num_rounds": 2, "strategy.min_nodes": 3,
              "output.run_dir": str(run_dir), **(overrides or {})}  # fmt: skip
    return write_run_config(load_config(values), path)


@needs_flower
def test_two_rounds_of_the_real_app_on_three_tls_hospitals(superlink: SuperLink, three_hospitals: list[str]) -> None:
    from deploy.submit import submit
    from simulations.launcher import APP_DIR

    run_dir = superlink.home / "runs" / "ok"
    started = time.monotonic()

    done = submit(APP_DIR, CONNECTION, run_config=_run_config(superlink.home / "ok.toml", run_dir), env=superlink.env)

    seconds = time.monotonic() - started
    assert done.status.status == "finished:completed"
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert set(summary["sites"]) == set(three_hospitals), summary["sites"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {(r["round"], r["site"]) for r in rows if r["phase"] == "train" and r["site"] != "pooled"} == {
        (n, site) for n in (1, 2) for site in three_hospitals
    }
    assert not [r for r in rows if "error" in r]
    sys.stderr.write(f"deployed run: two rounds on three TLS hospitals in {seconds:.1f} s\n")  # shown with -s


@needs_flower
def test_a_failed_server_app_is_reported_as_a_failure(superlink: SuperLink, three_hospitals: list[str]) -> None:
    from deploy.submit import RunFailed, submit
    from simulations.launcher import APP_DIR

    missing = {"model.weights_path": str(superlink.home / "no-such-weights.pth")}  # the ServerApp raises at start
    config = _run_config(superlink.home / "bad.toml", superlink.home / "runs" / "bad", missing)

    with pytest.raises(RunFailed, match="finished:failed"):  # `flwr run` itself exits 0 here
        submit(APP_DIR, CONNECTION, run_config=config, env=superlink.env)

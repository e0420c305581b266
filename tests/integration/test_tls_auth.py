"""`deploy.pki` key material, and a real TLS SuperLink with SuperNode authentication on loopback (flwr 1.41).

The unit tests check the files themselves. The integration tests start one SuperLink with the certificates
`deploy.pki` wrote, ``--enable-supernode-auth`` and a database, then SuperNodes that should get in (a registered
key) or be turned away (an unregistered key, no TLS, TLS without the private CA). Every process runs in a
session of its own (`ChildProcesses`) and is stopped with everything it started, however the test ends; each
wait has a deadline.
"""

from __future__ import annotations

import json
import ssl
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from deploy.pki import PkiError, create_ca, create_node_key, create_server_certificate, main
from tests.integration.harness import (
    CONNECTION,
    REJECTED_WITHIN_S,
    STAYS_UP_S,
    SuperLink,
    exit_within,
    needs_flower,
    node_statuses,
    register,
    run_config,
    superlink_fixture,
    three_hospitals_fixture,
    wait_for_status,
)

superlink = superlink_fixture
three_hospitals = three_hospitals_fixture


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


@needs_flower
def test_registered_node_connects_and_stays_up(superlink: SuperLink) -> None:
    private_key, public_key = create_node_key(superlink.home / "keys", "hospital-a")
    node_id = register(superlink, public_key)
    assert node_statuses(superlink).get(node_id) == "registered"

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
    status = node_statuses(superlink).get(node_id)
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
    code, output = exit_within(process, log, REJECTED_WITHIN_S)
    # flwr logs its own exit code (305) but the process exits with 1 (`flwr_exit` maps every error code to 1).
    assert code == 1, output
    assert "Exit Code: 305" in output and "Failed to activate SuperNode" in output, output


@needs_flower
def test_node_without_tls_cannot_connect(superlink: SuperLink) -> None:
    # flwr refuses an auth key on an insecure SuperNode (exit 303), so this node has none: it fails on TLS alone.
    process, log = superlink.supernode("plaintext", "--insecure", "--max-retries", "1", "--max-wait-time", "5")
    code, output = exit_within(process, log, REJECTED_WITHIN_S)
    assert code == 1, output
    # The TLS listener drops a plaintext handshake; gRPC reports it either way, depending on timing.
    dropped = ("Server disconnected without sending a response", "Connection reset by peer")
    assert "Exit Code: 305" in output and any(text in output for text in dropped), output


@needs_flower
def test_node_without_the_private_ca_cannot_connect(superlink: SuperLink) -> None:
    # A registered key, so that only TLS can be the reason; no --root-certificates: the system trust store.
    private_key, public_key = create_node_key(superlink.home / "keys", "no-ca")
    register(superlink, public_key)
    process, log = superlink.supernode(
        "no-ca", "--auth-supernode-private-key", str(private_key), "--max-retries", "1", "--max-wait-time", "5"
    )
    code, output = exit_within(process, log, REJECTED_WITHIN_S)
    assert code == 1, output
    assert "Exit Code: 305" in output and "CERTIFICATE_VERIFY_FAILED" in output, output


@needs_flower
def test_key_rotation_new_key_in_old_node_out(superlink: SuperLink) -> None:
    """The runbook's rotation: register the new key, start the node with it, unregister the old node id."""
    keys, ca = superlink.home / "keys", str(superlink.pki / "ca.crt")
    old_key, old_pub = create_node_key(keys, "rotating-old")
    new_key, new_pub = create_node_key(keys, "rotating-new")
    old_id = register(superlink, old_pub)
    old_node, old_log = superlink.supernode(
        "rotating-old", "--root-certificates", ca, "--auth-supernode-private-key", str(old_key)
    )
    wait_for_status(superlink, old_id, "online", old_log)

    new_id = register(superlink, new_pub)
    _, new_log = superlink.supernode(
        "rotating-new", "--root-certificates", ca, "--auth-supernode-private-key", str(new_key)
    )
    wait_for_status(superlink, new_id, "online", new_log)

    unregistered = superlink.flwr("supernode", "unregister", old_id, CONNECTION)
    assert unregistered.returncode == 0, unregistered.stdout + unregistered.stderr
    code, output = exit_within(old_node, old_log, REJECTED_WITHIN_S)  # flwr 1.41 stops it, exit code 0
    assert code == 0 and "SuperNode terminated gracefully" in output, output
    statuses = node_statuses(superlink)
    assert (statuses.get(old_id), statuses.get(new_id)) == ("unregistered", "online")

    retry, retry_log = superlink.supernode(
        "rotating-old-again", "--root-certificates", ca, "--auth-supernode-private-key", str(old_key),
        "--max-retries", "1", "--max-wait-time", "5",
    )  # fmt: skip
    code, output = exit_within(retry, retry_log, REJECTED_WITHIN_S)
    assert code == 1 and "Failed to activate SuperNode" in output, output


# --- the real app, deployed: three hospitals, two rounds, through deploy.submit -----------------------------------


@needs_flower
def test_two_rounds_of_the_real_app_on_three_tls_hospitals(superlink: SuperLink, three_hospitals: list[str]) -> None:
    from deploy.submit import submit
    from simulations.launcher import APP_DIR

    run_dir = superlink.home / "runs" / "ok"
    started = time.monotonic()

    done = submit(APP_DIR, CONNECTION, run_config=run_config(superlink.home / "ok.toml", run_dir), env=superlink.env)

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
    config = run_config(superlink.home / "bad.toml", superlink.home / "runs" / "bad", missing)

    with pytest.raises(RunFailed, match="finished:failed"):  # `flwr run` itself exits 0 here
        submit(APP_DIR, CONNECTION, run_config=config, env=superlink.env)

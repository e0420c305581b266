"""The key material an on-premise federation needs: a CA, the SuperLink's TLS certificate, SuperNode keys.

Three commands, each writing into ``--out`` and refusing to replace an existing file unless ``--force``::

    python -m deploy.pki ca --out pki/
    python -m deploy.pki server --out pki/ --host coordinator.example --ip 10.0.0.5
    python -m deploy.pki node --out keys/ --name hospital-a

``ca``
    ``ca.crt`` and ``ca.key`` (0600): an EC P-384 key and a self-signed certificate marked as a CA that may
    sign certificates only. ``ca.crt`` goes to every hospital (``flower-supernode --root-certificates``) and
    to the SuperLink (``--ssl-ca-certfile``); ``ca.key`` stays offline with whoever issues certificates.
``server``
    ``server.pem`` and ``server.key`` (0600), signed by the CA found in ``--ca-dir`` (default: ``--out``).
    Its subjectAltName holds every ``--host`` and ``--ip`` plus, always, ``IP:127.0.0.1`` and
    ``DNS:localhost``: flwr 1.41's SuperLink starts a SuperExec that dials ``https://127.0.0.1:<port>`` and
    verifies this same certificate, so without them no run can start. A ``--host`` that is an IP address is
    written as an IP entry (TLS clients match IPs only against those).
``node``
    ``<name>`` (0600) and ``<name>.pub``: an ECDSA P-384 key pair in OpenSSH format, the format
    ``flwr supernode register <name>.pub <connection>`` and
    ``flower-supernode --auth-supernode-private-key <name>`` read. A hospital generates its own and sends
    only the ``.pub`` to the coordinator.

Everything uses the ``cryptography`` package; no key ever leaves the process except into its file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import FedMammoError

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "LOOPBACK_IP",
    "SERVER_CERT",
    "SERVER_KEY",
    "PkiError",
    "create_ca",
    "create_node_key",
    "create_server_certificate",
    "main",
]

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
LOOPBACK_IP = ipaddress.ip_address("127.0.0.1")
"""Always in the server certificate: the SuperLink's own SuperExec connects to it there."""

_CURVE = ec.SECP384R1
_PRIVATE_MODE, _PUBLIC_MODE = 0o600, 0o644
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_CLOCK_SKEW = dt.timedelta(minutes=5)
"""Certificates start this long before now, so a node whose clock runs a little behind accepts them."""


class PkiError(FedMammoError, ValueError):
    """A file is in the way or missing, or an argument is invalid; the message names which."""


@dataclass(frozen=True)
class _Output:
    path: Path
    data: bytes
    mode: int


def _write_all(outputs: Sequence[_Output], force: bool) -> list[Path]:
    """Write every file, or none when one already exists and ``force`` is off; private files are never readable
    by others, not even for a moment (each is written to a 0600 temporary file in the same folder, then renamed)."""
    if not force:
        taken = [str(o.path) for o in outputs if o.path.exists() or o.path.is_symlink()]
        if taken:
            raise PkiError(f"refusing to overwrite {', '.join(taken)}; pass --force to replace")
    for output in outputs:
        if output.path.is_dir():
            raise PkiError(f"{output.path} is a directory")
    for output in outputs:
        output.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{output.path.name}.", dir=output.path.parent)  # mode 0600
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(output.data)
            os.chmod(temporary, output.mode)
            os.replace(temporary, output.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return [o.path for o in outputs]


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    if days < 1:
        raise PkiError(f"--days must be at least 1, got {days}")
    now = dt.datetime.now(dt.UTC)
    return now - _CLOCK_SKEW, now + dt.timedelta(days=days)


def create_ca(
    out_dir: Path, *, common_name: str = "fedmammo federation CA", days: int = 3650, force: bool = False
) -> tuple[Path, Path]:
    """Write ``ca.crt`` and ``ca.key`` (0600) into ``out_dir``; return their paths.

    The certificate is self-signed, CA:true with no intermediate allowed (path length 0), and may only sign
    certificates and CRLs.
    """
    key = ec.generate_private_key(_CURVE())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before, not_after = _validity(days)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA384())
    )
    out_dir = Path(out_dir)
    crt, key_path = _write_all(
        [
            _Output(out_dir / CA_CERT, certificate.public_bytes(serialization.Encoding.PEM), _PUBLIC_MODE),
            _Output(out_dir / CA_KEY, _private_pem(key), _PRIVATE_MODE),
        ],
        force,
    )
    return crt, key_path


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt_path, key_path = Path(ca_dir) / CA_CERT, Path(ca_dir) / CA_KEY
    for path in (crt_path, key_path):
        if not path.is_file():
            raise PkiError(f"{path} not found; create the CA first: python -m deploy.pki ca --out {ca_dir}")
    try:
        certificate = x509.load_pem_x509_certificate(crt_path.read_bytes())
    except ValueError as exc:
        raise PkiError(f"{crt_path} is not a PEM certificate: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{key_path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{key_path} is not an EC private key")
    if key.public_key().public_numbers() != certificate.public_key().public_numbers():
        raise PkiError(f"{key_path} does not belong to {crt_path}")
    return certificate, key


def _subject_alt_names(hosts: Iterable[str], ips: Iterable[str]) -> list[x509.GeneralName]:
    """DNS and IP entries, the loopback ones included, each once, in the order given."""
    dns: list[str] = []
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for host in hosts:
        host = host.strip().rstrip(".").lower()
        try:
            addresses.append(ipaddress.ip_address(host))
            continue
        except ValueError:
            pass
        if len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in host.split(".")):
            raise PkiError(f"--host {host!r} is not a valid DNS name")
        dns.append(host)
    for ip in ips:
        try:
            addresses.append(ipaddress.ip_address(ip.strip()))
        except ValueError as exc:
            raise PkiError(f"--ip {ip!r} is not an IP address") from exc
    dns.append("localhost")
    addresses.append(LOOPBACK_IP)
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns)]
    names += [x509.IPAddress(a) for a in dict.fromkeys(addresses)]
    return names


def create_server_certificate(
    out_dir: Path,
    *,
    hosts: Sequence[str] = (),
    ips: Sequence[str] = (),
    ca_dir: Path | None = None,
    days: int = 825,
    force: bool = False,
) -> tuple[Path, Path]:
    """Write the SuperLink's ``server.pem`` and ``server.key`` (0600) into ``out_dir``, signed by the CA in
    ``ca_dir`` (default ``out_dir``); return their paths.

    subjectAltName: ``hosts`` (an IP address among them becomes an IP entry), ``ips``, ``DNS:localhost`` and
    ``IP:127.0.0.1``. Extended key usage: serverAuth only.
    """
    out_dir = Path(out_dir)
    ca_certificate, ca_key = _load_ca(Path(ca_dir) if ca_dir is not None else out_dir)
    alt_names = _subject_alt_names(hosts, ips)
    common_name = next((str(n.value) for n in alt_names if isinstance(n, x509.DNSName)), "localhost")
    key = ec.generate_private_key(_CURVE())
    not_before, not_after = _validity(days)
    if not_after > ca_certificate.not_valid_after_utc:
        not_after = ca_certificate.not_valid_after_utc  # a certificate cannot outlive its issuer
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    crt, key_path = _write_all(
        [
            _Output(out_dir / SERVER_CERT, certificate.public_bytes(serialization.Encoding.PEM), _PUBLIC_MODE),
            _Output(out_dir / SERVER_KEY, _private_pem(key), _PRIVATE_MODE),
        ],
        force,
    )
    return crt, key_path


def create_node_key(out_dir: Path, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write a SuperNode's ECDSA P-384 key pair in OpenSSH format: ``<name>`` (0600) and ``<name>.pub``;
    return their paths. ``name`` (letters, digits, ``.``, ``_``, ``-``) is also the public key's comment."""
    if not _NODE_NAME.fullmatch(name):
        raise PkiError(
            f"--name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    key = ec.generate_private_key(_CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    out_dir = Path(out_dir)
    private_path, public_path = _write_all(
        [
            _Output(out_dir / name, private, _PRIVATE_MODE),
            _Output(out_dir / f"{name}.pub", public + f" {name}\n".encode(), _PUBLIC_MODE),
        ],
        force,
    )
    return private_path, public_path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy.pki", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--out", type=Path, required=True, help="folder to write into (created if missing)")
        sub.add_argument("--force", action="store_true", help="replace files that already exist")

    ca = commands.add_parser("ca", help="create ca.crt and ca.key")
    common(ca)
    ca.add_argument("--common-name", default="fedmammo federation CA", help="the CA's subject CN")
    ca.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")

    server = commands.add_parser("server", help="create the SuperLink's server.pem and server.key")
    common(server)
    server.add_argument("--host", action="append", default=[], help="DNS name nodes dial (repeatable)")
    server.add_argument("--ip", action="append", default=[], help="IP address nodes dial (repeatable)")
    server.add_argument("--ca-dir", type=Path, help="folder holding ca.crt and ca.key (default: --out)")
    server.add_argument("--days", type=int, default=825, help="validity in days (default 825)")

    node = commands.add_parser("node", help="create a SuperNode's OpenSSH ECDSA P-384 key pair")
    common(node)
    node.add_argument("--name", required=True, help="file name of the private key; the public one adds .pub")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; print the files written. Exit code 0, or 2 with a message on stderr."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "ca":
            paths = create_ca(args.out, common_name=args.common_name, days=args.days, force=args.force)
        elif args.command == "server":
            paths = create_server_certificate(
                args.out, hosts=args.host, ips=args.ip, ca_dir=args.ca_dir, days=args.days, force=args.force
            )
        else:
            paths = create_node_key(args.out, args.name, force=args.force)
    except (PkiError, OSError) as exc:
        sys.stderr.write(f"deploy.pki {args.command}: error: {exc}\n")
        return 2
    sys.stdout.write("".join(f"{path}\n" for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())

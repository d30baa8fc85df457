"""`python -m coordinator.certs` (also `make certs`): a CA, a coordinator certificate and one
client certificate per worker (common name = worker id) for mutual TLS.

    python -m coordinator.certs --out certs --workers client-0,client-1 [--coordinator-names coordinator,localhost,127.0.0.1]

Writes ca.pem (+ ca.key), coordinator.pem/.key, <worker>.pem/.key and admin.pem/.key (for the
admin CLI when the coordinator requires client certificates).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedtree"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(days: int = 365) -> tuple[x509.Certificate, Key]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedtree CA"))
        .issuer_name(_name("fedtree CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca: tuple[x509.Certificate, Key],
    common_name: str,
    server_names: Sequence[str] = (),
    client: bool = True,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[x509.Certificate, Key]:
    """A leaf certificate signed by `ca`: a server one when `server_names` is given, else a client one."""
    ca_cert, ca_key = ca
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    if server_names:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        alt: list[x509.GeneralName] = []
        for name in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def write_pair(out: Path, stem: str, pair: tuple[x509.Certificate, Key]) -> None:
    cert, key = pair
    (out / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = out / f"{stem}.key"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(key_path, 0o600)


def make_all(out: Path, workers: Sequence[str], coordinator_names: Sequence[str], days: int = 365) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    ca = make_ca(days)
    write_pair(out, "ca", ca)
    write_pair(out, "coordinator", issue(ca, coordinator_names[0], coordinator_names, client=False))
    for worker in [*workers, "admin"]:
        write_pair(out, worker, issue(ca, worker))
    return sorted(out.iterdir())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedtree-certs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", required=True, help="comma-separated worker ids")
    parser.add_argument(
        "--coordinator-names", default="coordinator,localhost,127.0.0.1", help="DNS names / IPs of the coordinator"
    )
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)
    files = make_all(args.out, [w for w in args.workers.split(",") if w], args.coordinator_names.split(","), args.days)
    print(f"wrote {len(files)} files to {args.out}: " + ", ".join(p.name for p in files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

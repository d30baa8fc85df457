"""gRPC credentials from TLS config, and the one rule: no TLS means plaintext was asked for."""

from __future__ import annotations

from pathlib import Path

import grpc

from common.config import ClientTlsConfig, ServerTlsConfig
from common.errors import ConfigError


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from exc


def server_credentials(tls: ServerTlsConfig | None, insecure: bool) -> grpc.ServerCredentials | None:
    """None = plaintext (only with insecure: true); client certificates required when client_ca is set."""
    if tls is None:
        if not insecure:
            raise ConfigError("no TLS configured: set tls.cert and tls.key (and tls.client_ca for mTLS), or insecure: true")
        return None
    cert, key = _read(tls.cert, "tls.cert"), _read(tls.key, "tls.key")
    ca = _read(tls.client_ca, "tls.client_ca")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def secure_channel(
    target: str, tls: ClientTlsConfig | None, insecure: bool, options: list[tuple[str, int | str]]
) -> grpc.Channel:
    if tls is None:
        if not insecure:
            raise ConfigError("no TLS configured: set tls.ca (and tls.cert/tls.key for mTLS), or insecure: true")
        return grpc.insecure_channel(target, options=options)
    if (tls.cert is None) != (tls.key is None):
        raise ConfigError("tls.cert and tls.key go together")
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca, "tls.ca"),
        private_key=_read(tls.key, "tls.key"),
        certificate_chain=_read(tls.cert, "tls.cert"),
    )
    extra = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return grpc.secure_channel(target, creds, options=options + extra)

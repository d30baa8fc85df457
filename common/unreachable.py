"""Why the coordinator cannot be reached, in words an operator can act on.

gRPC reports a failed connection as UNAVAILABLE with the transport's last error in its details
(when the call does not wait for the channel to be ready, see common/retry.py). `diagnose` sorts
those details into a few causes, each with what to check; the retry layer logs a cause once in
full and then only now and then.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Unreachable:
    cause: str  # a short key, stable across attempts: "dns", "refused", "tls-name", ...
    message: str  # what happened and what to check


# (cause, pattern in gRPC's details, message template: {target}, {host})
_RULES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (cause, re.compile(pattern, re.IGNORECASE), message)
    for cause, pattern, message in (
        (
            "dns",
            r"resolving|DNS resolution failed|Domain name not found|hostname lookup|Name or service not known",
            "cannot resolve {host}: check the name (DNS, /etc/hosts) or dial the coordinator's IP address",
        ),
        (
            "refused",
            r"Connection refused",
            "connection refused by {target}: is the coordinator running, and listening on that host and port "
            "(its `host`/`port` settings)?",
        ),
        (
            "tls-name",
            r"Hostname Verification|not in peer certificate|No match found for server name|hostname mismatch",
            "the coordinator's certificate is not for {host}: dial a name it was issued for "
            "(coordinator.certs --coordinator-names), or set tls.server_name (FEDTREE_WORKER__TLS__SERVER_NAME) to one",
        ),
        (
            "tls-ca",
            r"certificate verify failed|CERTIFICATE_VERIFY_FAILED|BAD_SIGNATURE|unable to get local issuer|self.signed",
            "the coordinator's certificate is not signed by this worker's tls.ca: give the worker the run's CA",
        ),
        (
            "tls-client",
            r"certificate required|CERTIFICATE_REQUIRED|alert bad certificate|unknown ca",
            "the coordinator refused this worker's client certificate: set tls.cert/tls.key to a certificate of the "
            "run's CA whose common name is this worker's id",
        ),
        (
            "tls-plaintext",
            r"Socket closed|WRONG_VERSION_NUMBER|wrong version number|Connection reset",
            "the connection to {target} closed during the handshake: does one side speak TLS and the other "
            "plaintext (`insecure`)?",
        ),
        (
            "no-route",
            r"No route to host|Network is unreachable|timed out|Connection timed out",
            "no route to {target}: check the network, firewall and the address",
        ),
    )
)


def diagnose(details: str, target: str) -> Unreachable:
    """The cause of a failed connection to `target` from gRPC's status details."""
    host = target.rsplit(":", 1)[0] if ":" in target else target
    for cause, pattern, message in _RULES:
        if pattern.search(details):
            return Unreachable(cause, message.format(target=target, host=host))
    return Unreachable("other", f"cannot reach {target}: {details}")

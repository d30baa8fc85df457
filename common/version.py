"""The version of the wire protocol a worker speaks, sent with its Join and checked by the coordinator.

MAJOR.MINOR: a MINOR step only adds (fields a peer may ignore); a MAJOR step breaks, and a
coordinator refuses to let a worker of another MAJOR join, with a message that says which side to
upgrade, instead of failing later on a message the two read differently. MAJOR follows the proto
package (fedtree.v1).

1.1 added the run's blob digest (RunSpec.digest, blake3 by default): a 1.0 worker hashes blobs
with sha256 only, so a coordinator lets it join only a run that uses sha256 (`check_digest`).
The chunk layout did not change: 1.0 and 1.1 peers interoperate in a sha256 run.
"""

from __future__ import annotations

from common.errors import FailedPrecondition

PROTOCOL_VERSION = "1.1"
# the first MINOR that follows the run's digest (RunSpec.digest); before it, only sha256
DIGEST_MINOR = 1


def major(version: str) -> int | None:
    """The MAJOR of "MAJOR.MINOR"; None when the string is not a version."""
    head = version.strip().split(".", 1)[0]
    return int(head) if head.isdigit() else None


def minor(version: str) -> int | None:
    """The MINOR of "MAJOR.MINOR" (0 when absent); None when it is not a number."""
    parts = version.strip().split(".")
    if len(parts) < 2:
        return 0
    return int(parts[1]) if parts[1].isdigit() else None


def check_digest(worker_id: str, version: str, digest: str) -> None:
    """Raise FailedPrecondition when a worker of protocol `version` (same MAJOR: check that
    first) cannot check blobs with the run's `digest`: before 1.1 a worker only knew sha256."""
    if digest == "sha256":
        return
    theirs = minor(version)
    if theirs is None or theirs < DIGEST_MINOR:
        raise FailedPrecondition(
            f"worker {worker_id} speaks protocol {version}, which checks blobs with sha256 only; this run uses "
            f"{digest} (run.digest): upgrade the worker, or run the coordinator with run.digest: sha256"
        )


def check_compatible(worker_id: str, version: str, ours: str = PROTOCOL_VERSION) -> None:
    """Raise FailedPrecondition unless a worker's protocol `version` has our MAJOR."""
    theirs = major(version)
    if theirs is None:
        raise FailedPrecondition(
            f"worker {worker_id} sent no usable protocol version ({version!r}); this coordinator speaks {ours}: "
            "upgrade the worker"
        )
    if theirs != major(ours):
        older = "worker" if theirs < (major(ours) or 0) else "coordinator"
        raise FailedPrecondition(
            f"worker {worker_id} speaks protocol {version}, this coordinator {ours}: major versions differ; upgrade the {older}"
        )

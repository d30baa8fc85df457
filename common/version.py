"""The version of the wire protocol a worker speaks, sent with its Join and checked by the coordinator.

MAJOR.MINOR: a MINOR step only adds (fields a peer may ignore); a MAJOR step breaks, and a
coordinator refuses to let a worker of another MAJOR join, with a message that says which side to
upgrade, instead of failing later on a message the two read differently. MAJOR follows the proto
package (fedtree.v1).
"""

from __future__ import annotations

from common.errors import FailedPrecondition

PROTOCOL_VERSION = "1.0"


def major(version: str) -> int | None:
    """The MAJOR of "MAJOR.MINOR"; None when the string is not a version."""
    head = version.strip().split(".", 1)[0]
    return int(head) if head.isdigit() else None


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

"""Private-data layer: built-in corpora, file readers and federated partitioning."""

from worker.data.corpora import CORPORA, load_corpus
from worker.data.files import read_examples, write_jsonl
from worker.data.partition import ClientPartition, partition_federation
from worker.data.types import Example

__all__ = [
    "CORPORA",
    "ClientPartition",
    "Example",
    "load_corpus",
    "partition_federation",
    "read_examples",
    "write_jsonl",
]

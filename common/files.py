"""File modes of what fedtree hands to people: exported adapters are ordinary files.

safetensors writes its files with mode 0600 (private, like a temporary file), so a PEFT directory
held `adapter_model.safetensors` at 0600 beside `adapter_config.json` at 0644. Exported adapters get
the mode any new file gets under the process's umask (0644 under the usual 022); checkpoints and
state stay as they are written.
"""

from __future__ import annotations

import os
from pathlib import Path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def as_ordinary_files(directory: Path) -> None:
    """Give every file under `directory` the mode a new file gets under the umask (0666 & ~umask)."""
    mode = 0o666 & ~_umask()
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)

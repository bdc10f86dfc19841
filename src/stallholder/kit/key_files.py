"""Secrets generated once and kept in the data directory (the download-signing key, the
channel key): the embedded default needs no configuration, and every process that shares
the data directory reads the same key."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def key_in(data_dir: Path, name: str, *, make: Callable[[], str]) -> str:
    """The key kept in ``data_dir/name``, made with ``make`` (mode 0600) if there is none.

    It is written whole under a temporary name, then linked into place: a process that
    starts at the same moment (``serve --workers``) reads a complete key, or its own link
    fails and it reads the first one's."""
    path = data_dir / name
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(make() + "\n")
        try:
            os.link(partial, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            partial.unlink()
    return path.read_text().strip()

"""Write a file so that it is whole or not there: a temporary file beside it, fsync, rename.

The temporary file lives in the target's own folder, never in the system temp folder: a rename
is atomic only within one filesystem (across two it is a copy, which a kill leaves half done),
and a process killed mid-write then leaves its leftover where the next write of the same file
finds and removes it.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

SUFFIX = ".partial"


def partial_files(path: Path) -> list[Path]:
    """Leftovers of earlier writes of `path` that were killed before their rename."""
    return sorted(path.parent.glob(f".{path.name}.*{SUFFIX}"))


def write_atomic(path: str | Path, content: bytes | str | Callable[[BinaryIO], object]) -> Path:
    """Write bytes, UTF-8 text, or whatever `content(handle)` writes, to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in partial_files(path):
        stale.unlink(missing_ok=True)
    temporary = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{SUFFIX}"
    # os.open with 0o666 lets the umask decide the mode, as for any file (mkstemp would give 0600).
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode() if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)
    return path


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (where the platform lets a folder be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)

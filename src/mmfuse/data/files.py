"""Opening the files a table points at: regular files only, and no open() that can block.

A FIFO (or a device) named as an image or audio path would block open() until some writer
appears, hanging `mmfuse predict`, `data check` or training. So a path is stat'ed first and only
a regular file is opened; the open itself is non-blocking (O_NONBLOCK: opening a FIFO for reading
then returns at once instead of waiting), and the descriptor is checked again with fstat, so a
file swapped for a FIFO between the stat and the open is refused too instead of hanging the read.
On regular files O_NONBLOCK changes nothing.

MediaError lives here (and is re-exported by `media`) because both media modules raise it.
"""
from __future__ import annotations

import os
import stat
from typing import IO

__all__ = ["MediaError", "check_regular", "open_regular"]


class MediaError(Exception):
    """A media file or text cell cannot be used; str(error) is a short human reason."""


def open_regular(path: str | os.PathLike[str]) -> IO[bytes]:
    """The file opened for reading (binary), or MediaError when it is not a regular file."""
    if "\x00" in os.fspath(path):
        raise MediaError("path contains a NUL byte")  # os.* would raise ValueError
    try:
        check_regular(os.stat(path).st_mode, path)
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise MediaError(f"file not found: {path}") from None
    except OSError as error:
        raise MediaError(f"cannot read file: {error.strerror or error}") from None
    try:
        check_regular(os.fstat(descriptor).st_mode, path)  # replaced between stat and open
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return os.fdopen(descriptor, "rb")


def check_regular(mode: int, path: str | os.PathLike[str]) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        kind = "a directory"
    elif stat.S_ISFIFO(mode):
        kind = "a FIFO"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "a device"
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    else:
        kind = "not a regular file"
    raise MediaError(f"not a file ({kind}): {path}")

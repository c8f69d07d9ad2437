"""The one exception type for problems the user can fix (bad input, missing files, full disk), and the
one place that words an OSError of the environment (full, read-only or forbidden disk) for a person."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """Expected failure caused by input or environment, not by a bug.

    The CLI prints it as one line, `Error: <message>`, and exits non-zero without a traceback, so
    the message should say what went wrong, where, and what to do.
    """


# OSErrors that are the environment's, not a bug: said in one line with the path they concern.
OS_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "not a folder",
    errno.EISDIR: "is a folder",
    errno.EEXIST: "already exists",
}
# The subset that means "this disk cannot take the write": worth catching around a write.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
ADVICE = {
    errno.ENOSPC: "free some space or choose another folder, then rerun (finished work is kept)",
    errno.EDQUOT: "free some space or choose another folder, then rerun (finished work is kept)",
    errno.EROFS: "choose a writable folder",
    errno.EACCES: "choose a folder you can write, or fix its permissions",
    errno.EPERM: "choose a folder you can write, or fix its permissions",
}


def free_space(path: str | Path) -> str:
    """Free space on the file system that holds `path` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return f"{shutil.disk_usage(p).free / 2**20:.1f} MiB free on {p}"
    except OSError:
        return "free space unknown"


def describe_os_error(e: OSError, path: str | Path | None = None) -> str | None:
    """`what: where (free space); what to do` for an OSError of the environment, None for any other.

    `path` names the place when the error itself carries no file name (or a temporary one).
    """
    if e.errno not in OS_ERRORS:
        return None
    where = path if path is not None else e.filename
    message = f"{OS_ERRORS[e.errno]}: {where if where is not None else '(path unknown)'}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and where is not None:
        message += f" ({free_space(where)})"
    return f"{message}; {ADVICE.get(e.errno, 'check the path')}"


def disk_error(error: OSError, path: str | Path) -> UserError | None:
    """A UserError naming `path` for a disk that cannot take a write (full, read-only, forbidden)."""
    if error.errno not in DISK_ERRNOS:
        return None
    return UserError(describe_os_error(error, path))


@contextmanager
def explain_disk_errors(path: str | Path) -> Iterator[None]:
    """Turn a full, read-only or forbidden disk under this block into a UserError naming `path`."""
    try:
        yield
    except OSError as e:
        user_error = disk_error(e, path)
        if user_error is None:
            raise
        raise user_error from e

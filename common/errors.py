"""The one exception type for problems the user can fix (bad input, missing files, full disk)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """Expected failure caused by input or environment, not by a bug.

    The CLI prints it as one line, `Error: <message>`, and exits non-zero without a traceback, so
    the message should say what went wrong, where, and what to do.
    """


def disk_error(error: OSError, path: str | Path) -> UserError | None:
    """A UserError for an OSError the user can fix (disk full, read-only, no permission), else None.

    Names the path and, for a full disk, the space left on its file system.
    """
    import errno
    import shutil

    if error.errno == errno.ENOSPC or error.errno == errno.EDQUOT:
        free = "?"
        for p in (Path(path), *Path(path).parents):
            if p.exists():
                free = f"{shutil.disk_usage(p).free / 2**20:.1f} MiB"
                break
        return UserError(
            f"no space left writing {path} ({free} free there): free some space or choose another folder"
        )
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return UserError(f"cannot write {path}: {error.strerror}: choose a folder you can write to")
    return None


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

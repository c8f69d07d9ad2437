"""The one exception type for problems the user can fix (bad input, missing files, full disk)."""

from __future__ import annotations


class UserError(Exception):
    """Expected failure caused by input or environment, not by a bug.

    The CLI prints it as one line, `Error: <message>`, and exits non-zero without a traceback, so
    the message should say what went wrong, where, and what to do.
    """

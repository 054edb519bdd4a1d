"""The one exception type whose message is shown to the user as a single line, and the exit
codes of the ``macft`` command (the README's table lists the same ones)."""

from __future__ import annotations

import signal

# ----- exit codes -----------------------------------------------------------------------------
EXIT_OK = 0              # finished (completed, or early stopping)
EXIT_UNEXPECTED = 1      # an unexpected exception (its type and first line are shown)
EXIT_ERROR = 2           # a MacftError: bad input or environment, one line
EXIT_NONFINITE = 3       # training stopped: the loss or gradient stayed non-finite
# A run stopped by a signal exits 128 + the signal's number (the shell's convention), after
# writing its checkpoint: Ctrl-C (SIGINT) 130, SIGHUP 129, SIGTERM 143.
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGHUP = 128 + signal.SIGHUP
EXIT_SIGTERM = 128 + signal.SIGTERM


def exit_for_signal(signum: int) -> int:
    return 128 + int(signum)


class MacftError(Exception):
    """A problem with the user's input or environment, explained in one line.

    The CLI prints ``macft: error: <message>`` and exits with ``exit_code`` (2 unless a
    subclass says otherwise); the traceback is shown only with ``--debug``.
    """

    exit_code = EXIT_ERROR


class NonFiniteError(MacftError):
    """Training produced non-finite losses or gradients too many steps in a row, or a file
    holds non-finite weights."""

    exit_code = EXIT_NONFINITE


def where(path, line: int | None = None, key: str | None = None) -> str:
    """Format a location prefix: ``file:line`` or ``file: key 'a.b'``."""
    loc = str(path)
    if line is not None:
        loc += f":{line}"
    if key is not None:
        loc += f": key '{key}'"
    return loc

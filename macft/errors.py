"""The one exception type whose message is shown to the user as a single line."""

from __future__ import annotations


class MacftError(Exception):
    """A problem with the user's input or environment, explained in one line.

    The CLI prints ``macft: error: <message>`` and exits non-zero; the traceback is shown
    only with ``--debug``.
    """


def where(path, line: int | None = None, key: str | None = None) -> str:
    """Format a location prefix: ``file:line`` or ``file: key 'a.b'``."""
    loc = str(path)
    if line is not None:
        loc += f":{line}"
    if key is not None:
        loc += f": key '{key}'"
    return loc

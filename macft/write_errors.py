"""A full disk, a read-only folder or a denied write, as one line naming the file.

Python raises ``OSError`` with an errno; MLX raises ``RuntimeError("[write] Unable to write N
bytes to file.")`` or ``"Failed to open file ..."`` with no errno and, for the first, no path;
the GGUF writer's numpy raises ``OSError("N requested and M written")`` with neither. The
writers that matter (``runs.atomic_path``, the metrics file) pass their target here, so the
user reads "<path>: cannot write: no space left on device" whatever library failed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path

from macft.errors import MacftError

REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "no space left on device (disk quota exceeded)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "file too large for this file system",
}

class WriteError(MacftError):
    """A write that failed for lack of space or permission; ``reason`` says which."""

    def __init__(self, path, why: str):
        super().__init__(f"{path}: cannot write: {why}")
        self.path, self.reason = path, why


# MLX's and numpy's messages for a failed write or open (they carry no errno).
_WRITE_FAILED = re.compile(r"Unable to write (\d+) bytes|(\d+) requested and \d+ written"
                           r"|Failed to open file|\[write\]|\[save")


def _existing(path: Path) -> Path:
    """The nearest folder at or above ``path`` that exists (where the file was to go)."""
    p = Path(path).absolute()
    while not p.is_dir() and p != p.parent:
        p = p.parent
    return p


def _probe(path: Path, wanted: int) -> str | None:
    """Why a write of ``wanted`` bytes under ``path`` failed, asked of the file system."""
    folder = _existing(path)
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return REASONS[errno.EROFS]
        if shutil.disk_usage(folder).free < max(wanted, 1 << 16):
            return REASONS[errno.ENOSPC]
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return REASONS[errno.EACCES]
    return None


def reason(exc: BaseException, path: str | Path) -> str | None:
    """The plain reason a write to ``path`` failed with ``exc``; None when it is not about
    space or permissions (the error then stays as it is)."""
    if isinstance(exc, WriteError):
        return exc.reason
    if isinstance(exc, OSError) and exc.errno in REASONS:
        return REASONS[exc.errno]
    if isinstance(exc, (OSError, RuntimeError)):
        match = _WRITE_FAILED.search(str(exc))
        if match:
            wanted = int(match.group(1) or match.group(2) or 0)
            return _probe(Path(path), wanted)
    return None


def translate(exc: BaseException, path: str | Path) -> WriteError | None:
    """The one-line error for ``exc``, naming ``path`` (an inner writer's error is renamed to
    the outer target: a checkpoint folder rather than its temporary file)."""
    why = reason(exc, path)
    return None if why is None else WriteError(path, why)


@contextlib.contextmanager
def reported(path: str | Path):
    """Turn a full-disk / read-only / denied failure inside the block into one line."""
    try:
        yield
    except (OSError, RuntimeError, WriteError) as exc:
        error = translate(exc, path)
        if error is None:
            raise
        raise error from exc

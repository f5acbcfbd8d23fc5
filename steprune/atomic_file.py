"""Atomic file replacement: write a temporary file next to the target, fsync it, rename it over the target.

    atomic_write(Path("checkpoints/last.ckpt"), lambda f: torch.save(state, f))
    atomic_write(Path("artifacts/selector.safetensors"), lambda f: f.write(data))

The target is either the old file or the complete new one, never a truncated mix: the temporary file lives in
the target's own directory (so the rename never crosses a filesystem), is fsynced before `os.replace`, and the
directory is fsynced after it. If anything fails (a full disk, a quota, an interrupted write) the temporary file
is removed, the old target is untouched, and the OSError says so. The temporary name (`.<name>.<hex>.tmp`)
never looks like a checkpoint, so a leftover one after a SIGKILL is not taken for `last.ckpt`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened / fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], what: str = "file") -> None:
    """Replace `path` by what `write(handle)` writes, atomically (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        if isinstance(error, OSError):
            kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
            message = (
                f"could not write the {what} {path} ({error.strerror or error}); {kept}. Free space (or fix the "
                f"permissions) in {path.parent}, or write it elsewhere, and run again"
            )
            raise (OSError(error.errno, message) if error.errno else OSError(message)) from error
        raise
    _fsync_directory(path.parent)

"""Argument types and early checks shared by the console scripts (`steprune eval`, `steprune bench`, ...).

    parser.add_argument("--budgets", type=int_list)            # "192,128,64" -> [192, 128, 64]; "abc" -> usage error
    parser.add_argument("--limit", type=positive_int)           # "0" -> "must be >= 1"
    problem = unwritable(Path(args.out))                        # None, or why nothing can be written there

argparse turns the ValueError/ArgumentTypeError these types raise into a clean usage error (exit status 2)
naming the option, instead of a traceback from `int()` deep in a run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def positive_int(text: str) -> int:
    """An int >= 1 from the command line."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def int_list(text: str) -> list[int]:
    """Comma-separated ints >= 1 ("192,128,64"), e.g. visual-token budgets."""
    try:
        return [positive_int(part.strip()) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers >= 1 like 192,128,64, got {text!r}"
        ) from None


def unwritable(path: Path, directory: bool = True) -> str | None:
    """Why the run could not write `path` (a directory to create when `directory`, else a file), or None.

    Checked by creating (and removing) a file in the deepest directory that exists, so a read-only file system
    or a directory the user may not write is found before any work, also when running as root.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        return f"{path} exists and is {'a file' if directory else 'a directory'}"
    probe = path if directory else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, so nothing can be created under it"
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        return f"cannot write in {probe} ({error.strerror or error})"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"cannot write in {probe} (permission denied)"
    return None

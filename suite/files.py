"""Writing a file so that no reader ever sees half of it: write a hidden temporary beside it, then rename.

A rename within one directory is atomic on POSIX file systems, so a reader (DuckDB on the result tables, a
browser on the report, a CI artifact upload) sees the previous complete file or the new complete one.
Readers ignore hidden names, which is also pyarrow.dataset's default; `remove_temporaries` in
suite/results.py clears the temporaries of writers that were killed before their rename.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """The hidden temporary of `path` for this process (the pid keeps concurrent writers apart)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(
    path: Path, write: Callable[[Path], None], *, before_rename: Callable[[Path], None] | None = None
) -> None:
    """`write(tmp)` fills the temporary; it is flushed to disk and renamed over `path`, or removed on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

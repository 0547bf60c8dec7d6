"""Where vlm-ad keeps converted weights, and atomic writes.

The cache is ``$VLM_AD_CACHE``, else ``$XDG_CACHE_HOME/vlm-ad``, else ``~/.cache/vlm-ad``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def cache_dir() -> Path:
    """Return the cache directory (created if needed)."""
    root = os.environ.get("VLM_AD_CACHE")
    if root:
        path = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg) if xdg else Path.home() / ".cache") / "vlm-ad"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_writer(path: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``, on any exception it is removed.

    Yields the open binary file and the temporary file's path (checks may read the temporary file after closing
    the handle; raising inside the block leaves ``path`` untouched).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # a unique name
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh, Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode any other write would have
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    with atomic_writer(path) as (fh, _):
        fh.write(data)

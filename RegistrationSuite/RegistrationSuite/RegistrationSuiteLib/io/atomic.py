"""Atomic file output: write to a temporary file beside the target, then rename.

A failed or cancelled run therefore never leaves a half-written output file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _double_suffix(path: Path) -> str:
    """``.nii.gz``/``.seg.nrrd`` style suffixes matter to the writers, so keep all of them."""
    suffixes = path.suffixes
    return "".join(suffixes[-2:]) if len(suffixes) >= 2 and suffixes[-1] == ".gz" else path.suffix


@contextlib.contextmanager
def atomic_output(path):
    """Context manager yielding a temporary path with the same suffix as ``path``; on success it replaces
    ``path`` atomically, on any exception the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise FileNotFoundError(f"output folder does not exist: {path.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=_double_suffix(path), dir=path.parent or ".")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

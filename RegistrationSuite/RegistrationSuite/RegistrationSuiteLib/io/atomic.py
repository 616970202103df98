"""Atomic file output: write to a temporary name beside the target, then rename.

A failed or cancelled run therefore never leaves a half-written output file behind. The temporary file sits
in a private folder beside the target and carries the target's own name, so writers that look at the name
(``.nii.gz``, ``.mrb``) behave as for the target, and the file is created by the writer itself — with the
permissions an ordinary ``open()`` gives under the user's umask, not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def absolute_path(path) -> Path:
    """``path`` made absolute against the current folder (``~`` expanded); symlinks are *not* resolved, so
    the file is written where the user pointed."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def staging_folder(path: Path) -> Path:
    """A new private folder beside ``path`` (same file system, so ``os.replace`` from it is atomic)."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {path.parent}")
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))


@contextlib.contextmanager
def atomic_output(path):
    """Context manager yielding a temporary path with the same name as ``path``; on success it replaces
    ``path`` atomically, on any exception the temporary file is removed and ``path`` is untouched."""
    path = absolute_path(path)
    work = staging_folder(path)
    tmp = work / path.name
    try:
        yield str(tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)

"""On-disk cache of intermediate results that depend only on their inputs (in the user cache folder).

Used for TSPM's fixed → template alignment (it depends on the fixed image, the template and the settings, not
on the moving image), so repeated runs against one fixed image, each in a new process as the CLI and the Slicer
module run them, pay for it once.

Folder: ``$REGISTRATION_SUITE_CACHE`` if set, else ``$XDG_CACHE_HOME/registration-suite`` (default
``~/.cache/registration-suite``). One JSON file per entry, ``<namespace>/<key>.json``; keys are SHA-256 hex
digests over the image content *and* every option the result depends on (the caller builds them). Entries are
written atomically; an unreadable entry counts as a miss. Clear with :func:`clear_cache`, with
``registration-suite cache --clear`` or from the RegistrationSuite hub module.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

import numpy as np

ENV = "REGISTRATION_SUITE_CACHE"
_KEY = re.compile(r"^[0-9a-f]{16,128}$")
_NAMESPACE = re.compile(r"^[a-z0-9_]{1,64}$")


def cache_dir() -> Path:
    """The cache folder (not created): ``$REGISTRATION_SUITE_CACHE``, else the user cache folder."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "registration-suite"


def _entry(namespace: str, key: str) -> Path:
    if not _NAMESPACE.match(namespace):
        raise ValueError(f"namespace: expected lower-case letters, digits or '_', got {namespace!r}")
    if not _KEY.match(key):
        raise ValueError(f"key: expected a hex digest, got {key!r}")
    return cache_dir() / namespace / f"{key}.json"


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in the cache")


def load_entry(namespace: str, key: str) -> Optional[dict]:
    """The stored dict, or ``None`` when absent or unreadable."""
    path = _entry(namespace, key)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def store_entry(namespace: str, key: str, value: dict) -> bool:
    """Store ``value`` (JSON-serialisable; numpy arrays become lists) atomically; ``False`` when the folder is
    not writable (the cache is an optimisation, never a reason to fail)."""
    path = _entry(namespace, key)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(value, default=_plain))
        os.replace(tmp, path)
        return True
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        return False


def cache_usage() -> dict:
    """``{"folder", "entries", "bytes"}`` of the cache (entries = stored JSON files)."""
    files = list(cache_dir().glob("*/*.json"))
    return {"folder": str(cache_dir()), "entries": len(files), "bytes": sum(f.stat().st_size for f in files)}


def clear_cache(namespace: Optional[str] = None) -> int:
    """Delete the cache's entries (of one ``namespace``, or all); returns how many were removed. Only files this
    module writes (``<namespace>/<hex>.json``) are touched."""
    removed = 0
    pattern = f"{namespace}/*.json" if namespace else "*/*.json"
    for f in cache_dir().glob(pattern):
        if _KEY.match(f.stem) and _NAMESPACE.match(f.parent.name):
            f.unlink(missing_ok=True)
            removed += 1
    return removed

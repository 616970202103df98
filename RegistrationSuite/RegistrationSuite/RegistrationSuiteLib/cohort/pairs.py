"""The cohort CSV: one row per pair, ``id,fixed,moving`` plus optional per-row option columns.

Columns other than ``id``, ``fixed`` and ``moving`` become options of that pair's command: a column
``fixed_mask`` (or ``fixed-mask``) with value ``v`` adds ``--fixed-mask v``; an empty cell adds nothing.
Relative paths are relative to the CSV's folder (a value is treated as a path when that file exists there).
Two columns are not options: ``method`` (a command, e.g. ``organ-points``) runs that row with its own method
instead of the batch's ``--method``/``--steps``, with the options in that row's ``options`` column (the batch's
``--options`` are for the batch's own method and are not given to such a row). One cohort can so mix, e.g.,
image pairs registered with rigid-search and label-map pairs registered with organ-points.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import InputError

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass
class Pair:
    """One row of the cohort: ``extra`` maps option names (``--fixed-mask``) to values (paths resolved);
    ``method``/``options``: this row's own command and its options (``None``: the batch's command)."""

    id: str
    fixed: str
    moving: str
    extra: dict = field(default_factory=dict)
    method: Optional[str] = None
    options: list = field(default_factory=list)

    def command(self, default: list) -> list:
        """The CLI words this pair runs before its inputs: its own method and options, else ``default``."""
        return [self.method, *self.options] if self.method else list(default)

    def input_paths(self) -> list:
        return [self.fixed, self.moving] + [v for v in self.extra.values() if Path(v).exists()]


def read_pairs(csv_path) -> list:
    """Read and check a cohort CSV (header, unique folder-safe ids). Missing image files are not an error
    here: such a pair fails on its own and is recorded, the others still run.

    Raises:
        InputError: unreadable file, missing ``id``/``fixed``/``moving`` columns, bad or duplicate ids, no rows.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise InputError(f"--pairs: file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("id", "fixed", "moving") if c not in columns]
        if missing:
            raise InputError(f"--pairs: {path.name} needs the columns id,fixed,moving; missing {','.join(missing)} "
                             f"(found {','.join(columns) or 'no header'})")
        rows = []
        for row in reader:
            if None in row:  # csv puts the cells beyond the header under the key None
                raise InputError(f"--pairs: line {reader.line_num}: more cells than columns in the header (a cell "
                                 "holding commas, such as options, must be quoted: \"--labels 1,2\")")
            rows.append({(k or "").strip(): (v or "").strip() for k, v in row.items()})
    rows = [r for r in rows if any(r.values())]
    if not rows:
        raise InputError(f"--pairs: {path.name} has no rows")
    pairs, seen = [], set()
    for n, row in enumerate(rows, start=2):
        pid = row["id"]
        if not _ID.match(pid):
            raise InputError(f"--pairs: line {n}: id {pid!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
        if pid in seen:
            raise InputError(f"--pairs: line {n}: duplicate id {pid!r}")
        seen.add(pid)
        extra = {"--" + k.replace("_", "-"): _resolve(path.parent, v) for k, v in row.items()
                 if k not in ("id", "fixed", "moving", "method", "options") and k and v}
        method = row.get("method") or None
        if row.get("options") and not method:
            raise InputError(f"--pairs: line {n}: an 'options' cell needs a 'method' cell in the same row "
                             "(options for the batch's own method go in --options)")
        try:
            options = [_resolve(path.parent, w) for w in shlex.split(row.get("options") or "")]
        except ValueError as exc:
            raise InputError(f"--pairs: line {n}: cannot split the options cell ({exc})") from None
        pairs.append(Pair(pid, _resolve(path.parent, row["fixed"], force=True),
                          _resolve(path.parent, row["moving"], force=True), extra, method, options))
    return pairs


def _resolve(folder: Path, value: str, force: bool = False) -> str:
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    candidate = folder / p
    return str(candidate.resolve()) if force or candidate.exists() else value


def file_digest(path) -> str:
    """SHA-256 of a file's content (of every file, in name order, for a folder such as a DICOM series)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        files = sorted(q for q in p.rglob("*") if q.is_file())
    elif p.is_file():
        files = [p]
    else:
        return "missing"
    for q in files:
        h.update(str(q.relative_to(p) if p.is_dir() else q.name).encode())
        with open(q, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def pair_hash(pair: Pair, command: list) -> str:
    """Hash of what determines a pair's result: the command (method/steps and options) and the content of
    every input file. ``--resume`` redoes a pair whose hash changed. ``command``: the batch's command (the
    pair's own method and options, when it has them, replace it)."""
    record = {"command": pair.command(command), "extra": pair.extra,
              "inputs": {str(p): file_digest(p) for p in [pair.fixed, pair.moving, *pair.extra.values(), *pair.options]
                         if Path(p).exists() or p in (pair.fixed, pair.moving)}}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()

"""Landmark files in the ANHIR format: CSV with an index column and ``X``, ``Y`` in level-0 pixels.

Example::

    ,X,Y
    0,63,309
    1,77,441

Also evaluation as in ANHIR (METHOD_NOTES §4): rTRE = TRE / image diagonal; robustness = fraction of
landmarks whose error decreased with respect to the unregistered positions.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ...errors import InputError
from ...io.atomic import atomic_output


def read_landmarks(path, name: str = "landmarks", *, size=None) -> np.ndarray:
    """Read an ANHIR landmark CSV → ``(N, 2)`` float (x, y) in level-0 pixels.

    Args:
        size: optional ``(W, H)`` of level 0; points outside ``[-0.5, W - 0.5] × [-0.5, H - 0.5]`` are an error.

    Raises:
        InputError: missing file, no ``X``/``Y`` columns, non-numeric values, no rows, points outside the image.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{name}: file not found: {path}")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise InputError(f"{name}: {path.name} is empty; expected a CSV with columns X,Y")
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    if "x" not in lower or "y" not in lower:
        raise InputError(f"{name}: {path.name}: expected columns X,Y (ANHIR format), got {','.join(header) or 'none'}")
    ix, iy = lower.index("x"), lower.index("y")
    points = []
    for n, row in enumerate(rows[1:], start=2):
        if not any(v.strip() for v in row):
            continue
        try:
            points.append((float(row[ix]), float(row[iy])))
        except (ValueError, IndexError):
            raise InputError(f"{name}: {path.name} line {n}: expected numbers in X,Y, got {row}") from None
    if not points:
        raise InputError(f"{name}: {path.name} holds no landmarks")
    pts = np.asarray(points, dtype=float)
    if not np.all(np.isfinite(pts)):
        raise InputError(f"{name}: {path.name} contains NaN/Inf coordinates")
    if size is not None:
        w, h = size
        bad = np.nonzero((pts[:, 0] < -0.5) | (pts[:, 1] < -0.5) | (pts[:, 0] > w - 0.5) | (pts[:, 1] > h - 0.5))[0]
        if bad.size:
            raise InputError(f"{name}: {bad.size} landmark(s) outside the {w}x{h} image, first at row {bad[0] + 1}: "
                             f"({pts[bad[0], 0]:g}, {pts[bad[0], 1]:g})")
    return pts


def write_landmarks(points: np.ndarray, path) -> None:
    """Write ``(N, 2)`` (x, y) pixels as an ANHIR CSV (``,X,Y`` header, 0-based index), atomically."""
    points = np.asarray(points, dtype=float)
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["", "X", "Y"])
            for i, (x, y) in enumerate(points):
                out.writerow([i, f"{x:.3f}", f"{y:.3f}"])


def relative_tre(predicted: np.ndarray, truth: np.ndarray, diagonal: float) -> np.ndarray:
    """Per-landmark rTRE ``(N,)``: Euclidean error divided by the image diagonal (same units)."""
    return np.linalg.norm(np.asarray(predicted, float) - np.asarray(truth, float), axis=1) / float(diagonal)


def robustness(registered_error: np.ndarray, initial_error: np.ndarray) -> float:
    """Fraction of landmarks whose error decreased (ANHIR robustness)."""
    return float(np.mean(np.asarray(registered_error) < np.asarray(initial_error)))

"""Well-spread point subsets for MO-BCPD (farthest-point sampling per organ). Torch-free.

Uniform random subsets leave gaps and clumps of the order of the mean point spacing, and which surface
patches get few points changes with the seed. On small organs (a few hundred points) that changes the fit:
on the real subject A/B pair the pancreas Dice moved between 0.41 and 0.58 with the seed alone (issue 14).
Farthest-point sampling (each new point is the one farthest from those already chosen) covers a surface
evenly at every size, so a subset of it is nearly the same shape whatever the random start.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def farthest_point_order(points: np.ndarray, k: int, start: int = 0) -> np.ndarray:
    """Indices of ``k`` of ``points (N, D)`` chosen by farthest-point sampling from index ``start``: each next
    point maximises the distance to those already chosen (greedy, exact; O(N k)). ``k >= N``: all, in
    farthest-point order."""
    pts = np.asarray(points, dtype=np.float64)
    cols = np.ascontiguousarray((pts - pts.mean(axis=0)).T, dtype=np.float32)  # (D, N), centred: LPS z ~ 1e3 mm
    n = cols.shape[1]
    k = min(int(k), n)
    order = np.empty(max(k, 0), dtype=np.int64)
    dist = np.full(n, np.inf, dtype=np.float32)
    tmp, acc = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.float32)
    current = int(start) % n if n else 0
    for i in range(k):  # in-place float32 updates: ~10x faster than (points - p)**2 on 2 shared cores
        order[i] = current
        acc.fill(0.0)
        for row in cols:
            np.subtract(row, row[current], out=tmp)
            tmp *= tmp
            acc += tmp
        np.minimum(dist, acc, out=dist)
        current = int(np.argmax(dist))
    return order


def label_shares(labels: np.ndarray, target: int, minimum: int = 4) -> list:
    """``[(indices of label l, how many of them to keep)]`` for a subset of about ``target`` of ``labels``:
    each label keeps its share of ``target``, at least ``minimum`` (or all it has)."""
    n = labels.shape[0]
    out = []
    for lab in np.unique(labels).tolist():
        idx = np.nonzero(labels == lab)[0]
        out.append((idx, min(idx.size, max(minimum, int(round(idx.size * target / n))))))
    return out


def spread_subset(points: np.ndarray, labels: np.ndarray, target: Optional[int], seed: int,
                  minimum: int = 4) -> np.ndarray:
    """Sorted indices of at most about ``target`` points, each label keeping its share (:func:`label_shares`),
    chosen per label by farthest-point sampling from a start drawn with ``seed``; all indices when ``target``
    is None or not below the number of points."""
    if target is None or labels.shape[0] <= target:
        return np.arange(labels.shape[0])
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([idx[farthest_point_order(points[idx], k, int(rng.integers(idx.size)))]
                                   for idx, k in label_shares(labels, target, minimum)]))


def spread_per_label(points: np.ndarray, labels: np.ndarray, per_label: int, seed: int) -> np.ndarray:
    """Sorted indices of ``per_label`` points of every label (all of a label that has fewer), chosen by
    farthest-point sampling from a start drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    keep = []
    for lab in np.unique(labels).tolist():
        idx = np.nonzero(labels == lab)[0]
        keep.append(idx[farthest_point_order(points[idx], per_label, int(rng.integers(idx.size)))])
    return np.sort(np.concatenate(keep))

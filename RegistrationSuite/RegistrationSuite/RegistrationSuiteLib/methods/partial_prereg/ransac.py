"""RANSAC rigid fit of patch centres to their predicted template positions (paper §2.1, Fischler & Bolles).

Each trial fits a rigid transform (Kabsch with the determinant fix: a proper rotation, never a reflection)
to 6 correspondences drawn without replacement, and counts inliers: correspondences whose residual
``|T(source) − target|`` is below the threshold (mm). The best trial (most inliers; ties: smaller mean inlier
residual) is refitted on all its inliers, and the inlier set is updated from the refit until it stops
changing (at most 5 times). Unlike the reference code (which keeps the 6-point model), the refit uses every
inlier. A consensus needs ``max(min_inliers, min_inlier_ratio · n)`` inliers; without one the threshold is
doubled once (as the reference does) before giving up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import InputError
from ...geometry import apply_affine, fit_rigid


@dataclass
class RansacResult:
    """Outcome of :func:`ransac_rigid`.

    Attributes:
        matrix: ``(4, 4)`` rigid source → target transform (refitted on the inliers).
        inliers: ``(n,)`` boolean mask.
        residuals: ``(n,)`` distances ``|T(source) − target|`` in mm under ``matrix``.
        consensus: whether the inlier count reached the required minimum.
        threshold_mm: the threshold finally used (doubled once when the first pass had no consensus).
        iterations: trials evaluated.
    """

    matrix: np.ndarray
    inliers: np.ndarray
    residuals: np.ndarray
    consensus: bool
    threshold_mm: float
    iterations: int

    @property
    def num_inliers(self) -> int:
        return int(self.inliers.sum())

    @property
    def inlier_ratio(self) -> float:
        return float(self.inliers.mean()) if len(self.inliers) else 0.0

    def to_dict(self) -> dict:
        r_in = self.residuals[self.inliers]
        return {
            "consensus": self.consensus,
            "num_points": int(len(self.inliers)),
            "num_inliers": self.num_inliers,
            "inlier_ratio": self.inlier_ratio,
            "threshold_mm": self.threshold_mm,
            "iterations": self.iterations,
            "inlier_residual_mean_mm": float(r_in.mean()) if len(r_in) else None,
            "inlier_residual_max_mm": float(r_in.max()) if len(r_in) else None,
            "residuals_mm": np.round(self.residuals, 3).tolist(),
        }


def batched_kabsch(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rigid fits for a batch of correspondence sets: ``(B, k, 3)`` → ``(B, 4, 4)``, det(R) = +1."""
    cs, ct = source.mean(axis=1, keepdims=True), target.mean(axis=1, keepdims=True)
    h = np.einsum("bki,bkj->bij", source - cs, target - ct)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.einsum("bij,bjk->bik", vt.transpose(0, 2, 1), u.transpose(0, 2, 1))))
    d[d == 0] = 1.0
    fix = np.tile(np.eye(3), (len(h), 1, 1))
    fix[:, 2, 2] = d
    r = vt.transpose(0, 2, 1) @ fix @ u.transpose(0, 2, 1)
    m = np.tile(np.eye(4), (len(h), 1, 1))
    m[:, :3, :3] = r
    m[:, :3, 3] = ct[:, 0] - np.einsum("bij,bj->bi", r, cs[:, 0])
    return m


def _trials(source, target, threshold, iterations, sample_size, rng, chunk=500):
    """Best trial's inlier mask over ``iterations`` random samples (vectorised in chunks)."""
    n = len(source)
    best_count, best_mean, best_mask = -1, np.inf, None
    for start in range(0, iterations, chunk):
        b = min(chunk, iterations - start)
        idx = np.argsort(rng.random((b, n)), axis=1)[:, :sample_size]
        models = batched_kabsch(source[idx], target[idx])
        mapped = np.einsum("bij,nj->bni", models[:, :3, :3], source) + models[:, None, :3, 3]
        res = np.linalg.norm(mapped - target[None], axis=2)
        inl = res < threshold
        counts = inl.sum(axis=1)
        means = np.where(inl, res, 0.0).sum(axis=1) / np.maximum(counts, 1)
        order = np.lexsort((means, -counts))[0]
        if counts[order] > best_count or (counts[order] == best_count and means[order] < best_mean):
            best_count, best_mean, best_mask = int(counts[order]), float(means[order]), inl[order]
    return best_mask


def _refit(source, target, mask, threshold):
    for _ in range(5):
        m = fit_rigid(source[mask], target[mask])
        res = np.linalg.norm(apply_affine(m, source) - target, axis=1)
        new = res < threshold
        if new.sum() < 3 or np.array_equal(new, mask):
            break
        mask = new
    return m, res, res < threshold if new.sum() >= 3 else mask


def ransac_rigid(
    source: np.ndarray,
    target: np.ndarray,
    *,
    threshold_mm: float = 15.0,
    iterations: int = 3000,
    sample_size: int = 6,
    min_inliers: int = 12,
    min_inlier_ratio: float = 0.2,
    rng: np.random.Generator,
) -> RansacResult:
    """Robust rigid fit ``target ≈ T(source)``.

    Args:
        source: ``(n, 3)`` points (patch centres, moving LPS mm); target: ``(n, 3)`` (predicted template mm).
        threshold_mm: inlier distance (mm).
        iterations: random trials.
        sample_size: correspondences per trial (paper: 6).
        min_inliers, min_inlier_ratio: what a consensus needs.
        rng: NumPy generator (the only randomness).

    Raises:
        InputError: mismatched shapes or fewer than ``sample_size`` points.
    """
    source, target = np.asarray(source, float), np.asarray(target, float)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 3:
        raise InputError(f"ransac: expected two (n, 3) arrays of equal shape, got {source.shape} and {target.shape}")
    if len(source) < sample_size:
        raise InputError(f"ransac: expected at least {sample_size} correspondences, got {len(source)}")
    need = max(int(min_inliers), int(np.ceil(min_inlier_ratio * len(source))))
    threshold = float(threshold_mm)
    for attempt in range(2):
        mask = _trials(source, target, threshold, int(iterations), int(sample_size), rng)
        if mask.sum() >= max(need, 3):
            break
        if attempt == 0:
            threshold *= 2.0
    if mask.sum() < 3:  # nothing to refit: keep the best sample's neighbourhood as is
        m = fit_rigid(source, target)
        res = np.linalg.norm(apply_affine(m, source) - target, axis=1)
        return RansacResult(m, res < threshold, res, False, threshold, int(iterations))
    m, res, inl = _refit(source, target, mask, threshold)
    return RansacResult(m, inl, res, bool(inl.sum() >= need), threshold, int(iterations))


def ransac_translation(source: np.ndarray, target: np.ndarray, rotation: np.ndarray, *, threshold_mm: float,
                       min_inliers: int = 6) -> RansacResult:
    """Robust fit of ``target ≈ R · source + t`` with the rotation ``R`` given (only ``t`` estimated).

    Every correspondence proposes ``t = target − R · source`` (one-point samples, all of them tried); the
    proposal with the most inliers wins and ``t`` is refitted as the inliers' mean. Used for the
    orientation-prior candidate of :func:`register_partial_prereg`, where a small moving image's patch
    predictions pin its position well but its rotation poorly.
    """
    source, target = np.asarray(source, float), np.asarray(target, float)
    r = np.asarray(rotation, float)
    proposals = target - source @ r.T  # (n, 3)
    dist = np.linalg.norm(proposals[:, None, :] - proposals[None, :, :], axis=2)
    inl = dist[int(np.argmax((dist < threshold_mm).sum(axis=1)))] < threshold_mm
    for _ in range(5):
        t = proposals[inl].mean(axis=0)
        new = np.linalg.norm(proposals - t, axis=1) < threshold_mm
        if np.array_equal(new, inl) or new.sum() < 1:
            break
        inl = new
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = proposals[inl].mean(axis=0)
    res = np.linalg.norm(apply_affine(m, source) - target, axis=1)
    return RansacResult(m, inl, res, bool(inl.sum() >= min_inliers), float(threshold_mm), len(source))

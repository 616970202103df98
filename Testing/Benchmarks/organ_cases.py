"""Synthetic multi-organ deformation cases with known correspondences (issue "MO-BCPD", benchmark).

The moving point set is the organ surfaces of a real segmentation; the fixed set is *another* subsample of
the same surfaces deformed by a known transform ``T`` (moving → fixed):

    T = global similarity ∘ per-organ rigid motion (about each organ's centroid) ∘ smooth elastic field

plus 1 mm Gaussian noise. The registration estimates fixed→moving, so for a fixed point ``T(p)`` the
error is ``|F(T(p)) − p|``. Landmarks per organ: centroid, top and bottom (extreme superior/inferior surface
points, LPS z). Two case categories (:data:`CATEGORIES`): "clean" (every fixed point carries its organ's
label) and "hard" (5 % of the fixed points, chosen near organ contacts, carry the neighbouring organ's label,
as a segmentation slightly off at the contacts would give).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from RegistrationSuiteLib.geometry import rotation_from_quaternion


CATEGORIES = {
    "clean": {"mislabel_fraction": 0.0},
    "hard": {"mislabel_fraction": 0.05},
}


@dataclass
class OrganCase:
    moving_points: np.ndarray      # (M, 3) mm LPS
    moving_labels: np.ndarray      # (M,)
    fixed_points: np.ndarray       # (N, 3) deformed + noise
    fixed_labels: np.ndarray       # (N,) possibly mislabelled
    fixed_true_labels: np.ndarray  # (N,) the organ each fixed point really belongs to
    fixed_clean: np.ndarray        # (N, 3) deformed, no noise (for surface TRE)
    fixed_sources: np.ndarray      # (N, 3) the moving-space point each fixed point came from
    landmarks_moving: np.ndarray   # (K, 3)
    landmarks_fixed: np.ndarray    # (K, 3) = T(landmarks_moving)
    landmark_labels: np.ndarray    # (K,)


def _random_rotation(rng, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    half = np.radians(rng.uniform(-max_deg, max_deg)) / 2
    return rotation_from_quaternion(np.r_[np.cos(half), np.sin(half) * axis][None])[0]


class KnownDeformation:
    """The moving→fixed ground-truth transform of one case (see the module docstring)."""

    def __init__(self, centroids: dict, center: np.ndarray, rng: np.random.Generator, *,
                 global_deg=15.0, scale=(0.9, 1.1), global_mm=20.0, organ_deg=10.0, organ_mm=15.0,
                 elastic_mm=5.0, correlation_mm=30.0, n_rbf=40, extent_mm=200.0):
        self.center = np.asarray(center, float)
        self.r_global = _random_rotation(rng, global_deg)
        self.s_global = rng.uniform(*scale)
        self.t_global = rng.uniform(-global_mm, global_mm, 3)
        self.organs = {l: (np.asarray(c, float), _random_rotation(rng, organ_deg), rng.uniform(-organ_mm, organ_mm, 3))
                       for l, c in centroids.items()}
        self.rbf_centres = self.center + rng.uniform(-extent_mm / 2, extent_mm / 2, (n_rbf, 3))
        self.rbf_vectors = rng.normal(size=(n_rbf, 3))
        self.correlation_mm = correlation_mm
        # scale the elastic field so its largest displacement over the sampled domain is elastic_mm
        probe = self.center + rng.uniform(-extent_mm / 2, extent_mm / 2, (4000, 3))
        self.rbf_vectors *= elastic_mm / np.linalg.norm(self._elastic(probe), axis=1).max()

    def _elastic(self, p):
        d2 = ((p[:, None, :] - self.rbf_centres[None]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * self.correlation_mm**2)) @ self.rbf_vectors

    def __call__(self, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        out = np.array(points, dtype=float)
        for l, (c, r, t) in self.organs.items():
            sel = labels == l
            out[sel] = (out[sel] - c) @ r.T + c + t
        out = out + self._elastic(out)
        return self.s_global * (out - self.center) @ self.r_global.T + self.center + self.t_global


def make_case(surfaces: dict, rng: np.random.Generator, *, n_per_organ: int, noise_mm=1.0,
              mislabel_fraction=0.0, contact_mm=8.0) -> OrganCase:
    """``surfaces``: label → dense surface points (mm, LPS) of the moving segmentation."""
    labels = sorted(surfaces)
    centroids = {l: surfaces[l].mean(axis=0) for l in labels}
    center = np.mean(np.vstack([surfaces[l] for l in labels]), axis=0)
    truth = KnownDeformation(centroids, center, rng)

    def subsample(l):
        pts = surfaces[l]
        return pts[rng.choice(len(pts), size=min(n_per_organ, len(pts)), replace=False)]

    mov = {l: subsample(l) for l in labels}
    src = {l: subsample(l) for l in labels}  # a different subsample gives the fixed set
    m_pts = np.vstack([mov[l] for l in labels])
    m_lab = np.concatenate([np.full(len(mov[l]), l) for l in labels])
    f_src = np.vstack([src[l] for l in labels])
    f_lab = np.concatenate([np.full(len(src[l]), l) for l in labels])
    f_clean = truth(f_src, f_lab)
    f_pts = f_clean + rng.normal(scale=noise_mm, size=f_clean.shape)
    f_true = f_lab
    if mislabel_fraction > 0:
        f_lab = _mislabel_contacts(f_pts, f_lab, rng, mislabel_fraction, contact_mm)
    lm, lm_lab = _landmarks(surfaces)
    return OrganCase(m_pts, m_lab, f_pts, f_lab, f_true, f_clean, f_src, lm, truth(lm, lm_lab), lm_lab)


def _landmarks(surfaces: dict):
    pts, labs = [], []
    for l in sorted(surfaces):
        s = surfaces[l]
        pts += [s.mean(axis=0), s[np.argmax(s[:, 2])], s[np.argmin(s[:, 2])]]
        labs += [l, l, l]
    return np.array(pts), np.array(labs)


def _mislabel_contacts(points, labels, rng, fraction, contact_mm):
    """Give ``fraction`` of all points, chosen among those near another organ, that organ's label."""
    labels = labels.copy()
    n_target = int(round(fraction * len(points)))
    candidates, new_labels = [], []
    for l in np.unique(labels):
        others = labels != l
        tree = cKDTree(points[others])
        d, j = tree.query(points[labels == l], k=1)
        idx = np.flatnonzero(labels == l)[d < contact_mm]
        candidates.append(idx)
        new_labels.append(labels[others][j[d < contact_mm]])
    candidates = np.concatenate(candidates)
    new_labels = np.concatenate(new_labels)
    pick = rng.choice(len(candidates), size=min(n_target, len(candidates)), replace=False)
    labels[candidates[pick]] = new_labels[pick]
    return labels


def errors(case: OrganCase, fixed_to_moving) -> dict:
    """TRE at landmarks and over the surface, given a callable ``(points (N, 3), labels (N,)) -> (N, 3)``
    mapping fixed points to moving. ``labels`` are the organs the points truly belong to; the benchmark
    passes :func:`field_mapping`, which ignores them (a delivered displacement field knows no labels)."""
    lm = np.linalg.norm(fixed_to_moving(case.landmarks_fixed, case.landmark_labels) - case.landmarks_moving, axis=1)
    surf = np.linalg.norm(fixed_to_moving(case.fixed_clean, case.fixed_true_labels) - case.fixed_sources, axis=1)
    return {"landmark_tre_mm": float(lm.mean()), "surface_tre_mm": float(surf.mean()),
            "landmark_tre_max_mm": float(lm.max())}


def field_mapping(transform):
    """``(points (N, 3), labels) -> (N, 3)``: a fixed→moving SimpleITK transform (e.g. the displacement field
    a registration wrote) applied point by point; the labels are ignored."""

    def apply(points, labels=None):
        pts = np.asarray(points, dtype=float).reshape(-1, 3)
        return np.array([transform.TransformPoint(tuple(p)) for p in pts.tolist()]).reshape(-1, 3)

    return apply

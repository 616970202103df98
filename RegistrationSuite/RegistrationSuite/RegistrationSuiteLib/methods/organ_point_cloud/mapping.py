"""The fitted fixed→moving mapping T(p) = s R (p + v(p)) + t, evaluated exactly at arbitrary points.

v(p) is the Gaussian-process mean of paper eq. 5–6 with the kernel row of p's organ. A point whose organ is
not given takes the label of the nearest fixed surface point (the same rule as the dense field, but at full
resolution and without grid interpolation, so sliding organ boundaries stay sharp). With the per-organ
pre-alignment (:mod:`.organ_prealign`) a point is first moved by its organ's A_l and v is evaluated there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .bcpd import BCPDFit
from .config import LabelModel
from .kernel import KernelParams, gp_interpolate
from .organ_prealign import apply_organ_affine


@dataclass
class FittedMapping:
    """Everything needed to evaluate T anywhere (kept out of the JSON diagnostics).

    Attributes:
        fit: the EM result (control points, GP weights W, s, R, t).
        model: per-label Λ, B, S, U.
        fixed_points: ``(P, 3)`` all registered fixed surface points (LPS mm) and
        fixed_labels: ``(P,)`` their *internal* label ids, for the nearest-organ rule.
        budget_bytes: bound on temporary kernel blocks. device: torch device of the evaluation.
    """

    fit: BCPDFit
    model: LabelModel
    fixed_points: np.ndarray
    fixed_labels: np.ndarray
    budget_bytes: float
    device: object = "cpu"

    def organ_of(self, points: np.ndarray, labels: Optional[np.ndarray] = None) -> np.ndarray:
        """Internal organ ids ``(N,)``: from ``labels`` where they are registered organs, else nearest fixed point."""
        from scipy.spatial import cKDTree

        ids = np.full(points.shape[0], -1, dtype=np.int64)
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            known = np.isin(labels, self.model.labels)
            ids[known] = self.model.index_of(labels[known])
        todo = ids < 0
        if todo.any():
            _, nearest = cKDTree(self.fixed_points).query(points[todo])
            ids[todo] = self.fixed_labels[nearest]
        return ids

    def displacement(self, points: np.ndarray, organ_ids: np.ndarray) -> np.ndarray:
        """GP mean v ``(N, 3)`` mm at ``points (N, 3)`` with the kernel rows of ``organ_ids``."""
        fit = self.fit
        centre = fit.control_points.mean(axis=0)
        t = dict(dtype=torch.float64, device=self.device)
        v = gp_interpolate(torch.as_tensor(points - centre, **t),
                           torch.as_tensor(organ_ids, dtype=torch.int64, device=self.device),
                           torch.as_tensor(fit.control_points - centre, **t),
                           torch.as_tensor(fit.control_labels, dtype=torch.int64, device=self.device),
                           torch.as_tensor(fit.w, **t), KernelParams.from_model(self.model, torch.float64, self.device),
                           self.budget_bytes)
        return v.cpu().numpy()

    def apply(self, points: np.ndarray, labels: Optional[np.ndarray] = None) -> np.ndarray:
        """T(p) = s R (q + v(q)) + t, q = A_l(p) (the per-organ pre-alignment, identity without it), for
        ``points (N, 3)`` LPS mm (fixed space) → ``(N, 3)`` moving-space positions."""
        points = np.asarray(points, dtype=np.float64)
        organs = self.organ_of(points, labels)
        q = apply_organ_affine(points, organs, self.fit.organ_affine)
        v = self.displacement(q, organs)
        sim = self.fit.similarity
        return sim.s * (q + v) @ sim.R.T + sim.t

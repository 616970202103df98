"""Normalised mutual information over the overlap, optimised with Adam (the paper's AirLab refinement).

NMI = (H(F) + H(M)) / H(F, M) (Studholme et al. 1999, the overlap-invariant measure the paper cites) from a
Parzen-window joint histogram: 64 bins, triangular (first-order B-spline) windows of one bin width,
intensities mapped to [0, 1] by robust percentiles. Samples whose moving position leaves the moving domain
get weight 0, so only the overlap counts. The rigid update is ``fixed_to_moving = M0 · D(ω, τ)`` with ``D(x) = Exp(ω)(x − c) + c + τ``
(``c``: centroid of the overlap), so ``ω = τ = 0`` is the starting transform.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ...geometry import Grid

BINS = 64
MAX_POINTS = 10_000


def _skew(w: torch.Tensor) -> torch.Tensor:
    z = w.new_zeros(())
    return torch.stack([torch.stack([z, -w[2], w[1]]), torch.stack([w[2], z, -w[0]]),
                        torch.stack([-w[1], w[0], z])])


def _unit(values: np.ndarray) -> tuple:
    lo, hi = np.percentile(values, (0.5, 99.5))
    return float(lo), float(max(hi, lo + 1e-6))


def _bins(v: torch.Tensor):
    """Triangular (first-order B-spline) Parzen window: each value in [0, 1] splits its weight between two
    neighbouring bins; differentiable in ``v`` and O(N) (a Gaussian window costs O(N · bins))."""
    u = v.clamp(0.0, 1.0) * (BINS - 1)
    i0 = u.detach().floor().clamp(max=BINS - 2).long()
    frac = u - i0.to(u.dtype)
    return i0, frac


def nmi_from_samples(f: torch.Tensor, m: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """NMI of paired samples in [0, 1] with per-sample weights (0 = outside the overlap)."""
    fi, ff = _bins(f)
    mi, mf = _bins(m)
    joint = torch.zeros(BINS * BINS, dtype=m.dtype)
    for a, wa in ((fi, 1.0 - ff), (fi + 1, ff)):
        for b, wb in ((mi, 1.0 - mf), (mi + 1, mf)):
            joint = joint.index_add(0, a * BINS + b, weight * wa * wb)
    joint = joint.reshape(BINS, BINS) / weight.sum().clamp_min(1e-12)
    eps = 1e-12
    h_joint = -(joint * (joint + eps).log()).sum()
    pf, pm = joint.sum(1), joint.sum(0)
    return (-(pf * (pf + eps).log()).sum() - (pm * (pm + eps).log()).sum()) / h_joint.clamp_min(eps)


class _Problem:
    """Fixed samples and the (smoothed) moving volume of one level."""

    def __init__(self, fixed, moving, mask, sigma, shrink, seed):
        rng = np.random.default_rng(seed)
        if sigma > 0:
            fixed, moving = (sitk.SmoothingRecursiveGaussian(im, sigma) for im in (fixed, moving))
        farr = sitk.GetArrayViewFromImage(fixed)
        idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
        idx = idx[np.all(idx % max(1, int(shrink)) == 0, axis=1)] if len(idx) > MAX_POINTS else idx
        if len(idx) > MAX_POINTS:
            idx = idx[rng.choice(len(idx), MAX_POINTS, replace=False)]
        flo, fhi = _unit(farr[tuple(idx.T)])
        self.f = torch.from_numpy(np.clip((farr[tuple(idx.T)] - flo) / (fhi - flo), 0, 1)).double()
        self.points = torch.from_numpy(idx[:, ::-1] @ Grid.from_image(fixed).index_to_world()[:3, :3].T
                                       + np.asarray(fixed.GetOrigin())).double()
        marr = sitk.GetArrayFromImage(moving).astype(np.float64)
        mlo, mhi = _unit(marr)
        self.moving = torch.from_numpy(np.clip((marr - mlo) / (mhi - mlo), 0, 1))[None, None]
        self.world_to_index = torch.from_numpy(Grid.from_image(moving).world_to_index())
        self.size = torch.tensor(moving.GetSize(), dtype=torch.float64)

    def value(self, m0: torch.Tensor, center: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r = torch.matrix_exp(_skew(w))
        p = (self.points - center) @ r.T + center + t
        q = p @ m0[:3, :3].T + m0[:3, 3]
        idx = q @ self.world_to_index[:3, :3].T + self.world_to_index[:3, 3]
        inside = ((idx >= 0) & (idx <= self.size - 1)).all(dim=1).double()
        grid = (2.0 * idx / (self.size - 1) - 1.0)[None, :, None, None, :]
        m = F.grid_sample(self.moving, grid, align_corners=True).reshape(-1)
        return nmi_from_samples(self.f, m, inside)


def nmi_level(fixed, moving, current, mask, center, *, shrink, sigma, iterations, seed) -> np.ndarray:
    """One level of Adam ascent of NMI from ``current``; returns the best matrix seen."""
    prob = _Problem(fixed, moving, mask, sigma, shrink, seed)
    m0 = torch.from_numpy(np.asarray(current, dtype=float))
    c = torch.from_numpy(np.asarray(center, dtype=float))
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    t = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([{"params": [w], "lr": 0.004}, {"params": [t], "lr": 0.4 * max(1.0, shrink / 2)}])
    best = (-np.inf, np.zeros(3), np.zeros(3))
    for _ in range(int(iterations)):
        opt.zero_grad()
        value = prob.value(m0, c, w, t)
        if float(value.detach()) > best[0]:
            best = (float(value.detach()), w.detach().numpy().copy(), t.detach().numpy().copy())
        (-value).backward()
        opt.step()
    return _compose(np.asarray(current, dtype=float), np.asarray(center, dtype=float), best[1], best[2])


def _compose(m0: np.ndarray, center: np.ndarray, w: np.ndarray, t: np.ndarray) -> np.ndarray:
    r = torch.matrix_exp(_skew(torch.from_numpy(w))).numpy()
    d = np.eye(4)
    d[:3, :3] = r
    d[:3, 3] = center - r @ center + t
    return m0 @ d


def nmi_value(fixed, moving, fixed_to_moving, mask, *, seed: int = 0) -> float:
    """NMI over ``mask`` at ``fixed_to_moving`` (no smoothing)."""
    prob = _Problem(fixed, moving, mask, 0.0, 1, seed)
    z = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        return float(prob.value(torch.from_numpy(np.asarray(fixed_to_moving, float)), z, z, z))

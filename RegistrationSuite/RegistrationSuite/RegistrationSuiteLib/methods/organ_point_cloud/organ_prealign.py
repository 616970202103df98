"""Per-organ similarity (or rigid) pre-alignment: a piecewise-similarity EM between the global pre-alignment
and the MO-BCPD stage. **A departure from the paper** (see ``OrganPointCloudConfig.organ_prealign``).

Why: MO-BCPD's only organ-wise freedom is the deformation v ~ N(0, G) with G = Λ² S ⊙ exp(−d²/2B²). An organ
rotating by 10° about its centroid moves its far surface by ≈ 17 mm in a 200 mm liver, which under Λ = 10 mm,
B = 30 mm is an improbable (heavily shrunk) deformation; the global similarity cannot express organs that
rotate or slide relative to each other. Each organ l therefore first gets its own similarity

    T_l(y) = s_l R_l y + t_l        (fixed → moving, estimated by EM with v ≡ 0)

with the E-step of MO-BCPD (its label transition U and outlier weight ω; one σ per moving organ) and a
weighted Procrustes M-step on the rows of organ l (BCPD's similarity update restricted to that organ). The result is
folded into the fixed coordinates: with the global s, R, t,

    q = A_l(y) = (1/s) Rᵀ (T_l(y) − t)   so that   s R (A_l(y) + v(A_l(y))) + t = T_l(y) + s R v,

and MO-BCPD then runs unchanged on q (its kernel G is built on q; with S = I and rigid A_l that is the same
G). The delivered mapping is T(p) = s R (A_l(p) + v(A_l(p))) + t with l the organ of p.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from ...progress import Progress
from .estep import SparseState, Workspace, e_step

_MIN_ORGAN_POINTS = 10  # fewer fixed points in the EM subset: the organ keeps the global similarity


def fit_organ_similarities(pb, ly: torch.Tensor, n_labels: int, sim, cfg, progress: Progress, *, rigid: bool):
    """Piecewise-similarity EM in centred frames, one σ per label group (per organ when U = I).

    Each moving organ's points form one group of the E-step (:func:`.estep.build_groups`); giving every group
    its own σ_g makes each organ converge at its own pace (a large, badly aligned organ no longer keeps σ high
    for a small, well aligned one: with U = I this is one CPD per organ). The M-step is a weighted Procrustes
    per fixed organ with weights P/σ_g² (the maximiser of Σ_g Σ P |x − T_l y|² / 2σ_g²).

    Args:
        pb: the ``_Problem`` of :mod:`.bcpd` (centred x, y; label groups). ly: ``(M,)`` internal label ids of
            ``pb.y``. n_labels: L. sim: the global similarity (start of every organ). cfg: the config
            (``max_iterations``, ``min_iterations``, ``tolerance``, ``omega``, ``gamma``, …).
        rigid: keep every s_l equal to the global s (rotation + translation per organ only).

    Returns:
        ``(organs, iterations, sigma2)``: one ``Similarity`` T_l per internal label (centred frames) and the
        pooled final σ² (σ_g² weighted by each group's N̂), mm².
    """
    from .bcpd import Similarity, _log_outlier, _log_weights, initial_sigma2, update_sigma2

    d = pb.x.shape[1]
    organs = [Similarity(sim.s, sim.R.copy(), sim.t.copy()) for _ in range(n_labels)]
    rows = [torch.nonzero(ly == lab).squeeze(1) for lab in range(n_labels)]
    zeros = torch.zeros(pb.y64.shape[0], dtype=torch.float64, device=pb.y64.device)
    y_def = apply_similarities(pb.y64, rows, organs)
    sigma2 = [initial_sigma2(pb.x, y_def, cfg.gamma, [g]) for g in pb.groups]
    states, workspace, history = [SparseState() for _ in pb.groups], Workspace(), [np.sqrt(sigma2)]
    budget = cfg.memory_budget_mb * 2.0**20
    for it in range(1, cfg.max_iterations + 1):
        progress.report((it - 1) / cfg.max_iterations, f"per-organ pre-alignment iteration {it}")
        parts, nu, px = [], torch.zeros_like(zeros), torch.zeros_like(pb.y64)
        for g, s2, state in zip(pb.groups, sigma2, states):
            x = pb.x64 if pb.x.dtype == torch.float32 and 6e-8 * pb.radius2 / s2 > 1e-3 else pb.x
            part = e_step(x, y_def.to(x.dtype), [g], _log_weights(zeros, 1.0, s2, d), s2,
                          _log_outlier(cfg.omega, pb.log_p_out, s2, d), budget_bytes=budget,
                          cutoff=cfg.estep_cutoff_sigma, sparse_states=[state], workspace=workspace)
            parts.append(part)
            nu += part.nu / s2
            px += part.px / s2
        for lab, r in enumerate(rows):
            if r.numel() >= _MIN_ORGAN_POINTS and float(nu[r].sum()) > 0:
                organs[lab] = _organ_procrustes(nu[r], px[r], pb.y64[r], sim.s if rigid else None)
        y_def = apply_similarities(pb.y64, rows, organs)
        sigma2 = [max(update_sigma2(part, pb.x_sq_norm, y_def, 1.0, zeros), 1e-12 * pb.scale**2)
                  if float(part.nu.sum()) > 1e-9 else s2 for part, s2 in zip(parts, sigma2)]
        history.append(np.sqrt(sigma2))
        if it >= cfg.min_iterations and np.abs(history[-1] - history[-2]).max() / pb.scale < cfg.tolerance:
            break
    n_hat = np.array([float(part.nu.sum()) for part in parts])
    return organs, it, float(np.sum(n_hat * np.asarray(sigma2)) / max(n_hat.sum(), 1e-12))


def _organ_procrustes(nu, px, y, fixed_scale):
    """Weighted Procrustes of one organ (BCPD's similarity M-step with σ̄² = 0); ``fixed_scale`` keeps s."""
    from .bcpd import Similarity, update_similarity

    out = update_similarity(SimpleNamespace(nu=nu, px=px), y, torch.zeros_like(nu))
    if fixed_scale is None:
        return out
    n_hat = nu.sum()
    x_bar = (px.sum(dim=0) / n_hat).cpu().numpy()
    y_bar = ((nu[:, None] * y).sum(dim=0) / n_hat).cpu().numpy()
    return Similarity(float(fixed_scale), out.R, x_bar - fixed_scale * out.R @ y_bar)


def apply_similarities(y: torch.Tensor, rows, organs) -> torch.Tensor:
    """``(M, D)`` float64: T_l(y_m) for every point, l its organ (``rows[l]`` its indices)."""
    out = y.clone()
    for r, sim in zip(rows, organs):
        if r.numel():
            a = torch.as_tensor(sim.s * sim.R, dtype=y.dtype, device=y.device)
            out[r] = y[r] @ a.T + torch.as_tensor(sim.t, dtype=y.dtype, device=y.device)
    return out


def fold_into_fixed(organs, sim, cy: np.ndarray) -> np.ndarray:
    """Per-organ affine maps ``(L, 3, 4)`` [a | b] of q = A_l(p) = a p + b, **original** frame, from the organ
    similarities T_l and the global one (both in centred frames, ``cy`` the fixed centroid)."""
    out = []
    for org in organs:
        a = (org.s / sim.s) * sim.R.T @ org.R
        b_c = sim.R.T @ (org.t - sim.t) / sim.s
        out.append(np.concatenate([a, (b_c + cy - a @ cy)[:, None]], axis=1))
    return np.stack(out)


def apply_organ_affine(points: np.ndarray, organ_ids: np.ndarray, affine) -> np.ndarray:
    """q = A_l(p) for ``points (N, 3)`` (original frame) with organs ``organ_ids (N,)``; identity if ``affine``
    is None. Returns ``(N, 3)`` float64."""
    points = np.asarray(points, dtype=np.float64)
    if affine is None:
        return points
    a = affine[organ_ids]
    return np.einsum("nij,nj->ni", a[:, :, :3], points) + a[:, :, 3]

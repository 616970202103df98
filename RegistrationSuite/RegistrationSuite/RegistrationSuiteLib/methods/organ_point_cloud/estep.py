"""MO-BCPD E-step: posterior correspondence probabilities P (never stored as one dense M×N matrix).

For moving point x_n (label b) and deformed fixed point y'_m (label a)::

    P_mn = α_m U_ab φ_mn / (c + Σ_m' α_m' U_a'b φ_m'n),
    φ_mn = exp(−|x_n − y'_m|² / 2σ²) · exp(−D s² σ_m² / 2σ²),
    c    = ω/(1 − ω) · p_out · (2πσ²)^{D/2}

(BCPD, Hirose 2021, with the label transition U of MO-BCPD eq. 1; α_m = 1/M as κ → ∞). Only the sufficient
statistics leave this module: ν_m = Σ_n P_mn, ν'_n = Σ_m P_mn and (PX)_m = Σ_n P_mn x_n.

Moving points are processed per label b against the fixed points with U_ab > 0 only (U = I: one organ
against the same organ), in row chunks bounded by a memory budget, with a per-row log-sum-exp shift so
nothing underflows when σ is small. On CPU, once σ is small, a k-nearest-neighbour E-step (KD-tree, float64)
is used when it provably keeps every term above exp(−c²/2) times its row's largest term (``cutoff`` = c):
each moving point's neighbourhood radius is chosen so that everything outside it is below that bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from .kernel import rows_per_chunk

# exp() of arguments far below the float32 range takes a slow path (measured 20-50x slower); terms below
# exp(-80) ~ 2e-35 of a row's largest are negligible, so exponents are clamped there first.
EXP_FLOOR = -80.0
_DENSE_PER_NEIGHBOUR = 40  # a neighbour costs about this many dense pair evaluations (KD-tree + gather)


@dataclass
class LabelGroup:
    """Moving points of one label b and the fixed points that may generate them.

    Attributes:
        x_idx: ``(N_b,)`` rows of X with label b.
        y_idx: ``(M_b,)`` rows of Y whose label a has U_ab > 0.
        log_u: ``(M_b,)`` log U_ab for those rows.
    """

    x_idx: torch.Tensor
    y_idx: torch.Tensor
    log_u: torch.Tensor


@dataclass
class EStepStats:
    """Sufficient statistics of P, float64.

    Attributes:
        nu: ``(M,)`` ν_m = Σ_n P_mn.  nu_x: ``(N,)`` ν'_n = Σ_m P_mn (1 − outlier probability).
        px: ``(M, D)`` Σ_n P_mn x_n (mm).  sparse: True when every group used the k-NN path.
    """

    nu: torch.Tensor
    nu_x: torch.Tensor
    px: torch.Tensor
    sparse: bool = False

    @property
    def n_hat(self) -> float:
        """N̂ = Σ_m ν_m, the expected number of inliers."""
        return float(self.nu.sum())


@dataclass
class SparseState:
    """k-NN E-step memory of one label group.

    Attributes:
        blocked_above: after the k-NN path was refused at σ², it is not retried until σ² < 0.8 × that.
        used: E-steps of this group that used the k-NN path.
    """

    blocked_above: float = float("inf")
    used: int = 0


@dataclass
class Workspace:
    """Reusable scratch memory for the dense blocks (fresh large CPU allocations cost page faults)."""

    buffers: Dict[torch.dtype, torch.Tensor] = field(default_factory=dict)

    def get(self, numel: int, dtype, device) -> torch.Tensor:
        buf = self.buffers.get(dtype)
        if buf is None or buf.numel() < numel or buf.device != device:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self.buffers[dtype] = buf
        return buf[:numel]


def build_groups(lx: torch.Tensor, ly: torch.Tensor, transition: np.ndarray) -> List[LabelGroup]:
    """One :class:`LabelGroup` per moving label present; ``transition[a, b]`` = U_ab (fixed a → moving b)."""
    u = torch.as_tensor(transition, dtype=torch.float64, device=ly.device)
    groups = []
    for b in torch.unique(lx).tolist():
        weights = u[ly, b]
        y_idx = torch.nonzero(weights > 0).squeeze(1)
        groups.append(LabelGroup(torch.nonzero(lx == b).squeeze(1), y_idx, torch.log(weights[y_idx])))
    return groups


def e_step(x, y_def, groups, log_w, sigma2: float, log_c: float, *, budget_bytes: float,
           cutoff: Optional[float] = None, sparse_states: Optional[List[SparseState]] = None,
           workspace: Optional[Workspace] = None) -> EStepStats:
    """Compute the E-step statistics.

    Args:
        x: ``(N, D)`` moving points (mm, centred). y_def: ``(M, D)`` deformed fixed points y'_m = T(y_m) (mm).
            Their dtype is the dtype of the dense path.
        groups: from :func:`build_groups`.
        log_w: ``(M,)`` log α_m − D s² σ_m² / (2σ²).
        sigma2: σ² in mm². log_c: log of the outlier term c (``-inf`` when ω = 0).
        budget_bytes: bound on the temporary ``(chunk, M_b)`` block.
        cutoff: c of the k-NN path (``None``: always dense).
        sparse_states: one :class:`SparseState` per group (``None``: always dense).
        workspace: scratch memory reused between calls.
    """
    m, n, d = y_def.shape[0], x.shape[0], x.shape[1]
    f64 = dict(dtype=torch.float64, device=x.device)
    stats = EStepStats(torch.zeros(m, **f64), torch.zeros(n, **f64), torch.zeros(m, d, **f64), True)
    workspace = workspace or Workspace()
    for i, g in enumerate(groups):
        lw = log_w[g.y_idx].double() + g.log_u
        xg, yg = x[g.x_idx], y_def[g.y_idx]
        part = None
        if cutoff is not None and x.device.type == "cpu" and sparse_states is not None:
            part = _knn_group(xg, yg, lw, sigma2, log_c, cutoff, sparse_states[i])
        if part is None:
            part = _dense_group(xg, yg, lw.to(x.dtype), sigma2, log_c, budget_bytes, workspace)
            stats.sparse = False
        nu_g, nux_g, px_g = part
        stats.nu.index_add_(0, g.y_idx, nu_g)
        stats.px.index_add_(0, g.y_idx, px_g)
        stats.nu_x[g.x_idx] = nux_g
    return stats


def _normalise_(logits: torch.Tensor, log_c) -> torch.Tensor:
    """In place: rows of ``logits`` → P_mn = exp(l_mn) / (c_n + Σ_m exp(l_mn)) by log-sum-exp.

    ``log_c`` is a float, a ``(rows, 1)`` tensor of per-row log c_n, or ``None`` (no outlier term)."""
    shift = logits.amax(dim=1, keepdim=True)
    if log_c is not None:
        shift = torch.maximum(shift, torch.as_tensor(log_c, dtype=shift.dtype, device=shift.device))
    logits.sub_(shift).clamp_(min=EXP_FLOOR).exp_()
    denom = logits.sum(dim=1, keepdim=True)
    if log_c is not None:
        denom = denom + torch.exp(log_c - shift)
    return logits.div_(denom)


def _dense_group(xg, yg, lw, sigma2: float, log_c: float, budget_bytes: float, workspace: Workspace):
    """Exact statistics of one label group, in chunks of moving points.

    The block is l_mn = x_n·y_m/σ² + (lw_m − |y_m|²/2σ²), the exponent up to the per-row constant
    −|x_n|²/2σ², which cancels in the normalisation and is moved into the outlier term instead; one GEMM
    with augmented operands [x, 1]·[y/σ²; bias] builds it in reused memory, and a second GEMM returns
    Σ_n E_mn [x_n, 1] / den_n (PX and ν) without normalising the block.
    """
    m_b, n_b, d = yg.shape[0], xg.shape[0], xg.shape[1]
    ya = torch.cat([yg.T / sigma2, (lw - yg.square().sum(dim=1) / (2.0 * sigma2))[None, :]], dim=0)
    acc = torch.zeros(d + 1, m_b, dtype=torch.float64, device=xg.device)
    nux = torch.zeros(n_b, dtype=torch.float64, device=xg.device)
    step = min(n_b, rows_per_chunk(m_b, budget_bytes, xg.element_size(), temporaries=1))
    buf = workspace.get(step * m_b, xg.dtype, xg.device)
    for s in range(0, n_b, step):
        xa = torch.cat([xg[s:s + step], torch.ones_like(xg[s:s + step, :1])], dim=1)
        e = torch.mm(xa, ya, out=buf[: xa.shape[0] * m_b].view(xa.shape[0], m_b))
        shift = e.amax(dim=1, keepdim=True)
        log_c_rows = None
        if np.isfinite(log_c):
            log_c_rows = log_c + xa[:, :d].square().sum(dim=1, keepdim=True) / (2.0 * sigma2)
            shift = torch.maximum(shift, log_c_rows)
        e.sub_(shift).clamp_(min=EXP_FLOOR).exp_()
        inlier = e.sum(dim=1, keepdim=True)
        denom = inlier if log_c_rows is None else inlier + torch.exp(log_c_rows - shift)
        acc += ((xa / denom).T @ e).double()
        nux[s:s + step] = (inlier / denom).squeeze(1).double()
    return acc[d], nux, acc[:d].T


def _knn_group(xg, yg, lw, sigma2: float, log_c: float, cutoff: float, state: SparseState):
    """Statistics from each moving point's neighbourhood, or ``None`` (caller goes dense) when the
    neighbourhoods needed for the exp(−cutoff²/2) guarantee are too large to pay off.

    For x_n with nearest fixed point m₁ at distance d₁, every m farther than
    r_n = sqrt(d₁² + 2σ²(c²/2 + max lw − lw_{m₁})) has l_mn < l_{m₁n} − c²/2, so the k_n = |ball(r_n)|
    nearest neighbours hold every term that is not negligible. Rows are queried in two tiers (k up to the
    95th percentile of k_n, then the rest with the largest k_n) so a few crowded points do not set k for all.
    """
    from scipy.spatial import cKDTree

    m_b, n_b = yg.shape[0], xg.shape[0]
    budget = n_b * m_b / _DENSE_PER_NEIGHBOUR  # neighbour evaluations that cost about one dense pass
    if m_b < 4 * _DENSE_PER_NEIGHBOUR or sigma2 >= 0.8 * state.blocked_above:
        return None
    tree = cKDTree(yg.detach().cpu().double().numpy())
    xs = xg.detach().cpu().double().numpy()
    lw64 = lw.detach().cpu().double().numpy()
    d1, i1 = tree.query(xs, k=1)
    radius = np.sqrt(d1**2 + 2.0 * sigma2 * (0.5 * cutoff**2 + lw64.max() - lw64[i1]))
    probe = slice(None, None, max(1, n_b // 256))  # a cheap early refusal on a subset
    if np.median(tree.query_ball_point(xs[probe], radius[probe], return_length=True)) * n_b > budget:
        state.blocked_above = sigma2
        return None
    counts = np.maximum(tree.query_ball_point(xs, radius, return_length=True), 1)
    k1 = int(np.percentile(counts, 95))
    tiers = [(counts <= k1, k1), (counts > k1, int(counts.max()))]
    if sum(int(mask.sum()) * k for mask, k in tiers) > budget:
        state.blocked_above = sigma2
        return None
    state.used += 1
    state.blocked_above = float("inf")
    dev = xg.device
    nu = torch.zeros(m_b, dtype=torch.float64, device=dev)
    px = torch.zeros(m_b, xg.shape[1], dtype=torch.float64, device=dev)
    nux = torch.zeros(n_b, dtype=torch.float64, device=dev)
    for mask, k in tiers:
        if not mask.any():
            continue
        dist, ind = tree.query(xs[mask], k=k)
        dist, ind = dist.reshape(-1, k), ind.reshape(-1, k)
        p = _normalise_(torch.as_tensor(lw64[ind] - dist**2 / (2.0 * sigma2)), log_c if np.isfinite(log_c) else None)
        _scatter(xg[torch.as_tensor(np.nonzero(mask)[0], device=dev)], torch.as_tensor(ind), p, nu, px)
        nux[torch.as_tensor(np.nonzero(mask)[0], device=dev)] = p.sum(dim=1).to(dev)
    return nu, nux, px


def _scatter(xg, ind, p: torch.Tensor, nu: torch.Tensor, px: torch.Tensor) -> None:
    """Add ``(rows, k)`` probabilities at neighbour indices ``ind`` into ν and PX (in place)."""
    dev = xg.device
    p, flat = p.to(dev), ind.to(dev).reshape(-1)
    nu.index_add_(0, flat, p.reshape(-1))
    px.index_add_(0, flat, (p[:, :, None] * xg.double()[:, None, :]).reshape(-1, xg.shape[1]))


def dense_probabilities(x, y_def, lx, ly, transition, log_w, sigma2: float, log_c: float) -> torch.Tensor:
    """The full ``(M, N)`` matrix P in one piece (reference for tests on small sets only)."""
    u = torch.as_tensor(transition, dtype=x.dtype, device=x.device)[ly][:, lx]
    logits = (-torch.cdist(y_def, x).square() / (2.0 * sigma2) + log_w[:, None] + torch.log(u)).T
    p = _normalise_(logits.contiguous(), log_c if np.isfinite(log_c) else None).T
    return p * (u > 0)  # forbidden pairs (U = 0) stay exactly 0 despite the exponent floor

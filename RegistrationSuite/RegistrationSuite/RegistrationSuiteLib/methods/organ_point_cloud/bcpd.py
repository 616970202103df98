"""Multi-organ Bayesian coherent point drift (MO-BCPD): the variational EM on point sets, in millimetres.

Model (BCPD, Hirose, TPAMI 2021; MO-BCPD, Joutard et al., WBIR 2022): the **fixed** points Y (M, generating
side, "source" in the papers) move by T(y) = s R (y + v(y)) + t onto the **moving** points X (N, data side,
"target"), so T maps fixed → moving positions, the direction of a registration transform here.
The prior is v^d ~ N(0, G) with G the MO-BCPD kernel (see :mod:`.kernel`); Λ² plays BCPD's 1/λ, so λ = 1.

One iteration (BCPD algorithm 1 with the MO-BCPD kernel and label transition):

1. E-step (:func:`.estep.e_step`): ν, ν', PX.
2. Deformation (:func:`update_deformation`): with D = (s²/σ²) diag(ν) and r = T⁻¹(x̂) − Y,
   Σ = (G⁻¹ + D)⁻¹, v̂ = Σ D r  (≡ G (G + D⁻¹)⁻¹ r, the Woodbury form of the notes' solve), u = Y + v̂.
   With G ≈ Qh Qhᵀ (rank K): Σ = Z Zᵀ, Z = Qh chol(I + Qhᵀ D Qh)⁻ᵀ — O(M K²), no M×M solve, and ν_m = 0
   needs no special case. σ_m² = Σ_mm is the low-rank posterior variance (variance outside the K leading
   eigenvectors, whose prior variance was truncated, is ignored). GP weights W: G_K W = v̂ (see there).
3. Similarity (:func:`update_similarity`): weighted Procrustes with the determinant fix and σ̄² in S_uu.
4. σ² (:func:`update_sigma2`): σ² = Σ_mn P_mn |x_n − y'_m|² / (N̂ D) + s² σ̄².

Stop when |Δσ| / r < tolerance (r: RMS radius of X) after ``min_iterations``.

Initialisation: s = 1, R = I, t = 0 in frames where each set is centred (BCPD normalises each set; here only
the centroids are removed, so everything stays in mm), v = 0, σ₀ from :func:`initial_sigma2`, α_m = 1/M.
Pipeline (:func:`run_bcpd`): by default a similarity-only EM ("Sim") on ≤ 1500 points per set, then a
per-organ rigid EM folded into the fixed coordinates (:mod:`.organ_prealign`, not in the paper), then MO-BCPD
from the organ stage's σ with s, R, t kept (see ``OrganPointCloudConfig.prealign`` and ``organ_prealign``);
``organ_prealign="none"`` starts MO-BCPD from a fresh σ₀ after "Sim"; ``prealign=False`` is plain BCPD.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from ...device import resolve_device
from ...errors import InputError, RegistrationFailed
from ...progress import Progress
from .config import LabelModel, OrganPointCloudConfig
from .estep import EStepStats, SparseState, Workspace, build_groups, e_step
from .kernel import KernelBasis, KernelParams, describe_basis, lowrank_kernel
from .organ_prealign import apply_organ_affine, fit_organ_similarities, fold_into_fixed
from .sampling import label_shares, spread_subset

# The dense E-step works with exponents of size |x||y|/σ²; float32 keeps them to ~1e-3 only while
# eps32 · R² / σ² stays below this, after which that E-step runs in float64.
_FLOAT32_LOGIT_ERROR = 1e-3
_PREALIGN_POINTS = 1500  # per set, for the similarity-only pre-alignment


@dataclass
class Similarity:
    """T(y) = s R (y + v) + t (centred frames inside the loop; original mm frame in :class:`BCPDFit`)."""

    s: float = 1.0
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    t: np.ndarray = field(default_factory=lambda: np.zeros(3))


@dataclass
class Deformation:
    """Posterior of v at the fixed (control) points: mean ``v (M, D)`` mm, GP weights ``w (M, D)`` and the
    marginal variances ``sigma_m2 (M,)`` mm² (float64)."""

    v: torch.Tensor
    w: torch.Tensor
    sigma_m2: torch.Tensor


@dataclass
class BCPDFit:
    """Outcome of :func:`run_bcpd`, in the original (uncentred) LPS mm frame.

    Attributes:
        similarity: s, R ``(3, 3)``, t ``(3,)`` of T(y) = sR(y + v(y)) + t (fixed → moving).
        control_points: ``(M, 3)`` fixed points the EM ran on; control_labels ``(M,)`` internal label ids.
        v: ``(M, 3)`` displacement at the control points (mm). w: ``(M, 3)`` GP weights (v = G W).
        sigma: final σ (mm); sigma_history: σ after each iteration; iterations; converged.
        knn_iterations: E-steps that used the k-NN path; basis: description of the G decomposition.
        organ_affine: with the per-organ pre-alignment, ``(L, 3, 4)`` maps [a | b] of q = A_l(p) = a p + b
            (original frame); ``control_points`` are then q-space points and T(p) = sR(A_l(p) + v(A_l(p))) + t.
    """

    similarity: Similarity
    control_points: np.ndarray
    control_labels: np.ndarray
    v: np.ndarray
    w: np.ndarray
    sigma: float
    sigma_history: List[float]
    iterations: int
    converged: bool
    knn_iterations: int
    basis: dict
    warnings: List[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    prealign_iterations: int = 0
    organ_prealign_iterations: int = 0
    organ_affine: Optional[np.ndarray] = None  # (L, 3, 4): q = A_l(p), see organ_prealign; None = identity


@dataclass
class _Problem:
    """Tensors and constants of one run (centred frames)."""

    x: torch.Tensor  # (N, D) moving points minus cx, working dtype
    x64: torch.Tensor  # (N, D) float64 copy
    y: torch.Tensor  # (M, D) fixed points minus cy, working dtype
    y64: torch.Tensor  # (M, D) float64 copy
    x_sq_norm: torch.Tensor  # (N,) |x_n|², float64
    cx: np.ndarray
    cy: np.ndarray
    groups: list
    basis: Optional[KernelBasis]
    log_p_out: float
    scale: float  # RMS radius of X (mm), unit of the stopping tolerance
    radius2: float  # bound on |x|², |y'|² in the centred frames (mm²), for the float32 precision rule
    fixed_labels: torch.Tensor  # (M,) internal label ids of y


# -------------------------------------------------------------------------------------------------- M-step


def update_deformation(stats: EStepStats, y: torch.Tensor, basis: KernelBasis, sim: Similarity,
                       sigma2: float) -> Deformation:
    """Posterior of v given P (BCPD's Σ and v̂ with λ = 1 and G ≈ Qh Qhᵀ = Q Λ_K Qᵀ).

    Args:
        stats: E-step statistics. y: ``(M, D)`` fixed points (float64, centred frame).
        basis: low-rank factor of G (float64, mm). sim: current s, R, t. sigma2: σ² (mm²).

    Returns:
        v̂ = Z Zᵀ D r, σ_m² = |Z_m|² with Z = Qh chol(I + Qhᵀ D Qh)⁻ᵀ, and the GP weights
        W = Q Qᵀ D (r − v̂): the solution of (G_K + D⁻¹) W = r restricted to span(Q), so that G_K W = v̂ and
        the GP mean G(p, Y) W stays bounded (the part of D (r − v̂) outside span(Q) is invisible to G_K but
        would be amplified by the exact cross-kernel when σ is small).
    """
    qh = basis.qh
    k = sim.s**2 / sigma2
    r_mat = torch.as_tensor(sim.R, dtype=torch.float64, device=y.device)
    t_vec = torch.as_tensor(sim.t, dtype=torch.float64, device=y.device)
    nu = stats.nu[:, None]
    # D r = (s²/σ²) ν (T⁻¹(x̂) − y) with T⁻¹(x̂) = Rᵀ(x̂ − t)/s, written without dividing by ν.
    d_r = (sim.s / sigma2) * ((stats.px - nu * t_vec) @ r_mat) - k * nu * y
    inner = torch.eye(qh.shape[1], dtype=torch.float64, device=y.device) + k * (qh.T @ (nu * qh))
    chol = torch.linalg.cholesky(inner)
    z = torch.linalg.solve_triangular(chol, qh.T, upper=False).T  # Z = qh L⁻ᵀ, Σ = Z Zᵀ
    v = z @ (z.T @ d_r)
    q = qh / torch.sqrt(basis.eigenvalues)[None, :]
    w = q @ (q.T @ (d_r - k * nu * v))
    return Deformation(v=v, w=w, sigma_m2=(z * z).sum(dim=1))


def update_similarity(stats: EStepStats, u: torch.Tensor, sigma_m2: torch.Tensor) -> Similarity:
    """Weighted Procrustes for s, R, t of x̂ ≈ sR u + t (BCPD's ρ update, σ̄² included in S_uu)."""
    n_hat = stats.nu.sum()
    x_bar = stats.px.sum(dim=0) / n_hat
    wu = stats.nu[:, None] * u
    u_bar = wu.sum(dim=0) / n_hat
    s2_bar = (stats.nu * sigma_m2).sum() / n_hat
    s_xu = (stats.px.T @ u / n_hat - torch.outer(x_bar, u_bar)).cpu().numpy()
    s_uu = (wu.T @ u / n_hat - torch.outer(u_bar, u_bar)).cpu().numpy() + float(s2_bar) * np.eye(u.shape[1])
    phi, psi, vt = np.linalg.svd(s_xu)
    c = np.ones(u.shape[1])
    c[-1] = np.sign(np.linalg.det(phi @ vt)) or 1.0
    rot = phi @ np.diag(c) @ vt
    s = float(np.sum(psi * c) / np.trace(s_uu))
    t = x_bar.cpu().numpy() - s * rot @ u_bar.cpu().numpy()
    return Similarity(s, rot, t)


def update_sigma2(stats: EStepStats, x_sq_norm: torch.Tensor, y_def: torch.Tensor, s: float,
                  sigma_m2: torch.Tensor) -> float:
    """σ² = [Σ_n ν'_n |x_n|² − 2 Σ_m (PX)_m·y'_m + Σ_m ν_m |y'_m|²] / (N̂ D) + s² σ̄²  (mm²)."""
    n_hat = float(stats.nu.sum())
    d = y_def.shape[1]
    fit = (stats.nu_x @ x_sq_norm) - 2.0 * (stats.px * y_def).sum() + (stats.nu @ y_def.square().sum(dim=1))
    s2_bar = float((stats.nu * sigma_m2).sum()) / n_hat
    return max(float(fit) / (n_hat * d), 0.0) + s * s * s2_bar


def deformed(y: torch.Tensor, v: torch.Tensor, sim: Similarity) -> torch.Tensor:
    """y' = s R (y + v) + t, ``(M, D)`` float64."""
    r_mat = torch.as_tensor(sim.R, dtype=torch.float64, device=y.device)
    return sim.s * (y + v) @ r_mat.T + torch.as_tensor(sim.t, dtype=torch.float64, device=y.device)


# ------------------------------------------------------------------------------------------------ the loop


def initial_sigma2(x: torch.Tensor, y: torch.Tensor, gamma: float, groups: Optional[list] = None) -> float:
    """σ₀² = γ² · mean |x_n − y_m|² / D over the pairs the E-step compares (METHOD_NOTES: σ₀ = γ·RMS
    distance/√D). BCPD averages over all M·N pairs; with organ groups (MO-BCPD) the pairs are weighted by
    U_{l(y_m), l(x_n)}, so with U = I each organ is only compared with itself. Closed form per group."""
    d = x.shape[1]
    x64, y64 = x.double(), y.double()
    if groups is None:
        total = y.shape[0] * x64.square().sum() + x.shape[0] * y64.square().sum() - 2.0 * (x64.sum(0) @ y64.sum(0))
        return gamma**2 * float(total) / (x.shape[0] * y.shape[0] * d)
    total, weight = 0.0, 0.0
    for g in groups:
        xg, yg, u = x64[g.x_idx], y64[g.y_idx], torch.exp(g.log_u)
        total += float(u.sum() * xg.square().sum() + xg.shape[0] * (u @ yg.square().sum(1))
                       - 2.0 * (xg.sum(0) @ (u @ yg)))
        weight += float(u.sum()) * xg.shape[0]
    return gamma**2 * total / (weight * d)


def _prepare(x_np, lx, y_np, ly, model: LabelModel, cfg: OrganPointCloudConfig, notes: list, *,
             centres=None, with_basis: bool = True) -> _Problem:
    """Centre the sets (separately with ``similarity``, as BCPD normalises; jointly without), move them to the
    device and decompose G. ``centres=(cx, cy)`` reuses another problem's frames (pre-alignment subset)."""
    device = resolve_device(cfg.device)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    if centres is None:
        centres = (x_np.mean(axis=0) if cfg.similarity else y_np.mean(axis=0), y_np.mean(axis=0))
    cx, cy = centres
    x64 = torch.as_tensor(x_np - cx, dtype=torch.float64, device=device)
    y64 = torch.as_tensor(y_np - cy, dtype=torch.float64, device=device)
    lx_t = torch.as_tensor(lx, dtype=torch.int64, device=device)
    ly_t = torch.as_tensor(ly, dtype=torch.int64, device=device)
    extent = np.maximum(np.ptp(x_np, axis=0), 1e-3)
    radius2 = 4.0 * max(float(x64.square().sum(1).max()), float(y64.square().sum(1).max()))
    pb = _Problem(
        x=x64.to(dtype), x64=x64, y=y64.to(dtype), y64=y64, radius2=radius2, x_sq_norm=x64.square().sum(dim=1), cx=cx, cy=cy,
        groups=build_groups(lx_t, ly_t, model.transition), basis=None, fixed_labels=ly_t,
        log_p_out=-float(np.sum(np.log(extent))), scale=float(torch.sqrt(x64.square().sum(1).mean())) or 1.0)
    if with_basis:
        _attach_basis(pb, model, cfg, notes)
    return pb


def _log_weights(sigma_m2: torch.Tensor, s: float, sigma2: float, d: int) -> torch.Tensor:
    """log α_m − D s² σ_m² / (2σ²) with α_m = 1/M (κ → ∞), float64 ``(M,)``."""
    m = sigma_m2.shape[0]
    return -math.log(m) - d * s * s * sigma_m2 / (2.0 * sigma2)


def _log_outlier(omega: float, log_p_out: float, sigma2: float, d: int) -> float:
    """log c = log(ω/(1−ω)) + log p_out + (D/2) log(2πσ²); −inf when ω = 0."""
    if omega <= 0:
        return -math.inf
    return math.log(omega / (1.0 - omega)) + log_p_out + 0.5 * d * math.log(2.0 * math.pi * sigma2)


def run_bcpd(x: np.ndarray, lx: np.ndarray, y: np.ndarray, ly: np.ndarray, model: LabelModel,
             config: OrganPointCloudConfig, progress: Optional[Progress] = None) -> BCPDFit:
    """Register fixed points ``y (M, 3)`` onto moving points ``x (N, 3)`` (LPS mm) with MO-BCPD.

    With ``config.similarity and config.prealign`` a similarity-only EM (v ≡ 0, the paper's "Sim") first runs
    on a stratified subset of at most ``_PREALIGN_POINTS`` points per set; MO-BCPD then starts from that
    s, R, t with σ re-initialised (γ · RMS distance at the pre-aligned pose) and keeps s, R, t fixed unless
    ``config.refine_similarity``. Without ``prealign`` s, R, t are updated jointly from identity (BCPD).

    Args:
        x, y: moving / fixed coordinates in mm. lx, ly: ``(N,)``, ``(M,)`` internal label ids (0..L-1).
        model: per-label Λ, B, S, U. config: EM and numerical options. progress: reporter (checks cancel).

    Returns:
        :class:`BCPDFit` with T(y) = sR(y + v) + t mapping fixed → moving in the original frame.

    Raises:
        RegistrationFailed: every moving point became an outlier (N̂ = 0) or σ became non-finite.
    """
    _check_shapes(x, lx, y, ly)
    progress = progress or Progress()
    notes: list = []
    t0 = time.perf_counter()
    pb = _prepare(x, lx, y, ly, model, config, notes, with_basis=False)
    sim, pre, organ_pre, affine = Similarity(1.0, np.eye(x.shape[1]), np.zeros(x.shape[1])), 0, 0, None
    sigma2 = initial_sigma2(pb.x, pb.y, config.gamma, pb.groups)
    if config.similarity and config.prealign:
        sim, pre = _prealign(x, lx, y, ly, model, config, (pb.cx, pb.cy), progress.sub(0.0, 0.2))
        # A fresh annealing start: organs that the similarity could not align (e.g. moving in opposite
        # directions) are only captured again when σ is of the order of the whole configuration.
        sigma2 = initial_sigma2(pb.x, deformed(pb.y64, 0.0, sim), config.gamma, pb.groups)
        if config.organ_prealign_mode() != "none":
            # Organs are aligned one by one now: MO-BCPD continues from their σ. A fresh σ₀ of the size of
            # the organs lets v shrink every organ towards its moving centroid first (measured on one
            # synthetic case: exact landmark TRE 1.2 mm after the organ stage, 2.7 mm after MO-BCPD from a
            # fresh σ₀, 2.2 mm from the organ stage's σ; Λ = 10 mm, B = 30 mm).
            affine, organ_pre, sigma2 = _organ_stage(pb, model, config, sim, progress.sub(0.2, 0.3))
    t_kernel = time.perf_counter()
    _attach_basis(pb, model, config, notes)
    t_kernel = time.perf_counter() - t_kernel
    run = _Run(sim, _zero_deformation(pb), sigma2, [SparseState() for _ in pb.groups])
    run.history.append(math.sqrt(run.sigma2))
    update_sim = config.similarity and (config.refine_similarity or not config.prealign)
    start = 0.3 if organ_pre else (0.2 if pre else 0.0)
    it, converged = _em_loop(pb, config, run, progress.sub(start, 1.0), True, update_sim)
    fit = _finish(pb, run, it, converged, notes, {"kernel": t_kernel, "em": time.perf_counter() - t0 - t_kernel})
    fit.control_labels = np.asarray(ly, dtype=np.int64).copy()
    fit.prealign_iterations, fit.organ_prealign_iterations, fit.organ_affine = pre, organ_pre, affine
    return fit


def _organ_stage(pb: _Problem, model: LabelModel, cfg, sim: Similarity, progress):
    """Per-organ pre-alignment on the EM points, folded into ``pb``'s fixed points (in place).
    Returns ``(affine (L, 3, 4), iterations, final pooled σ² in mm²)``."""
    organs, iterations, sigma2 = fit_organ_similarities(pb, pb.fixed_labels, model.n_labels, sim, cfg, progress,
                                                        rigid=cfg.organ_prealign_mode() == "rigid")
    affine = fold_into_fixed(organs, sim, np.zeros(3))  # centred frame of pb (cy = 0 there)
    y_c = torch.as_tensor(apply_organ_affine(pb.y64.cpu().numpy(), pb.fixed_labels.cpu().numpy(), affine),
                          dtype=torch.float64, device=pb.y64.device)
    pb.y64, pb.y = y_c, y_c.to(pb.y.dtype)
    pb.radius2 = 4.0 * max(float(pb.x64.square().sum(1).max()), float(y_c.square().sum(1).max()))
    return fold_into_fixed(organs, sim, pb.cy), iterations, sigma2


def _attach_basis(pb: _Problem, model: LabelModel, cfg: OrganPointCloudConfig, notes: list) -> None:
    """Decompose G on the current fixed points of ``pb`` (after any per-organ pre-alignment)."""
    params = KernelParams.from_model(model, pb.y.dtype, pb.y.device)
    pb.basis = lowrank_kernel(pb.y, pb.fixed_labels, model, params, cfg.rank, jitter=cfg.jitter,
                              generator=torch.Generator().manual_seed(int(cfg.seed)),
                              budget_bytes=cfg.memory_budget_mb * 2.0**20, notes=notes)


def _check_shapes(x, lx, y, ly) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise InputError(f"points: expected moving and fixed points of the same dimension, got "
                         f"{x.shape[-1] if x.ndim == 2 else x.shape} and {y.shape[-1] if y.ndim == 2 else y.shape}")
    if lx.shape != (x.shape[0],) or ly.shape != (y.shape[0],):
        raise InputError(f"labels: expected one label per point, got {lx.shape} for {x.shape[0]} moving and "
                         f"{ly.shape} for {y.shape[0]} fixed points")
    if x.shape[0] < x.shape[1] + 1 or y.shape[0] < y.shape[1] + 1:
        raise InputError(f"points: expected at least {x.shape[1] + 1} points per set, got {x.shape[0]} moving and "
                         f"{y.shape[0]} fixed")


def stratified_subset(labels: np.ndarray, target: Optional[int], seed: int, minimum: int = 4) -> np.ndarray:
    """Sorted indices of at most about ``target`` points, each label keeping its share (at least ``minimum``
    or all it has), drawn without replacement with ``seed``; all indices when ``target`` is None or larger."""
    if target is None or labels.shape[0] <= target:
        return np.arange(labels.shape[0])
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(idx, size=k, replace=False)
                                   for idx, k in label_shares(labels, target, minimum)]))


def em_subset(points: np.ndarray, labels: np.ndarray, target: Optional[int], seed: int,
              config: OrganPointCloudConfig, minimum: int = 4) -> np.ndarray:
    """The EM's subset of a point set: :func:`.sampling.spread_subset` (farthest-point, per label) with
    ``config.spread_sampling``, else :func:`stratified_subset` (uniformly random, per label)."""
    if config.spread_sampling:
        return spread_subset(points, labels, target, seed, minimum)
    return stratified_subset(labels, target, seed, minimum)


def fit_similarity(x: np.ndarray, lx: np.ndarray, y: np.ndarray, ly: np.ndarray, model: LabelModel,
                   config: OrganPointCloudConfig, progress: Optional[Progress] = None) -> Similarity:
    """The similarity-only EM of :func:`run_bcpd`'s pre-alignment on its own: s, R, t of T(y) = sRy + t
    (fixed → moving, original mm frame), from subsets of at most ``_PREALIGN_POINTS`` points per set."""
    _check_shapes(x, lx, y, ly)
    cx, cy = x.mean(axis=0), y.mean(axis=0)
    sim, _ = _prealign(x, lx, y, ly, model, config, (cx, cy), progress or Progress())
    return Similarity(sim.s, sim.R.copy(), sim.t + cx - sim.s * sim.R @ cy)


def _prealign(x, lx, y, ly, model, config, centres, progress: Progress):
    """Similarity-only EM on subsets (7 parameters need few points); returns (Similarity, iterations)."""
    xs = em_subset(x, lx, _PREALIGN_POINTS, config.seed + 11, config)
    ys = em_subset(y, ly, _PREALIGN_POINTS, config.seed + 13, config)
    sub = _prepare(x[xs], lx[xs], y[ys], ly[ys], model, config, [], centres=centres, with_basis=False)
    run = _Run(Similarity(1.0, np.eye(x.shape[1]), np.zeros(x.shape[1])), _zero_deformation(sub),
               initial_sigma2(sub.x, sub.y, config.gamma, sub.groups), [SparseState() for _ in sub.groups])
    run.history.append(math.sqrt(run.sigma2))
    iterations, _ = _em_loop(sub, config, run, progress, False, True)
    return run.sim, iterations


@dataclass
class _Run:
    """Mutable EM state shared by the stages."""

    sim: Similarity
    deform: Deformation
    sigma2: float
    states: list
    history: List[float] = field(default_factory=list)
    workspace: Workspace = field(default_factory=Workspace)


def _zero_deformation(pb: _Problem) -> Deformation:
    zeros = torch.zeros_like(pb.y64)
    return Deformation(zeros, zeros.clone(), torch.zeros(pb.y64.shape[0], dtype=torch.float64, device=pb.y64.device))


def _em_loop(pb: _Problem, cfg: OrganPointCloudConfig, run: _Run, progress: Progress, deformable: bool,
             update_sim: bool):
    """Iterate until |Δσ|/r < tolerance (after min_iterations) or max_iterations; returns (iterations, converged)."""
    stage = "MO-BCPD" if deformable else "similarity pre-alignment"
    for it in range(1, cfg.max_iterations + 1):
        progress.report((it - 1) / cfg.max_iterations, f"{stage} iteration {it}, σ = {math.sqrt(run.sigma2):.3g} mm")
        _iterate(pb, cfg, run, deformable, update_sim)
        run.history.append(math.sqrt(run.sigma2))
        tolerance = cfg.tolerance if deformable else cfg.prealign_tolerance
        if it >= cfg.min_iterations and abs(run.history[-1] - run.history[-2]) / pb.scale < tolerance:
            progress.report(1.0, f"{stage} converged after {it} iterations, σ = {run.history[-1]:.3g} mm")
            return it, True
    return cfg.max_iterations, False


def _iterate(pb: _Problem, cfg: OrganPointCloudConfig, run: _Run, deformable: bool, update_sim: bool) -> None:
    """One variational EM iteration (E-step, v and Σ, s R t, σ²), updating ``run`` in place."""
    d = pb.x.shape[1]
    sim, sigma2 = run.sim, run.sigma2
    y_def = deformed(pb.y64, run.deform.v, sim)
    x = pb.x
    if x.dtype == torch.float32 and 6e-8 * pb.radius2 / sigma2 > _FLOAT32_LOGIT_ERROR:
        x = pb.x64
    stats = e_step(x, y_def.to(x.dtype), pb.groups, _log_weights(run.deform.sigma_m2, sim.s, sigma2, d),
                   sigma2, _log_outlier(cfg.omega, pb.log_p_out, sigma2, d),
                   budget_bytes=cfg.memory_budget_mb * 2.0**20, cutoff=cfg.estep_cutoff_sigma,
                   sparse_states=run.states, workspace=run.workspace)
    if not stats.n_hat > 1e-9:
        raise RegistrationFailed("MO-BCPD: every moving point was classified as an outlier (lower omega)")
    if deformable:
        run.deform = update_deformation(stats, pb.y64, pb.basis, sim, sigma2)
    if update_sim:
        run.sim = update_similarity(stats, pb.y64 + run.deform.v, run.deform.sigma_m2)
    new = update_sigma2(stats, pb.x_sq_norm, deformed(pb.y64, run.deform.v, run.sim), run.sim.s, run.deform.sigma_m2)
    if not math.isfinite(new):
        raise RegistrationFailed(f"MO-BCPD: σ² became non-finite ({new})")
    run.sigma2 = max(new, 1e-12 * pb.scale**2)


def _finish(pb: _Problem, run: _Run, it: int, converged: bool, notes: list, timings: dict) -> BCPDFit:
    """Express the fit in the original frame: t = t_c + c_x − s R c_y."""
    sim = run.sim
    t = sim.t + pb.cx - sim.s * sim.R @ pb.cy
    return BCPDFit(
        similarity=Similarity(sim.s, sim.R.copy(), t),
        control_points=(pb.y64.cpu().numpy() + pb.cy),
        control_labels=np.zeros(0, dtype=np.int64),
        v=run.deform.v.cpu().numpy(), w=run.deform.w.cpu().numpy(),
        sigma=run.history[-1], sigma_history=list(run.history), iterations=it, converged=converged,
        knn_iterations=max((s.used for s in run.states), default=0),
        basis=describe_basis(pb.basis, pb.y.shape[0]), warnings=notes, timings=timings)

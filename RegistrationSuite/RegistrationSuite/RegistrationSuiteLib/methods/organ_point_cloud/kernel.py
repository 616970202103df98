"""The MO-BCPD motion-coherence kernel G, its low-rank eigendecomposition and Gaussian-process interpolation.

Kernel (paper eq. 3 and 6), between points a (label i) and b (label j), in mm²::

    G(a, b) = Λ_i Λ_j S_ij exp(−|a − b|² / (2 B_i B_j))

The prior is v^d ~ N(0, G) per coordinate d (paper eq. 2): Λ² already carries BCPD's 1/λ, so the λ of the
BCPD update equations is **1** here (Λ in mm, G in mm²). G is block diagonal over groups of organs coupled by
S ≠ 0; each block is decomposed on its own and the leading eigenpairs of all blocks are merged.

Every pairwise block is computed in row chunks bounded by a memory budget; nothing M×M is stored unless it
fits the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ...errors import InputError
from .config import LabelModel

_OVERSAMPLE = 10
_POWER_ITERATIONS = 2


@dataclass
class KernelParams:
    """Per-label kernel parameters as tensors on the working device (index = internal label 0..L-1)."""

    lam: torch.Tensor  # (L,) Λ in mm
    beta: torch.Tensor  # (L,) B in mm
    coh: torch.Tensor  # (L, L) S

    @classmethod
    def from_model(cls, model: LabelModel, dtype, device) -> "KernelParams":
        def t(a):
            return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dtype, device=device)

        return cls(t(model.lambda_mm), t(model.beta_mm), t(model.coherence))


@dataclass
class KernelBasis:
    """Low-rank factor of G: ``G ≈ qh @ qh.T`` with ``qh = Q · diag(sqrt(eigenvalues))``.

    Attributes:
        qh: ``(M, K)`` scaled eigenvectors (mm).
        eigenvalues: ``(K,)`` eigenvalues of G in mm², descending, ≥ 0 (jitter included).
        jitter_added: absolute value (mm²) added to G's diagonal to make it PD (0 if none was needed).
        exact: True when all eigenpairs were computed (no truncation).
    """

    qh: torch.Tensor
    eigenvalues: torch.Tensor
    jitter_added: float
    exact: bool

    @property
    def rank(self) -> int:
        return int(self.qh.shape[1])


def rows_per_chunk(n_cols: int, budget_bytes: float, itemsize: int, temporaries: int = 3) -> int:
    """Rows of an ``(rows, n_cols)`` block such that ``temporaries`` such blocks fit ``budget_bytes``."""
    return max(1, int(budget_bytes // max(1, n_cols * itemsize * temporaries)))


def kernel_block(a: torch.Tensor, la: torch.Tensor, b: torch.Tensor, lb: torch.Tensor, p: KernelParams) -> torch.Tensor:
    """Dense ``(Na, Nb)`` block of G between points ``a (Na, D)`` with labels ``la (Na,)`` and ``b``, ``lb``.

    Per-element bandwidth/amplitude matrices are only formed when the labels involved differ in B, Λ or S.
    """
    d2 = _sq_dist(a, b)
    ua, ub = torch.unique(la), torch.unique(lb)
    beta = p.beta[torch.cat([ua, ub])]
    if bool(torch.all(beta == beta[0])):
        d2.mul_(-0.5 / float(beta[0]) ** 2).clamp_(min=-80.0).exp_()
    else:
        d2.div_((p.beta[la][:, None] * p.beta[lb][None, :]).mul_(-2.0)).clamp_(min=-80.0).exp_()
    lam = p.lam[torch.cat([ua, ub])]
    coh = p.coh[ua][:, ub]
    if bool(torch.all(lam == lam[0])) and bool(torch.all(coh == coh.reshape(-1)[0])):
        return d2.mul_(float(lam[0]) ** 2 * float(coh.reshape(-1)[0]))
    return d2.mul_((p.lam[la][:, None] * p.lam[lb][None, :]) * p.coh[la][:, lb])


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(Na, Nb)`` squared distances by |a|² + |b|² − 2ab (clamped ≥ 0); inputs should be centred."""
    d2 = torch.addmm(a.square().sum(1, keepdim=True), a, b.T, alpha=-2.0)
    return d2.add_(b.square().sum(1)[None, :]).clamp_(min=0.0)


def kernel_matmul(a, la, b, lb, w: torch.Tensor, p: KernelParams, budget_bytes: float) -> torch.Tensor:
    """``G(a, b) @ w`` for ``w (Nb, C)`` without storing more than a chunk of G; returns ``(Na, C)``."""
    out = torch.zeros(a.shape[0], w.shape[1], dtype=w.dtype, device=w.device)
    step = rows_per_chunk(b.shape[0], budget_bytes, a.element_size())
    for s in range(0, a.shape[0], step):
        out[s:s + step] = kernel_block(a[s:s + step], la[s:s + step], b, lb, p) @ w
    return out


def gp_interpolate(points, labels, ctrl, ctrl_labels, w, p: KernelParams, budget_bytes: float) -> torch.Tensor:
    """Gaussian-process mean of the displacement, paper eq. 5–6 (BCPD++): ``v(p) = G(p, Y) W``.

    Args:
        points: ``(P, D)`` query points (mm; centre them like ``ctrl`` for precision), ``labels (P,)``
            internal label ids of the queries (the organ whose Λ, B, S row applies).
        ctrl: ``(M, D)`` control points Y, ``ctrl_labels (M,)``.
        w: ``(M, D)`` GP weights W, with v(Y) = G W at the control points.
        p: kernel parameters (their dtype is the compute dtype). budget_bytes: bound on one block.

    Returns:
        ``(P, D)`` displacements in mm, dtype of ``w``. Each (query label a, control label b) pair with
        S_ab ≠ 0 is one block with scalar bandwidth B_a B_b and amplitude Λ_a Λ_b S_ab, built by a single
        GEMM of augmented operands in reused memory.
    """
    out = torch.zeros(points.shape[0], w.shape[1], dtype=w.dtype, device=w.device)
    dtype = p.beta.dtype
    buf = None
    for a in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == a).squeeze(1)
        for b in torch.unique(ctrl_labels).tolist():
            amp = float(p.lam[a] * p.lam[b] * p.coh[a, b])
            if amp == 0.0:
                continue
            cols = torch.nonzero(ctrl_labels == b).squeeze(1)
            bw2 = float(p.beta[a] * p.beta[b])
            yb = ctrl[cols].to(dtype)
            # exponent −|q − y|²/(2 bw²) = [q, 1, −|q|²/2bw²] · [y/bw²; −|y|²/2bw²; 1]
            ya = torch.cat([yb.T / bw2, -yb.square().sum(1)[None] / (2 * bw2), torch.ones_like(yb[:, :1]).T], 0)
            wb = w[cols].to(dtype) * amp
            step = min(rows.numel(), rows_per_chunk(cols.numel(), budget_bytes, yb.element_size(), temporaries=1))
            if buf is None or buf.numel() < step * cols.numel():
                buf = torch.empty(step * cols.numel(), dtype=dtype, device=w.device)
            for s in range(0, rows.numel(), step):
                q = points[rows[s:s + step]].to(dtype)
                qa = torch.cat([q, torch.ones_like(q[:, :1]), -q.square().sum(1, keepdim=True) / (2 * bw2)], 1)
                e = torch.mm(qa, ya, out=buf[: q.shape[0] * cols.numel()].view(q.shape[0], cols.numel()))
                out[rows[s:s + step]] += (e.clamp_(min=-80.0, max=0.0).exp_() @ wb).to(w.dtype)
    return out


def lowrank_kernel(y, ly, model: LabelModel, p: KernelParams, rank: Optional[int], *, jitter: float,
                   generator: torch.Generator, budget_bytes: float, notes: list) -> KernelBasis:
    """Leading eigenpairs of G over control points ``y (M, D)`` with internal labels ``ly (M,)``.

    Exact ``eigh`` for small blocks or ``rank=None``; otherwise a randomised range finder with
    two power iterations (Halko et al. 2011, alg. 4.4 + 5.3; for the Gaussian kernel's fast-decaying
    spectrum the K-th eigenvalue is then within ~0.2 % and the rank-K error within ~0.2 % of optimal) on
    each S-coupled block.
    Positive definiteness is checked (Cholesky) where it is not guaranteed, see
    :meth:`LabelModel.provably_positive_definite`; a failed check adds ``jitter · max Λ²`` once, else errors.
    """
    m = y.shape[0]
    vecs, vals, jitter_added, exact = [], [], 0.0, True
    for group in model.components():
        idx = torch.nonzero(torch.isin(ly, torch.as_tensor(group, device=ly.device))).squeeze(1)
        if idx.numel() == 0:
            continue
        matmul, dense = _block_operator(y[idx], ly[idx], p, budget_bytes)
        shift = 0.0
        if not model.provably_positive_definite(group):
            shift = _check_positive_definite(dense, y[idx], ly[idx], p, model, group, jitter, notes)
            jitter_added = max(jitter_added, shift)
        k = idx.numel() if rank is None else min(rank, idx.numel())
        if rank is None or idx.numel() <= 2 * (k + _OVERSAMPLE):
            block = dense if dense is not None else matmul(torch.eye(idx.numel(), dtype=y.dtype, device=y.device))
            e, q = torch.linalg.eigh(block.double())
            e, q = e.flip(0)[:k], q.flip(1)[:, :k]
        else:
            e, q = _randomized_eigh(matmul, idx.numel(), k, y.dtype, y.device, generator)
            exact = False
        full = torch.zeros(m, q.shape[1], dtype=torch.float64, device=y.device)
        full[idx] = q
        vecs.append(full)
        vals.append(e + shift)
    return _merge(vecs, vals, rank, exact, jitter_added, y.dtype)


def _block_operator(y, ly, p: KernelParams, budget_bytes: float):
    """``(matmul, dense)``: dense G block when it fits the budget (then matmul uses it), else chunked."""
    n = y.shape[0]
    if n * n * y.element_size() * 2 <= budget_bytes:
        dense = kernel_block(y, ly, y, ly, p)
        return (lambda w: dense @ w.to(dense.dtype)), dense
    return (lambda w: kernel_matmul(y, ly, y, ly, w.to(y.dtype), p, budget_bytes)), None


def _randomized_eigh(matmul, n: int, k: int, dtype, device, generator):
    """Top-``k`` eigenpairs of a symmetric PSD operator ``matmul`` of size ``n`` (float64 results)."""
    omega = torch.randn(n, k + _OVERSAMPLE, generator=generator, dtype=torch.float64, device="cpu").to(device)
    q, _ = torch.linalg.qr(matmul(omega.to(dtype)).double())
    for _ in range(_POWER_ITERATIONS):
        q, _ = torch.linalg.qr(matmul(q.to(dtype)).double())
    gq = matmul(q.to(dtype)).double()
    t = q.T @ gq
    e, v = torch.linalg.eigh(0.5 * (t + t.T))
    e, v = e.flip(0)[:k], v.flip(1)[:, :k]
    return e, q @ v


def _check_positive_definite(dense, y, ly, p, model, group, jitter: float, notes: list) -> float:
    """Cholesky check of a G block; returns the diagonal jitter added (mm²) or raises InputError."""
    if dense is None:  # too large to hold: check a seeded subsample (a necessary condition only)
        gen = torch.Generator().manual_seed(0)
        sub = torch.randperm(y.shape[0], generator=gen)[:4000].to(y.device)
        dense = kernel_block(y[sub], ly[sub], y[sub], ly[sub], p)
    g = dense.double()
    if torch.linalg.cholesky_ex(g).info.item() == 0:
        return 0.0
    labels = model.labels[list(group)].tolist()
    if jitter > 0:
        shift = float(jitter * np.max(model.lambda_mm[list(group)]) ** 2)
        eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
        if torch.linalg.cholesky_ex(g + shift * eye).info.item() == 0:
            notes.append(f"G for labels {labels} was not numerically positive definite; added {shift:.3g} mm² to its "
                         "diagonal (jitter)")
            return shift
    raise InputError(
        f"coherence/beta_mm: the kernel G for labels {labels} is not positive definite (Cholesky failed) with "
        f"B = {model.beta_mm[list(group)].tolist()} mm and the given S; use equal B for coupled organs, a smaller "
        "off-diagonal S, or a larger jitter")


def _merge(vecs, vals, rank, exact: bool, jitter_added: float, dtype) -> KernelBasis:
    e = torch.cat(vals)
    q = torch.cat(vecs, dim=1)
    order = torch.argsort(e, descending=True)
    if rank is not None and order.numel() > rank:
        order, exact = order[:rank], False
    e, q = e[order], q[:, order]
    # Round-off leaves tiny negative eigenvalues in a PSD G; they carry no prior variance.
    keep = e > max(float(e.max()), 0.0) * 1e-12 if e.numel() else e > 0
    e, q = e[keep], q[:, keep]
    if e.numel() == 0:
        raise InputError("lambda_mm: G has no positive eigenvalue (check Λ, B and S)")
    qh = q * torch.sqrt(e)[None, :]
    return KernelBasis(qh.to(torch.float64), e, float(jitter_added), exact)


def describe_basis(basis: KernelBasis, m: int) -> dict:
    """JSON-able description of the decomposition for diagnostics."""
    return {
        "kind": "exact" if basis.exact else "low-rank",
        "eigenpairs": basis.rank,
        "control_points": int(m),
        "largest_eigenvalue_mm2": float(basis.eigenvalues[0]),
        "smallest_kept_eigenvalue_mm2": float(basis.eigenvalues[-1]),
        "jitter_added_mm2": basis.jitter_added,
    }

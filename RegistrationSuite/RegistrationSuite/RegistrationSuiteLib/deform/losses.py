"""Image (dis)similarities for dense registration, 2D and 3D: stateless functions plus :class:`Similarity`.

Every ``*_loss`` takes ``fixed`` and ``warped`` (moving already warped onto the fixed grid), both
``(N, C, *S)``, and an optional ``weight`` ``(N, 1, *S)`` in [0, 1] (mask × overlap); it returns a scalar to
minimise. :func:`mind_ssc` computes descriptors; the MIND loss compares descriptors of the fixed image with
descriptors of the moving image warped by the field (VoxelMorph++ / ConvexAdam practice: descriptors are
computed once per level and warped, which is cheaper than recomputing them and nearly the same for smooth
fields).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .filters import box_filter


def _wmean(x: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
    if weight is None:
        return x.mean()
    w = weight.expand_as(x)
    return (x * w).sum() / w.sum().clamp_min(1e-8)


def ncc_loss(fixed: torch.Tensor, warped: torch.Tensor, weight: Optional[torch.Tensor] = None,
             eps: float = 1e-8) -> torch.Tensor:
    """``1 − NCC`` over the (weighted) region: 0 for images equal up to a positive affine intensity map."""
    mf, mw = _wmean(fixed, weight), _wmean(warped, weight)
    a, b = fixed - mf, warped - mw
    cov = _wmean(a * b, weight)
    var = _wmean(a * a, weight) * _wmean(b * b, weight)
    return 1.0 - cov / torch.sqrt(var + eps)


def lncc_loss(fixed: torch.Tensor, warped: torch.Tensor, weight: Optional[torch.Tensor] = None,
              radius: int = 2, eps: float = 1e-5) -> torch.Tensor:
    """``1 − mean local NCC`` in ``(2r+1)^d`` windows (signed correlation, so inverted contrast is not
    rewarded; VoxelMorph squares it). ``eps`` is relative to the mean local variance, which keeps flat
    regions from dividing by zero without depending on the intensity scale."""
    mf, mw = box_filter(fixed, radius), box_filter(warped, radius)
    vf = (box_filter(fixed * fixed, radius) - mf * mf).clamp_min(0)
    vw = (box_filter(warped * warped, radius) - mw * mw).clamp_min(0)
    cov = box_filter(fixed * warped, radius) - mf * mw
    floor = eps * (vf.mean().detach() * vw.mean().detach()).clamp_min(1e-12)
    cc = cov / torch.sqrt(vf * vw + floor)
    return 1.0 - _wmean(cc, weight)


def _shift(x: torch.Tensor, offset) -> torch.Tensor:
    """``out(p) = x(p + offset)`` (tensor-order offset), border replicated."""
    d = x.dim() - 2
    r = max(abs(o) for o in offset)
    if r == 0:
        return x
    pad = [r] * (2 * d)
    xp = torch.nn.functional.pad(x, pad, mode="replicate")
    index = [slice(None), slice(None)] + [slice(r + o, r + o + n) for o, n in zip(offset, x.shape[2:])]
    return xp[tuple(index)]


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2, eps: float = 1e-6) -> torch.Tensor:
    """MIND self-similarity context descriptors (Heinrich et al., MICCAI 2013), dimension-generic.

    The 2d neighbours at ±``dilation`` along each axis form pairs lying on different axes (12 pairs in 3D,
    4 in 2D: the "self-similarity context"). For each pair (p, q) the patch distance
    ``D_pq(x) = mean over a (2r+1)^d patch of (I(y+p) − I(y+q))²``; the descriptor is
    ``exp(−D_pq / V)`` with ``V`` the mean of ``D`` over pairs (clamped to [0.001, 1000] × its global mean),
    normalised by its maximum over pairs.

    Args:
        image: ``(N, 1, *S)``.

    Returns:
        ``(N, P, *S)`` with ``P`` = 12 (3D) or 4 (2D), values in (0, 1].
    """
    d = image.dim() - 2
    neighbours = []
    for axis in range(d):
        for sign in (-1, 1):
            o = [0] * d
            o[axis] = sign * int(dilation)
            neighbours.append((axis, tuple(o)))
    pairs = [(p, q) for i, (ap, p) in enumerate(neighbours) for (aq, q) in neighbours[i + 1:] if ap != aq]
    shifted = {o: _shift(image, o) for _, o in neighbours}
    dist = torch.cat([box_filter((shifted[p] - shifted[q]) ** 2, radius) for p, q in pairs], dim=1)
    var = dist.mean(1, keepdim=True)
    m = var.mean()
    var = var.clamp(min=float(m) * 1e-3 + eps, max=float(m) * 1e3 + eps)
    desc = torch.exp(-dist / var)
    return desc / desc.max(1, keepdim=True)[0].clamp_min(eps)


class _WeightedChannelMSE(torch.autograd.Function):
    """``Σ_x w(x) · mean_c (a_c(x) − b_c(x))² / Σ_x w(x)`` (``w = None``: the plain mean over ``x``), with
    its gradient written out: autograd's chain of elementwise nodes over all channels cost about as much as
    the warp itself on a CPU."""

    @staticmethod
    def forward(ctx, a, b, weight):
        diff = b - a
        e = diff.square().mean(1, keepdim=True)
        if weight is None:
            total = torch.tensor(float(e.numel()), dtype=e.dtype, device=e.device)
            loss = e.mean()
        else:
            w = weight.expand_as(e)
            total = w.sum().clamp_min(1e-8)
            loss = (e * w).sum() / total
        ctx.save_for_backward(diff, e if weight is not None and weight.requires_grad else None,
                              weight, total, loss)
        return loss

    @staticmethod
    def backward(ctx, grad):
        diff, e, weight, total, loss = ctx.saved_tensors
        scale = grad * (2.0 / diff.shape[1]) / total
        g = diff * (scale if weight is None else weight * scale)
        grad_w = None
        if weight is not None and ctx.needs_input_grad[2]:
            grad_w = ((e - loss) * (grad / total)).sum_to_size(weight.shape)
        return (-g if ctx.needs_input_grad[0] else None), (g if ctx.needs_input_grad[1] else None), grad_w


def mind_loss(fixed_desc: torch.Tensor, warped_desc: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared difference of MIND descriptors (averaged over the descriptor channels), weighted by
    ``weight`` over the voxels (same value as ``_wmean`` of the per-voxel channel mean)."""
    return _WeightedChannelMSE.apply(fixed_desc, warped_desc, weight)


def _normalized_gradient(x: torch.Tensor, eps: Optional[float]) -> torch.Tensor:
    d = x.dim() - 2
    g = torch.stack(torch.gradient(x[:, 0], dim=tuple(range(1, 1 + d))), dim=1)
    norm2 = g.pow(2).sum(1, keepdim=True)
    if eps is None:  # half the mean gradient magnitude: an edge threshold that follows the image scale
        eps = 0.5 * float(norm2.sqrt().mean().detach()) + 1e-8
    return g / torch.sqrt(norm2 + eps * eps)


def ngf_loss(fixed: torch.Tensor, warped: torch.Tensor, weight: Optional[torch.Tensor] = None,
             eps: Optional[float] = None) -> torch.Tensor:
    """``1 − mean (n_f · n_w)²`` with ``n = ∇I / sqrt(|∇I|² + ε²)`` (normalised gradient fields, Haber &
    Modersitzki, 2006). ``eps=None``: half of each image's mean gradient magnitude (scale-free)."""
    nf, nw = _normalized_gradient(fixed, eps), _normalized_gradient(warped, eps)
    return 1.0 - _wmean((nf * nw).sum(1, keepdim=True).pow(2), weight)


@dataclass
class Similarity:
    """A similarity as the optimiser uses it: ``features`` maps an image ``(N, 1, *S)`` to what is warped
    and compared (the image itself, or MIND descriptors), ``loss(fixed_features, warped_features, weight)``
    is minimised, and ``score = offset − loss`` is reported (higher is better; NCC itself for ``"ncc"``).
    """

    name: str
    loss: Callable
    features: Callable = field(default=lambda x: x)
    offset: float = 1.0

    def score(self, fixed_features, warped_features, weight=None) -> float:
        with torch.no_grad():
            return float(self.offset - self.loss(fixed_features, warped_features, weight))


SIMILARITIES = ("ncc", "lncc", "mind", "ngf")


def make_similarity(name: str, *, lncc_radius: int = 2, mind_radius: int = 1, mind_dilation: int = 2,
                    ngf_eps: Optional[float] = None, lncc_eps: float = 1e-5) -> Similarity:
    """One of :data:`SIMILARITIES` as a :class:`Similarity`."""
    if name == "ncc":
        return Similarity("ncc", ncc_loss)
    if name == "lncc":
        return Similarity("lncc", lambda f, w, m=None: lncc_loss(f, w, m, radius=lncc_radius, eps=lncc_eps))
    if name == "mind":
        return Similarity("mind", mind_loss, lambda x: mind_ssc(x, mind_radius, mind_dilation), offset=0.0)
    if name == "ngf":
        return Similarity("ngf", lambda f, w, m=None: ngf_loss(f, w, m, eps=ngf_eps))
    raise ValueError(f"similarity: expected one of {', '.join(SIMILARITIES)}, got {name!r}")

"""Normalized gradient fields (NGF) and their squared cross-similarity (CSNGF) for all integer shifts.

Reference: "Cross-Sim-NGF: FFT-based global rigid multimodal alignment of 3D images", WBIR 2022
(``papers/global_rigid_CSNGF_WBIR2022.txt``), Eqs. (1), (2), (5), (6).

Conventions: tensors are ``(B, C, *spatial)`` with spatial axes in array order (``(z, y, x)`` in 3D, ``(y, x)``
in 2D); gradients are in intensity per voxel, so ``epsilon`` is absolute for intensities in [0, 1].

A *shift* ``chi`` (integer voxels, array order) places moving voxel ``y`` on fixed voxel ``x = y + chi``:

    CSNGF(chi) = sum_y M_F(y + chi) M_B(y) <n_F(y + chi), n_B(y)>^2 / N(chi),   N(chi) = sum_y M_F(y + chi) M_B(y)

Shifts whose overlap ``N(chi)`` is below ``min_overlap * min(sum M_F, sum M_B)`` get the score ``-1``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError

INVALID_SCORE = -1.0


def _check_batched(t: torch.Tensor, name: str, channels: Optional[int] = None) -> int:
    if not isinstance(t, torch.Tensor) or t.ndim not in (4, 5):
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise InputError(f"{name}: expected a tensor (B, C, *spatial) with 2 or 3 spatial axes, got {got}")
    if channels is not None and t.shape[1] != channels:
        raise InputError(f"{name}: expected {channels} channel(s) in axis 1, got shape {tuple(t.shape)}")
    return t.ndim - 2


def gradient_support(mask: torch.Tensor) -> torch.Tensor:
    """Voxels whose whole central-difference stencil lies inside ``mask`` (and inside the image).

    Multiplying the NGF by this support (instead of the mask itself) keeps the artificial edge between the
    content and the zero padding outside a mask or a field of view out of the similarity.

    Args:
        mask: ``(B, 1, *spatial)``, non-zero = inside.

    Returns:
        ``(B, 1, *spatial)`` float 0/1 tensor, same dtype/device as ``mask`` (float32 for bool input).
    """
    dim = _check_batched(mask, "mask", channels=1)
    m = (mask != 0).to(mask.dtype if mask.is_floating_point() else torch.float32)
    padded = F.pad(m, [1, 1] * dim)
    out = m.clone()
    for axis in range(dim):
        n = m.shape[2 + axis]
        out = out * _inner(padded, axis, dim, 0, n) * _inner(padded, axis, dim, 2, n)
    return out


def _inner(padded: torch.Tensor, axis: int, dim: int, start: int, length: int) -> torch.Tensor:
    """Slice of a tensor padded by one voxel on every spatial side: ``start:start+length`` on ``axis``,
    the unpadded interior ``1:-1`` on the other spatial axes."""
    out = padded
    for a in range(dim):
        if a == axis:
            out = out.narrow(2 + a, start, length)
        else:
            out = out.narrow(2 + a, 1, padded.shape[2 + a] - 2)
    return out


def normalized_gradient_field(
    image: torch.Tensor, mask: Optional[torch.Tensor] = None, *, epsilon: float = 1e-5, erode: bool = True
) -> torch.Tensor:
    """Regularised normalized gradient field ``n = grad I / sqrt(|grad I|^2 + eps^2)`` (paper Eq. 1).

    Central differences with zero padding, in intensity per voxel, then multiplied by the mask.

    Args:
        image: ``(B, 1, *spatial)`` intensities (normalise to [0, 1] first: ``epsilon`` is absolute).
        mask: optional ``(B, 1, *spatial)`` (or broadcastable) 0/1 mask; ``None`` = the whole image.
        epsilon: regularisation (paper: 1e-5 for intensities in [0, 1]).
        erode: multiply by :func:`gradient_support` of the mask (stencil entirely inside the mask and the
            image) instead of the mask itself, so image borders and mask borders create no edges.

    Returns:
        ``(B, D, *spatial)`` field, component ``i`` along spatial (array) axis ``i``.
    """
    dim = _check_batched(image, "image", channels=1)
    if epsilon <= 0:
        raise InputError(f"epsilon: expected a positive number, got {epsilon}")
    padded = F.pad(image, [1, 1] * dim)
    grads = [
        (_inner(padded, a, dim, 2, image.shape[2 + a]) - _inner(padded, a, dim, 0, image.shape[2 + a])) * 0.5
        for a in range(dim)
    ]
    g = torch.cat(grads, dim=1)
    ngf = g * torch.rsqrt((g * g).sum(dim=1, keepdim=True) + epsilon * epsilon)
    if mask is None:
        mask = torch.ones_like(image[:1])
    weight = gradient_support(mask.to(image.dtype)) if erode else (mask != 0).to(image.dtype)
    return ngf * weight


def ngf_products(ngf: torch.Tensor, *, cross_weight: float = 1.0) -> torch.Tensor:
    """The separable parts of the squared dot product (paper Eq. 6).

    Args:
        ngf: ``(B, D, *spatial)``.
        cross_weight: factor on the cross terms; use 2 on exactly one of the two images.

    Returns:
        ``(B, P, *spatial)`` with ``P = D + D(D-1)/2``: ``n_i^2`` for each i, then ``w n_i n_j`` for i < j.
    """
    dim = ngf.shape[1]
    parts = [ngf[:, i] * ngf[:, i] for i in range(dim)]
    parts += [cross_weight * ngf[:, i] * ngf[:, j] for i, j in itertools.combinations(range(dim), 2)]
    return torch.stack(parts, dim=1)


# ------------------------------------------------------------------------------------------ shift ranges
def full_shift_range(fixed_shape: Sequence[int], moving_shape: Sequence[int], min_overlap: float):
    """Shifts (array order, voxels) at which the two boxes can overlap by ``min_overlap``.

    An overlap of at least ``min_overlap * min(|F|, |B|)`` voxels needs, on every axis, an overlap of at least
    ``min_overlap * min(F_i, B_i)`` voxels (the other axes overlap at most ``min(F_j, B_j)``), so
    ``chi_i`` ranges over ``[m_i - B_i, F_i - m_i]`` with ``m_i = max(1, floor(min_overlap * min(F_i, B_i)))``
    (the paper pads the fixed image by ``(1 - gamma) |B|`` per side, the same bound for ``|B| <= |F|``).

    Returns:
        ``(shift_min, shift_max)`` integer tuples, inclusive.
    """
    lo, hi = [], []
    for f, b in zip(fixed_shape, moving_shape):
        m = max(1, int(min_overlap * min(f, b)))
        lo.append(m - b)
        hi.append(f - m)
    return tuple(lo), tuple(hi)


def fast_len(n: int) -> int:
    """Smallest 5-smooth length ``2^a 3^b 5^c >= n`` (factors 7 and 11 are markedly slower in MKL/cuFFT)."""
    n = max(1, int(n))
    best = 2 * n if n > 1 else 1
    p2 = 1
    while p2 < best:
        p3 = p2
        while p3 < best:
            p5 = p3
            while p5 < n:
                p5 *= 5
            best = min(best, p5)
            p3 *= 3
        p2 *= 2
    return best


def _window(t: torch.Tensor, start: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """``t[..., start_i : start_i + size_i]`` on the spatial axes, zero outside ``t`` (start may be < 0)."""
    dim = len(start)
    out = t.new_zeros(t.shape[:-dim] + tuple(int(s) for s in size))
    src, dst = [], []
    for n, a, s in zip(t.shape[-dim:], start, size):
        lo, hi = max(a, 0), min(a + s, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - a, hi - a))
    out[(Ellipsis, *dst)] = t[(Ellipsis, *src)]
    return out


# ------------------------------------------------------------------------------------- FFT cross-similarity
@dataclass
class FixedSpectra:
    """Fourier transforms of the fixed image's NGF products and mask for one shift window; computed once and
    reused for every rotation of the moving image.

    :func:`gather_spectra` stacks windows of equal size into one record with a leading batch axis (one window
    per moving volume), so moving volumes compared against different windows still share one batched FFT.

    Attributes:
        products: ``(P, *half)`` complex spectra of ``n_i^2`` and ``2 n_i n_j`` (fixed, masked); gathered:
            ``(B, P, *half)``.
        mask: ``(*half)`` complex spectrum of the fixed support mask; gathered: ``(B, *half)``.
        fft_shape: real FFT size per spatial axis.
        shift_min, shift_max: inclusive shift window (array order, voxels); result index ``k`` is shift
            ``shift_min + k``. Gathered: ``(B, D)`` integer arrays.
        moving_shape: spatial shape of the moving volumes this was prepared for.
        fixed_mask_sum: number of voxels in the whole fixed support mask (for the overlap threshold).
    """

    products: torch.Tensor
    mask: torch.Tensor
    fft_shape: tuple
    shift_min: tuple
    shift_max: tuple
    moving_shape: tuple
    fixed_mask_sum: float

    @property
    def shift_count(self) -> tuple:
        dim = len(self.fft_shape)
        lo, hi = np.reshape(self.shift_min, (-1, dim))[0], np.reshape(self.shift_max, (-1, dim))[0]
        return tuple(int(b - a + 1) for a, b in zip(lo, hi))


def gather_spectra(spectra: Sequence[FixedSpectra], index) -> FixedSpectra:
    """One window per moving volume: ``spectra[index[b]]`` for batch element ``b``.

    All windows must have the same FFT size, moving shape and shift count (windows of the same size).
    """
    first = spectra[0]
    if any(s.fft_shape != first.fft_shape or s.shift_count != first.shift_count
           or s.moving_shape != first.moving_shape for s in spectra):
        raise InputError("spectra: expected windows of equal size to gather, got different FFT/shift sizes")
    index = np.asarray(index, dtype=np.int64)
    idx = torch.as_tensor(index, device=first.products.device)
    return FixedSpectra(
        products=torch.stack([s.products for s in spectra]).index_select(0, idx),
        mask=torch.stack([s.mask for s in spectra]).index_select(0, idx),
        fft_shape=first.fft_shape,
        shift_min=np.array([s.shift_min for s in spectra])[index],
        shift_max=np.array([s.shift_max for s in spectra])[index],
        moving_shape=first.moving_shape,
        fixed_mask_sum=first.fixed_mask_sum,
    )


def prepare_fixed_spectra(
    fixed_ngf: torch.Tensor,
    fixed_mask: torch.Tensor,
    moving_shape: Sequence[int],
    shift_min: Sequence[int],
    shift_max: Sequence[int],
) -> FixedSpectra:
    """Spectra of the fixed image restricted to the region the moving box can reach in a shift window.

    The fixed products are cut to ``[shift_min, shift_max + moving_shape)`` (zero outside the image) and
    zero-padded at the end to an FFT-friendly size ``L >= shift_max - shift_min + moving_shape``, so a
    circular correlation never wraps around for the requested shifts.

    Args:
        fixed_ngf: ``(1, D, *spatial)`` masked NGF of the fixed image.
        fixed_mask: ``(1, 1, *spatial)`` 0/1 support mask used for ``N(chi)``.
        moving_shape: spatial shape ``(B_1, ..., B_D)`` of the (rotated) moving volumes.
        shift_min, shift_max: inclusive shift window, array order, voxels.
    """
    dim = _check_batched(fixed_ngf, "fixed_ngf", channels=None)
    _check_batched(fixed_mask, "fixed_mask", channels=1)
    if fixed_ngf.shape[1] != dim or len(moving_shape) != dim or len(shift_min) != dim or len(shift_max) != dim:
        raise InputError(
            f"fixed_ngf/moving_shape/shifts: expected {dim}-D consistent arguments, got fixed_ngf "
            f"{tuple(fixed_ngf.shape)}, moving_shape {tuple(moving_shape)}, shifts {shift_min}..{shift_max}"
        )
    if any(b < a for a, b in zip(shift_min, shift_max)):
        raise InputError(f"shift_max: expected >= shift_min per axis, got {shift_min}..{shift_max}")
    size = [b - a + m for a, b, m in zip(shift_min, shift_max, moving_shape)]
    fft_shape = tuple(fast_len(s) for s in size)
    axes = tuple(range(-dim, 0))
    products = ngf_products(_window(fixed_ngf[:1], shift_min, size), cross_weight=2.0)[0]
    mask = _window(fixed_mask[0, 0], shift_min, size)
    return FixedSpectra(
        products=torch.fft.rfftn(products, s=fft_shape, dim=axes),
        mask=torch.fft.rfftn(mask, s=fft_shape, dim=axes),
        fft_shape=fft_shape,
        shift_min=tuple(int(a) for a in shift_min),
        shift_max=tuple(int(b) for b in shift_max),
        moving_shape=tuple(int(m) for m in moving_shape),
        fixed_mask_sum=float(fixed_mask.sum()),
    )


@dataclass
class CrossSimilarity:
    """CSNGF for every shift of a window and every moving volume of a batch.

    Attributes:
        score: ``(B, *shift_count)``; ``-1`` where the overlap is below the threshold.
        overlap: ``(B, *shift_count)`` number of overlapping support voxels ``N(chi)``.
        shift_min: shift of index 0 (array order, voxels): a tuple, or ``(B, D)`` for gathered windows.
    """

    score: torch.Tensor
    overlap: torch.Tensor
    shift_min: object

    def best(self):
        """Per batch element: ``(score (B,), shift (B, D) int64 tensor)`` of the highest-scoring shift."""
        flat = self.score.flatten(1)
        value, index = flat.max(dim=1)
        counts = self.score.shape[1:]
        coords = unravel_index(index, counts)
        return value, coords + torch.as_tensor(np.asarray(self.shift_min), device=coords.device)


def unravel_index(flat: torch.Tensor, shape) -> torch.Tensor:
    """``(N, len(shape))`` int64 array-order coordinates of the flat indices ``flat`` (>= 0), like
    ``torch.stack(torch.unravel_index(flat, shape), 1)``, in integer arithmetic: torch's own version validates
    its input through a helper that imports sympy (about 1 s of CPU, once per process)."""
    rest = flat.to(torch.int64)
    coords = []
    for n in reversed([int(v) for v in shape]):
        coords.append(rest % n)
        rest = torch.div(rest, n, rounding_mode="floor")
    return torch.stack(coords[::-1], dim=-1)


def _overlap_threshold(fixed_sum: float, moving_mask: torch.Tensor, min_overlap: float) -> torch.Tensor:
    moving_sum = moving_mask.flatten(1).sum(dim=1)
    return torch.clamp(min_overlap * torch.clamp(moving_sum, max=fixed_sum), min=1.0)


def cross_similarity_fft(
    spectra: FixedSpectra, moving_ngf: torch.Tensor, moving_mask: torch.Tensor, *, min_overlap: float = 0.5
) -> CrossSimilarity:
    """CSNGF (paper Eq. 5) for all shifts of ``spectra``'s window, batched over moving volumes.

    The squared dot product is expanded into ``D`` squared and ``D(D-1)/2`` cross terms (Eq. 6); each is
    correlated in the Fourier domain against the precomputed fixed spectra, the products are summed there,
    and one inverse FFT gives the numerator; one more gives the overlap ``N(chi)``.

    Args:
        spectra: from :func:`prepare_fixed_spectra` (one window for all), or :func:`gather_spectra` (one per
            volume).
        moving_ngf: ``(B, D, *moving_shape)`` masked NGF of the (rotated) moving volumes.
        moving_mask: ``(B, 1, *moving_shape)`` 0/1 support masks.
        min_overlap: gamma in (0, 1]; shifts overlapping fewer than ``gamma * min(|M_F|, |M_B|)`` voxels
            score ``-1``.
    """
    dim = _check_batched(moving_ngf, "moving_ngf", channels=len(spectra.fft_shape))
    if spectra.products.ndim == dim + 2 and spectra.products.shape[0] != moving_ngf.shape[0]:
        raise InputError(f"spectra: gathered for {spectra.products.shape[0]} volumes, got {moving_ngf.shape[0]}")
    if tuple(moving_ngf.shape[2:]) != spectra.moving_shape or tuple(moving_mask.shape[2:]) != spectra.moving_shape:
        raise InputError(
            f"moving_ngf: expected spatial shape {spectra.moving_shape} (as prepared), got "
            f"{tuple(moving_ngf.shape[2:])} (mask {tuple(moving_mask.shape[2:])})"
        )
    axes = tuple(range(-dim, 0))
    # Correlation as a convolution with the flipped moving volume: no conjugate of a batch of spectra is
    # needed, and c(chi_min + k) = (A' * flip(B))(k + Lb - 1), a block that never wraps around.
    moving = torch.cat([ngf_products(moving_ngf), moving_mask.to(moving_ngf.dtype)], dim=1).flip(axes)
    spec = torch.fft.rfftn(moving, s=spectra.fft_shape, dim=axes)
    n_products = spec.shape[1] - 1
    fixed = spectra.products  # (P, *half), or (B, P, *half) when gathered: select() broadcasts either way
    acc = spec[:, 0] * fixed.select(-dim - 1, 0)
    for p in range(1, n_products):
        acc += spec[:, p] * fixed.select(-dim - 1, p)
    start = [m - 1 for m in spectra.moving_shape]
    numerator = _inverse_block(acc, spectra.fft_shape, start, spectra.shift_count)
    del acc
    overlap = _inverse_block(spec[:, -1] * spectra.mask, spectra.fft_shape, start, spectra.shift_count)
    overlap = torch.round(overlap).clamp_min(1e-7)
    return _finish(numerator, overlap, spectra.fixed_mask_sum, moving_mask, min_overlap, spectra.shift_min)


def _inverse_block(spec: torch.Tensor, fft_shape, start, count) -> torch.Tensor:
    """Block ``[start, start + count)`` of the real inverse FFT of a half spectrum ``(B, *half)``, transforming
    one axis at a time and cutting each to the block before the next (cheaper than ``irfftn`` + crop)."""
    dim = len(fft_shape)
    out = spec
    for a in range(dim - 1):
        out = torch.fft.ifft(out, n=fft_shape[a], dim=a - dim).narrow(a - dim, start[a], count[a])
    return torch.fft.irfft(out, n=fft_shape[-1], dim=-1).narrow(-1, start[-1], count[-1])


def _finish(numerator, overlap, fixed_sum, moving_mask, min_overlap, shift_min) -> CrossSimilarity:
    threshold = _overlap_threshold(fixed_sum, moving_mask, min_overlap)
    threshold = threshold.reshape((-1,) + (1,) * (numerator.ndim - 1))
    score = torch.where(overlap >= threshold, numerator / overlap, torch.full_like(numerator, INVALID_SCORE))
    shift_min = shift_min if isinstance(shift_min, np.ndarray) else tuple(int(a) for a in shift_min)
    return CrossSimilarity(score=score, overlap=overlap, shift_min=shift_min)


def cross_similarity_direct(
    fixed_ngf: torch.Tensor,
    fixed_mask: torch.Tensor,
    moving_ngf: torch.Tensor,
    moving_mask: torch.Tensor,
    shift_min: Sequence[int],
    shift_max: Sequence[int],
    *,
    min_overlap: float = 0.5,
) -> CrossSimilarity:
    """CSNGF by the direct loop over shifts (the reference the FFT version is tested and timed against).

    Same arguments and result as :func:`prepare_fixed_spectra` + :func:`cross_similarity_fft`; cost
    ``O(|shifts| * |B|)`` instead of ``O(L log L)``.
    """
    _check_batched(moving_ngf, "moving_ngf")
    counts = [b - a + 1 for a, b in zip(shift_min, shift_max)]
    numerator = moving_ngf.new_zeros((moving_ngf.shape[0], *counts))
    overlap = torch.zeros_like(numerator)
    fshape, mshape = fixed_ngf.shape[2:], moving_ngf.shape[2:]
    for k in itertools.product(*[range(c) for c in counts]):
        chi = [a + i for a, i in zip(shift_min, k)]
        fsl, msl = [], []
        for c, nf, nm in zip(chi, fshape, mshape):
            lo, hi = max(0, -c), min(nm, nf - c)  # moving voxels y with 0 <= y + c < nf
            fsl.append(slice(lo + c, hi + c) if hi > lo else slice(0, 0))
            msl.append(slice(lo, hi) if hi > lo else slice(0, 0))
        fs, ms = (slice(None), slice(None), *fsl), (slice(None), slice(None), *msl)
        dot = (fixed_ngf[fs] * moving_ngf[ms]).sum(dim=1)
        numerator[(slice(None), *k)] = (dot * dot).flatten(1).sum(dim=1)
        overlap[(slice(None), *k)] = (fixed_mask[fs] * moving_mask[ms]).flatten(1).sum(dim=1)
    overlap = overlap.clamp_min(1e-7)
    return _finish(numerator, overlap, float(fixed_mask.sum()), moving_mask, min_overlap, shift_min)

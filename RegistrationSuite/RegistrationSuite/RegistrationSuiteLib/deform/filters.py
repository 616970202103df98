"""Separable smoothing and corner-aligned resizing of ``(N, C, *S)`` tensors (2D or 3D)."""

from __future__ import annotations

import functools
import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_AVG = {2: F.avg_pool2d, 3: F.avg_pool3d}


def _per_axis(value, d: int, name: str) -> list:
    values = [float(value)] * d if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != d:
        raise ValueError(f"{name}: expected one value or {d}, got {value}")
    return values


# Axes up to this length are smoothed by one matrix product (the axis' smoothing matrix, border replication
# folded in): the same numbers as the padded convolution up to float rounding, and on a CPU several times
# faster, backward included (grouped 3D convolutions take a slow path there). Longer axes use the convolution.
_MATRIX_MAX_LENGTH = 512


@functools.lru_cache(maxsize=64)
def _gaussian_kernel(sigma: float) -> tuple:
    r = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum(), r


@functools.lru_cache(maxsize=64)
def _smoothing_matrix(n: int, sigma: float, dtype, device) -> torch.Tensor:
    """``(n, n)`` matrix ``M`` with ``(M x)_i = Σ_j k_j x_clamp(i + j)``: the 1D Gaussian of
    :func:`gaussian_smooth` with the border replicated."""
    k, r = _gaussian_kernel(sigma)
    cols = (torch.arange(n)[:, None] + torch.arange(-r, r + 1)[None, :]).clamp(0, n - 1)
    m = torch.zeros(n, n, dtype=torch.float64)
    m.scatter_add_(1, cols, k.expand(n, -1).contiguous())
    return m.to(dtype=dtype, device=device)


def gaussian_smooth(x: torch.Tensor, sigma: Union[float, Sequence[float]]) -> torch.Tensor:
    """Gaussian smoothing with standard deviation ``sigma`` (voxels, one value or one per tensor axis),
    separable, border replicated, kernel truncated at 3σ. ``sigma = 0`` leaves an axis untouched."""
    d = x.dim() - 2
    sigmas = _per_axis(sigma, d, "sigma")
    c = x.shape[1]
    for axis, s in enumerate(sigmas):
        if s <= 0:
            continue
        n = int(x.shape[2 + axis])
        if n <= _MATRIX_MAX_LENGTH and x.is_floating_point():
            m = _smoothing_matrix(n, float(s), x.dtype, x.device)
            x = x @ m.T if axis == d - 1 else (x.movedim(2 + axis, -1) @ m.T).movedim(-1, 2 + axis)
            continue
        k, r = _gaussian_kernel(float(s))
        k = k.to(dtype=x.dtype, device=x.device)
        shape = [1] * d
        shape[axis] = 2 * r + 1
        weight = k.view(1, 1, *shape).expand(c, 1, *shape)
        pad = [0, 0] * d
        pad[2 * (d - 1 - axis)] = pad[2 * (d - 1 - axis) + 1] = r  # F.pad counts from the last axis
        x = _CONV[d](F.pad(x, pad, mode="replicate"), weight, groups=c)
    return x


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a ``(2r+1)^d`` window (only voxels inside the image count at the border)."""
    d = x.dim() - 2
    if radius <= 0:
        return x
    # Separable: the window and its count of inside voxels are products over the axes, so three 1D means
    # (each counting only inside voxels) equal the d-dimensional one at (2r+1)·d instead of (2r+1)^d taps.
    k, r = 2 * int(radius) + 1, int(radius)
    for axis in range(d):
        kernel = [1] * d
        kernel[axis] = k
        pad = [0] * d
        pad[axis] = r
        x = _AVG[d](x, tuple(kernel), stride=1, padding=tuple(pad), count_include_pad=False)
    return x


def level_shape(shape: Sequence[int], factor: float) -> tuple:
    """Spatial shape of a pyramid level ``factor`` times coarser that keeps the corner voxels:
    ``ceil((n - 1) / factor) + 1`` (at least 2 when ``n >= 2``)."""
    return tuple(int(n) if n < 2 else max(2, int(math.ceil((int(n) - 1) / float(factor))) + 1) for n in shape)


def resize_image(x: torch.Tensor, shape: Sequence[int], *, smooth: bool = True) -> torch.Tensor:
    """Corner-aligned (``align_corners=True``) linear resize to spatial ``shape``; when shrinking, Gaussian
    pre-smoothing with σ = 0.5 × shrink factor per axis avoids aliasing."""
    d = x.dim() - 2
    shape = tuple(int(n) for n in shape)
    if shape == tuple(x.shape[2:]):
        return x
    if smooth:
        sig = [0.5 * (a - 1) / (b - 1) if b > 1 and a > b else 0.0 for a, b in zip(x.shape[2:], shape)]
        x = gaussian_smooth(x, sig)
    return F.interpolate(x, size=shape, mode="bilinear" if d == 2 else "trilinear", align_corners=True)

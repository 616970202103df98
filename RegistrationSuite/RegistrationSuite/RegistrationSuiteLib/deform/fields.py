"""Displacement fields in voxel units: identity grids, warping, integration, composition, Jacobians.

See the package docstring for the conventions: fields ``(N, d, *S)`` in voxel units, channel 0 = x (last
tensor axis), ``grid_sample(align_corners=True)``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def _check_field(u: torch.Tensor, name: str = "field") -> int:
    if not isinstance(u, torch.Tensor) or u.dim() not in (4, 5) or u.shape[1] != u.dim() - 2:
        shape = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"{name}: expected a tensor (N, d, *S) with d = 2 or 3 spatial axes, got {shape}")
    return u.dim() - 2


def _xyz_sizes(spatial: Sequence[int]) -> list:
    """Grid sizes in channel order (x, y[, z]) = reversed tensor order."""
    return [int(n) for n in reversed(tuple(spatial))]


_GRID_CACHE: dict = {}


def _cached_identity(shape, device, dtype) -> torch.Tensor:
    """The identity grid of the last few shapes, built once (an optimisation warps on the same grid hundreds
    of times). Callers must not modify it in place."""
    key = (tuple(int(n) for n in shape), str(device), dtype)
    grid = _GRID_CACHE.get(key)
    if grid is None:
        if len(_GRID_CACHE) >= 8:
            _GRID_CACHE.pop(next(iter(_GRID_CACHE)))
        grid = _GRID_CACHE[key] = identity_grid(shape, device=device, dtype=dtype)
    return grid


def identity_grid(shape: Sequence[int], *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised sampling grid of the identity for ``grid_sample(align_corners=True)``.

    Args:
        shape: spatial shape ``S`` in tensor order, e.g. ``(D, H, W)``.

    Returns:
        ``(1, *S, d)`` with the last axis ordered (x, y[, z]) in [-1, 1].
    """
    axes = [torch.linspace(-1.0, 1.0, int(n), device=device, dtype=dtype) if n > 1
            else torch.zeros(1, device=device, dtype=dtype) for n in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(mesh[::-1], dim=-1).unsqueeze(0)


def _scale(u: torch.Tensor) -> torch.Tensor:
    sizes = _xyz_sizes(u.shape[2:])
    scale = [2.0 / max(n - 1, 1) for n in sizes]
    return torch.tensor(scale, device=u.device, dtype=u.dtype).view(1, -1, *([1] * (u.dim() - 2)))


def voxel_to_normalized(u: torch.Tensor) -> torch.Tensor:
    """Voxel-unit field ``(N, d, *S)`` → normalised ``grid_sample`` units (same layout)."""
    _check_field(u)
    return u * _scale(u)


def normalized_to_voxel(u: torch.Tensor) -> torch.Tensor:
    """Normalised ``grid_sample`` units → voxel units (inverse of :func:`voxel_to_normalized`)."""
    _check_field(u)
    return u / _scale(u)


def warp_image(image: torch.Tensor, u: torch.Tensor, *, mode: str = "bilinear",
               padding_mode: str = "border") -> torch.Tensor:
    """``out(x) = image(x + u(x))`` on the field's grid (image and field share that grid's corners).

    Args:
        image: ``(N, C, *S_img)``; usually ``S_img == S``. A different shape is read as the same physical
            extent sampled more or less finely (corner voxels coincide).
        u: displacement ``(N, d, *S)`` in voxel units of ``S``.
        mode: ``"bilinear"`` (trilinear in 3D) or ``"nearest"``.
        padding_mode: ``"border"``, ``"zeros"`` or ``"reflection"`` (outside the image).

    Returns:
        ``(N, C, *S)``.
    """
    d = _check_field(u)
    if image.dim() != d + 2:
        raise ValueError(f"image: expected {d + 2} axes to match a {d}D field, got shape {tuple(image.shape)}")
    grid = _cached_identity(u.shape[2:], u.device, u.dtype) + voxel_to_normalized(u).movedim(1, -1)
    if image.shape[0] != grid.shape[0]:
        grid = grid.expand(image.shape[0], *grid.shape[1:])
    k = torch.get_num_threads()
    if (d == 3 and k > 1 and image.device.type == "cpu" and image.shape[0] == 1 and grid.shape[1] >= 2 * k
            and grid[0, ..., 0].numel() >= _SPLIT_MIN_VOXELS):
        return _grid_sample_in_slabs(image, grid, k, mode, padding_mode)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


# torch's CPU 3D grid_sample runs its batch items in parallel but each item on one thread: one large image
# is therefore sampled in k slabs of output planes given as k batch items (the same numbers, voxel by voxel).
_SPLIT_MIN_VOXELS = 1 << 18


def _grid_sample_in_slabs(image, grid, k, mode, padding_mode):
    n = grid.shape[1]
    n_even = n // k * k
    slabs = grid[:, :n_even].reshape(k, n_even // k, *grid.shape[2:])
    out = F.grid_sample(image.expand(k, *image.shape[1:]), slabs, mode=mode, padding_mode=padding_mode,
                        align_corners=True)
    out = out.movedim(0, 1).reshape(1, image.shape[1], n_even, *grid.shape[2:4])
    if n_even < n:
        rest = F.grid_sample(image, grid[:, n_even:], mode=mode, padding_mode=padding_mode, align_corners=True)
        out = torch.cat([out, rest], 2)
    return out


def compose_fields(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Field of "``inner`` first, then ``outer``": ``w(x) = inner(x) + outer(x + inner(x))``.

    ``warp_image(warp_image(I, outer), inner) == warp_image(I, compose_fields(outer, inner))`` up to
    interpolation. Both fields ``(N, d, *S)`` in voxel units of the same grid.
    """
    _check_field(outer, "outer")
    _check_field(inner, "inner")
    return inner + warp_image(outer, inner, padding_mode="border")


def integrate_velocity(v: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring: the displacement of ``exp(v)`` for a stationary velocity field ``v``.

    ``u = v / 2**steps``, then ``steps`` times ``u = compose_fields(u, u)`` (Arsigny et al., MICCAI 2006;
    VoxelMorph uses 7 steps). Args and result ``(N, d, *S)`` in voxel units.
    """
    _check_field(v, "velocity")
    if int(steps) < 0:
        raise ValueError(f"steps: expected an integer >= 0, got {steps}")
    u = v / (2.0 ** int(steps))
    for _ in range(int(steps)):
        u = compose_fields(u, u)
    return u


def resize_field(u: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample a voxel-unit field onto a grid with the same corner voxels and spatial ``shape``.

    Values are rescaled per axis by ``(n_new - 1) / (n_old - 1)`` so physical displacements are kept.
    """
    d = _check_field(u)
    shape = tuple(int(n) for n in shape)
    if len(shape) != d:
        raise ValueError(f"shape: expected {d} sizes, got {shape}")
    if shape == tuple(u.shape[2:]):
        return u
    mode = "bilinear" if d == 2 else "trilinear"
    out = F.interpolate(u, size=shape, mode=mode, align_corners=True)
    old, new = _xyz_sizes(u.shape[2:]), _xyz_sizes(shape)
    scale = [(b - 1) / (a - 1) if a > 1 else 1.0 for a, b in zip(old, new)]
    return out * torch.tensor(scale, device=u.device, dtype=u.dtype).view(1, -1, *([1] * d))


def spatial_gradient(u: torch.Tensor) -> torch.Tensor:
    """Central differences (one-sided at the border) of every channel along every axis.

    Returns:
        ``(N, C, d, *S)`` where ``[:, c, a]`` is ``∂u_c / ∂x_a`` with ``a`` in channel order (x, y[, z]),
        in units of ``u`` per voxel.
    """
    d = u.dim() - 2
    grads = torch.gradient(u, dim=tuple(range(2, 2 + d)))  # tensor order (z, y, x)
    return torch.stack(grads[::-1], dim=2)


def jacobian_determinant(u: torch.Tensor) -> torch.Tensor:
    """``det(I + ∇u)`` of the mapping ``x → x + u(x)`` by central differences.

    The determinant is the same in voxel and in physical (LPS) units for any spacing and direction
    (``∇u_phys = A ∇u_vox A⁻¹`` with ``A = direction · diag(spacing)``), so voxel units suffice.

    Args:
        u: ``(N, d, *S)`` in voxel units.

    Returns:
        ``(N, 1, *S)``; values ≤ 0 mark folding.
    """
    d = _check_field(u)
    g = spatial_gradient(u)
    j = [[g[:, c, a] + (1.0 if a == c else 0.0) for a in range(d)] for c in range(d)]
    if d == 2:
        det = j[0][0] * j[1][1] - j[0][1] * j[1][0]
    else:
        det = (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
               - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
               + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))
    return det.unsqueeze(1)


def folding_fraction(u: torch.Tensor, mask: Optional[torch.Tensor] = None) -> float:
    """Fraction of voxels (inside ``mask`` ``(N, 1, *S)`` if given) with ``det J ≤ 0``."""
    det = jacobian_determinant(u)
    folded = (det <= 0).to(u.dtype)
    if mask is None:
        return float(folded.mean())
    m = (mask > 0.5).to(u.dtype).expand_as(folded)
    total = float(m.sum())
    return float((folded * m).sum()) / total if total > 0 else 0.0


def field_to_physical(u: torch.Tensor, spacing: Sequence[float], direction=None) -> torch.Tensor:
    """Voxel-unit displacement → physical displacement (mm, LPS): ``direction @ (spacing * u)``.

    Args:
        u: ``(N, d, *S)``.
        spacing: ``d`` spacings in ITK order (x, y[, z]).
        direction: ``d × d`` direction cosine matrix (ITK, row-major); ``None`` = identity.
    """
    d = _check_field(u)
    a = torch.diag(torch.as_tensor([float(s) for s in spacing], dtype=u.dtype, device=u.device))
    if direction is not None:
        a = torch.as_tensor(direction, dtype=u.dtype, device=u.device).reshape(d, d) @ a
    return torch.einsum("ij,nj...->ni...", a, u)

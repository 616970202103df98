"""Rotation sampling (global on SO(3) / the circle, and local perturbations) and batched rotation of volumes.

Rotations are ``(D, D)`` float64 NumPy matrices acting on column vectors. :func:`rotate_volumes` works in
*array index* frames (axes ``(z, y, x)`` / ``(y, x)``); the search converts physical rotations to index
rotations with the grids' axis matrices.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError
from ...geometry import rotation_from_quaternion, uniform_random_rotations

# Super-Fibonacci constants (M. Alexa, "Super-Fibonacci Spirals: Fast, Low-Discrepancy Sampling of SO(3)",
# CVPR 2022): phi = sqrt(2) and psi, the real root of psi^4 = psi + 4.
_PHI = np.sqrt(2.0)
_PSI = 1.533751168755204288118041


def super_fibonacci_quaternions(n: int) -> np.ndarray:
    """``n`` unit quaternions ``(n, 4)`` (w, x, y, z) forming a low-discrepancy cover of SO(3) (Alexa 2022)."""
    s = np.arange(n, dtype=float) + 0.5
    r = np.sqrt(s / n)
    big_r = np.sqrt(1.0 - s / n)
    alpha = 2.0 * np.pi * s / _PHI
    beta = 2.0 * np.pi * s / _PSI
    return np.stack([r * np.sin(alpha), r * np.cos(alpha), big_r * np.sin(beta), big_r * np.cos(beta)], axis=1)


def rotation_2d(angles_rad: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(N, 2, 2)`` for counter-clockwise angles (radians) in the (first, second) plane."""
    c, s = np.cos(angles_rad), np.sin(angles_rad)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def global_rotations(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rotations ``(n, D, D)`` covering all orientations uniformly.

    3D: a super-Fibonacci cover of SO(3) (better covering radius than i.i.d. random quaternions for the same
    ``n``), turned by one random rotation from ``rng`` so the seed changes the sample while keeping it
    uniform (the reference samples Euler angles in a box, which is *not* uniform on SO(3)).
    2D: stratified angles ``(i + u) * 360 / n`` degrees, ``u ~ U[0, 1)`` from ``rng``.
    """
    if n < 1:
        raise InputError(f"num_rotations: expected >= 1 for a global level, got {n}")
    if dim == 2:
        return rotation_2d((np.arange(n) + rng.uniform()) * (2.0 * np.pi / n))
    if dim != 3:
        raise InputError(f"dim: expected 2 or 3, got {dim}")
    base = rotation_from_quaternion(super_fibonacci_quaternions(n))
    turn = uniform_random_rotations(1, rng)[0]
    return np.einsum("ij,njk->nik", turn, base)


def axis_angle_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(N, 3, 3)`` from rotation vectors ``(N, 3)`` (axis times angle in radians)."""
    rotvec = np.asarray(rotvec, dtype=float).reshape(-1, 3)
    angle = np.linalg.norm(rotvec, axis=1)
    axis = rotvec / np.where(angle > 0, angle, 1.0)[:, None]
    half = 0.5 * angle
    q = np.concatenate([np.cos(half)[:, None], np.sin(half)[:, None] * axis], axis=1)
    return rotation_from_quaternion(q)


def perturb_rotations(parents: np.ndarray, count: int, max_deg: float, rng: np.random.Generator):
    """Rotations near each parent: the parent itself plus ``count - 1`` perturbed copies.

    3D: ``Exp(w) @ parent`` with ``w`` uniform in the ball of radius ``max_deg`` (rotation-vector space), i.e.
    a perturbation of at most ``max_deg`` degrees about a uniformly random axis. 2D: angle offsets uniform
    in ``[-max_deg, max_deg]``.

    Args:
        parents: ``(P, D, D)``.
        count: rotations per parent (>= 1; the first is always the unperturbed parent).
        max_deg: perturbation half-width in degrees.

    Returns:
        ``(rotations (P * count, D, D), parent_index (P * count,))``.
    """
    parents = np.asarray(parents, dtype=float)
    p, dim = parents.shape[0], parents.shape[1]
    if count < 1:
        raise InputError(f"count: expected >= 1 rotations per parent, got {count}")
    n = p * (count - 1)
    limit = np.radians(max_deg)
    if dim == 2:
        deltas = rotation_2d(rng.uniform(-limit, limit, size=n))
    else:
        axis = rng.normal(size=(n, 3))
        axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        deltas = axis_angle_matrix(axis * (limit * np.cbrt(rng.uniform(size=n)))[:, None])
    index = np.repeat(np.arange(p), count - 1)
    perturbed = np.einsum("nij,njk->nik", deltas, parents[index]) if n else parents[:0]
    rotations = np.concatenate([parents, perturbed], axis=0)
    return rotations, np.concatenate([np.arange(p), index])


def rotation_distance_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees of ``a^T b`` for rotation matrices broadcast as ``(..., D, D)``."""
    rel = np.einsum("...ji,...jk->...ik", a, b)
    if rel.shape[-1] == 2:
        return np.degrees(np.abs(np.arctan2(rel[..., 1, 0], rel[..., 0, 0])))
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def rotate_volumes(
    volume: torch.Tensor,
    index_rotations: np.ndarray,
    out_shape,
    in_center,
) -> torch.Tensor:
    """Resample one volume under a batch of rotations about a centre, in one ``grid_sample`` call.

    Output voxel ``y`` (array index) takes the input at ``v = in_center + Q (y - (out_shape - 1) / 2)``
    (trilinear/bilinear, zero outside), so output and input centres correspond.

    Args:
        volume: ``(1, C, *in_shape)`` input channels (e.g. intensity and a 0/1 domain mask).
        index_rotations: ``(B, D, D)`` matrices ``Q`` in array-index order (orthogonal, det may be -1 when
            the two grids differ in handedness).
        out_shape: output spatial shape (array order).
        in_center: ``(D,)`` continuous input index (array order) of the rotation centre.

    Returns:
        ``(B, C, *out_shape)`` on ``volume``'s device and dtype.
    """
    dim = volume.ndim - 2
    q = torch.as_tensor(np.asarray(index_rotations), dtype=volume.dtype, device=volume.device)
    if q.ndim != 3 or q.shape[1:] != (dim, dim):
        raise InputError(f"index_rotations: expected (B, {dim}, {dim}), got {tuple(q.shape)}")
    out_shape = tuple(int(s) for s in out_shape)
    axes = [torch.arange(n, dtype=volume.dtype, device=volume.device) - (n - 1) / 2.0 for n in out_shape]
    base = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, dim)  # (N, D)
    in_shape = torch.as_tensor(volume.shape[2:], dtype=volume.dtype, device=volume.device)
    center = torch.as_tensor(np.asarray(in_center, dtype=float), dtype=volume.dtype, device=volume.device)
    # Normalised grid_sample coordinates (align_corners=True): -1 / +1 at the first / last voxel centre.
    scale = 2.0 / (in_shape - 1).clamp_min(1.0)
    coords = (torch.einsum("bij,nj->bni", q, base) + center) * scale - 1.0  # (B, N, D), array order
    grid = coords.flip(-1).reshape(1, q.shape[0] * out_shape[0], *out_shape[1:], dim)
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    out = out.reshape(volume.shape[1], q.shape[0], *out_shape)
    return out.transpose(0, 1)

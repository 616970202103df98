"""Smoothness penalties of displacement fields ``(N, d, *S)`` (voxel units; finite differences)."""

from __future__ import annotations

import torch


def _diff(u: torch.Tensor, axis: int) -> torch.Tensor:
    return u.narrow(axis, 1, u.shape[axis] - 1) - u.narrow(axis, 0, u.shape[axis] - 1)


def diffusion_energy(u: torch.Tensor) -> torch.Tensor:
    """Mean over voxels of ``Σ_c Σ_a (∂_a u_c)²`` (forward differences; Fischer & Modersitzki's diffusion
    regulariser, VoxelMorph's gradient loss with the squared norm). Invariant to pyramid level for a field
    kept in level voxel units."""
    d = u.dim() - 2
    return sum(_diff(u, 2 + a).pow(2).sum(1).mean() for a in range(d))


def bending_energy(u: torch.Tensor) -> torch.Tensor:
    """Mean over voxels of ``Σ_c [Σ_a (∂_aa u_c)² + 2 Σ_{a<b} (∂_ab u_c)²]`` (thin-plate bending energy,
    second differences)."""
    d = u.dim() - 2
    total = u.new_zeros(())
    for a in range(d):
        total = total + _diff(_diff(u, 2 + a), 2 + a).pow(2).sum(1).mean()
        for b in range(a + 1, d):
            total = total + 2.0 * _diff(_diff(u, 2 + a), 2 + b).pow(2).sum(1).mean()
    return total


REGULARIZERS = {"diffusion": diffusion_energy, "bending": bending_energy}

"""Analytic phantoms for the global rigid tests: smooth ellipsoids (ellipses in 2D) defined in physical space,
sampled on any grid, so a known fixed -> moving transform and any spacing/direction can be imposed exactly."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

# (centre offset mm, radii mm, intensity); deliberately asymmetric so no rotation maps it onto itself.
_ELLIPSOIDS_3D = [
    ((0.0, 0.0, 0.0), (52.0, 40.0, 34.0), 0.45),
    ((18.0, 10.0, 6.0), (14.0, 9.0, 8.0), 1.0),
    ((-22.0, -6.0, 12.0), (8.0, 13.0, 9.0), 0.1),
    ((4.0, -22.0, -14.0), (11.0, 6.0, 12.0), 0.8),
    ((-10.0, 20.0, -8.0), (6.0, 6.0, 6.0), 0.65),
]
_ELLIPSES_2D = [
    ((0.0, 0.0), (52.0, 36.0), 0.45),
    ((18.0, 9.0), (14.0, 8.0), 1.0),
    ((-24.0, -6.0), (8.0, 14.0), 0.1),
    ((6.0, -20.0), (12.0, 6.0), 0.8),
]


def phantom(points: np.ndarray, centre) -> np.ndarray:
    """Intensity at physical points ``(N, D)`` of a phantom centred at ``centre`` (mm); edges ~2 mm wide."""
    points = np.asarray(points, float) - np.asarray(centre, float)
    shapes = _ELLIPSOIDS_3D if points.shape[1] == 3 else _ELLIPSES_2D
    value = np.zeros(len(points))
    for offset, radii, weight in shapes:
        r = np.linalg.norm((points - np.asarray(offset)) / np.asarray(radii), axis=1)
        inside = 1.0 / (1.0 + np.exp(np.clip((r - 1.0) * min(radii) / 2.0, -50, 50)))
        value = value * (1.0 - inside) + weight * inside  # later shapes paint over earlier ones
    return value


def make_grid(size, spacing, origin=None, direction=None, centre=None) -> sitk.Image:
    """An empty float32 image; ``centre`` (mm) overrides ``origin`` so the grid is centred there."""
    d = len(size)
    img = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    img.SetSpacing([float(s) for s in spacing])
    direction = np.eye(d) if direction is None else np.asarray(direction, float).reshape(d, d)
    img.SetDirection(tuple(direction.ravel()))
    if centre is not None:
        half = (np.asarray(size, float) - 1) / 2 * np.asarray(spacing, float)
        origin = np.asarray(centre, float) - direction @ half
    img.SetOrigin(tuple(float(o) for o in (np.zeros(d) if origin is None else origin)))
    return img


def sample(grid: sitk.Image, centre, fixed_to_moving: np.ndarray | None = None, *, invert=False) -> sitk.Image:
    """The phantom (centred at ``centre`` in moving space) seen on ``grid`` through ``fixed_to_moving``."""
    d = grid.GetDimension()
    size = grid.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, d)
    m = np.eye(d + 1)
    m[:d, :d] = np.asarray(grid.GetDirection()).reshape(d, d) @ np.diag(grid.GetSpacing())
    m[:d, d] = grid.GetOrigin()
    pts = idx @ m[:d, :d].T + m[:d, d]
    if fixed_to_moving is not None:
        pts = pts @ fixed_to_moving[:d, :d].T + fixed_to_moving[:d, d]
    val = phantom(pts, centre)
    if invert:
        val = 1.0 - val
    arr = val.reshape(size).transpose(tuple(range(d))[::-1]).astype(np.float32)  # ITK (x, y, z) -> (z, y, x)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(grid)
    return out


def rotation(axis, degrees) -> np.ndarray:
    """3x3 rotation about ``axis`` (right-handed), or 2x2 when ``axis`` is None."""
    t = np.radians(degrees)
    if axis is None:
        return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def rigid(rot: np.ndarray, centre, translation) -> np.ndarray:
    """Homogeneous ``x -> R (x - c) + c + t``."""
    d = rot.shape[0]
    m = np.eye(d + 1)
    m[:d, :d] = rot
    m[:d, d] = np.asarray(centre, float) - rot @ np.asarray(centre, float) + np.asarray(translation, float)
    return m


def corner_error(grid: sitk.Image, estimate: np.ndarray, truth: np.ndarray) -> float:
    """Mean distance (mm) between the grid's corners mapped by ``estimate`` and by ``truth``."""
    d = grid.GetDimension()
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in grid.GetSize()], indexing="ij")).reshape(d, -1).T
    pts = np.array([grid.TransformContinuousIndexToPhysicalPoint([float(c) for c in p]) for p in corners])
    a = pts @ estimate[:d, :d].T + estimate[:d, d]
    b = pts @ truth[:d, :d].T + truth[:d, d]
    return float(np.linalg.norm(a - b, axis=1).mean())

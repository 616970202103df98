"""Coordinate frames and transforms with named directions.

Conventions (used by every module of the package):

- Physical space is **LPS** millimetres, as in ITK/SimpleITK and DICOM. Slicer (MRML) is **RAS**;
  :data:`LPS_TO_RAS` converts a homogeneous 3D point between them (it is its own inverse).
- Arrays follow SimpleITK's ``GetArrayFromImage`` layout: axes ``(z, y, x)`` for 3D, ``(y, x)`` for 2D;
  sizes, spacings, origins and indices follow ITK order ``(x, y, z)``.
- A registration transform maps **fixed points to moving points** (``fixed_to_moving``), so
  ``sitk.Resample(moving, fixed, transform)`` aligns moving onto fixed. Matrices are homogeneous
  ``(D + 1, D + 1)`` arrays acting on column vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
RAS_TO_LPS = LPS_TO_RAS


@dataclass(frozen=True)
class Grid:
    """A regular sampling grid in physical (LPS) space: the geometry of an image without its voxels.

    Attributes:
        size: number of voxels per axis, ITK order ``(x, y[, z])``.
        spacing: voxel spacing in mm, ITK order.
        origin: physical position (mm, LPS) of voxel index 0.
        direction: ``(D, D)`` direction cosines; column ``i`` is the physical direction of index axis ``i``.
    """

    size: tuple
    spacing: tuple
    origin: tuple
    direction: np.ndarray

    @property
    def dimension(self) -> int:
        return len(self.size)

    @classmethod
    def from_image(cls, image: sitk.Image) -> "Grid":
        d = image.GetDimension()
        return cls(
            size=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=np.asarray(image.GetDirection(), dtype=float).reshape(d, d),
        )

    def index_to_world(self) -> np.ndarray:
        """Homogeneous ``(D+1, D+1)`` matrix mapping continuous voxel indices (x, y, z) to LPS mm."""
        d = self.dimension
        m = np.eye(d + 1)
        m[:d, :d] = self.direction @ np.diag(self.spacing)
        m[:d, d] = self.origin
        return m

    def world_to_index(self) -> np.ndarray:
        """Inverse of :meth:`index_to_world`."""
        return np.linalg.inv(self.index_to_world())

    def corners(self) -> np.ndarray:
        """Physical positions (mm, LPS) of the ``2**D`` corner voxel centres, shape ``(2**D, D)``."""
        d = self.dimension
        idx = np.array(np.meshgrid(*[[0, s - 1] for s in self.size], indexing="ij")).reshape(d, -1).T
        return apply_affine(self.index_to_world(), idx.astype(float))

    def center(self) -> np.ndarray:
        """Physical position (mm, LPS) of the grid's centre."""
        c = (np.asarray(self.size, dtype=float) - 1.0) / 2.0
        return apply_affine(self.index_to_world(), c[None])[0]

    def physical_extent(self) -> np.ndarray:
        """Edge lengths in mm, ITK order (number of voxels times spacing)."""
        return np.asarray(self.size, dtype=float) * np.asarray(self.spacing, dtype=float)

    def reference_image(self, pixel_type=sitk.sitkFloat32) -> sitk.Image:
        """An empty image on this grid (e.g. the reference for ``sitk.Resample``)."""
        img = sitk.Image([int(s) for s in self.size], pixel_type)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(self.direction.ravel()))
        return img

    def to_dict(self) -> dict:
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": self.direction.ravel().tolist(),
        }


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a homogeneous ``(D+1, D+1)`` matrix to points of shape ``(N, D)``."""
    points = np.asarray(points, dtype=float)
    d = points.shape[-1]
    return points @ matrix[:d, :d].T + matrix[:d, d]


def affine_matrix_from_sitk(transform: sitk.Transform, dimension: int = 3) -> np.ndarray:
    """Homogeneous matrix of a linear SimpleITK transform (any of Euler/Versor/Affine/Similarity/Translation
    or a composite of them), in the same direction as the transform (ITK: fixed→moving, LPS)."""
    if not transform.IsLinear():
        raise InputError(f"transform: expected a linear (affine) transform, got {transform.GetName()}")
    d = dimension
    origin = np.zeros(d)
    images = np.array([transform.TransformPoint(tuple(p)) for p in np.vstack([origin, np.eye(d)])])
    m = np.eye(d + 1)
    m[:d, d] = images[0]
    m[:d, :d] = (images[1:] - images[0]).T
    return m


def sitk_affine_from_matrix(matrix: np.ndarray) -> sitk.AffineTransform:
    """A SimpleITK ``AffineTransform`` from a homogeneous matrix (direction preserved)."""
    matrix = np.asarray(matrix, dtype=float)
    d = matrix.shape[0] - 1
    tx = sitk.AffineTransform(d)
    tx.SetMatrix(tuple(matrix[:d, :d].ravel()))
    tx.SetTranslation(tuple(matrix[:d, d]))
    return tx


def fixed_to_moving_lps_to_moving_to_fixed_ras(fixed_to_moving_lps: np.ndarray) -> np.ndarray:
    """Slicer's linear ``ToParent`` (moving→fixed, RAS) from an ITK fixed→moving LPS 3D affine."""
    m = np.asarray(fixed_to_moving_lps, dtype=float)
    if m.shape != (4, 4):
        raise InputError(f"fixed_to_moving_lps: expected a 4x4 matrix, got shape {m.shape}")
    return np.linalg.inv(LPS_TO_RAS @ m @ LPS_TO_RAS)


def moving_to_fixed_ras_to_fixed_to_moving_lps(moving_to_fixed_ras: np.ndarray) -> np.ndarray:
    """Inverse of :func:`fixed_to_moving_lps_to_moving_to_fixed_ras`."""
    m = np.asarray(moving_to_fixed_ras, dtype=float)
    return LPS_TO_RAS @ np.linalg.inv(m) @ LPS_TO_RAS


def rotation_from_quaternion(q: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(N, 3, 3)`` from unit quaternions ``(N, 4)`` in (w, x, y, z) order."""
    q = np.asarray(q, dtype=float)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    r = np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    )
    return r.reshape(q.shape[:-1] + (3, 3))


def uniform_random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rotations ``(n, 3, 3)`` drawn uniformly (Haar measure) on SO(3) via random unit quaternions."""
    q = rng.normal(size=(n, 4))
    return rotation_from_quaternion(q)


def rotation_angle_deg(r: np.ndarray) -> np.ndarray:
    """Rotation angle(s) in degrees of rotation matrices ``(..., 3, 3)``."""
    tr = np.trace(np.asarray(r), axis1=-2, axis2=-1)
    return np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


def fit_rigid(source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares rigid transform (Kabsch with the determinant fix) mapping ``source`` onto ``target``.

    Args:
        source, target: corresponding points ``(N, D)``, N ≥ D.
        weights: optional non-negative weights ``(N,)``.

    Returns:
        Homogeneous ``(D+1, D+1)`` matrix ``M`` with ``target ≈ M · source``; ``det(R) = +1`` always.
    """
    source = np.asarray(source, dtype=float)
    target = np.asarray(target, dtype=float)
    if source.shape != target.shape or source.ndim != 2:
        raise InputError(f"fit_rigid: expected two (N, D) arrays of equal shape, got {source.shape} and {target.shape}")
    n, d = source.shape
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    w = w / w.sum()
    cs, ct = w @ source, w @ target
    h = (source - cs).T @ ((target - ct) * w[:, None])
    u, _, vt = np.linalg.svd(h)
    fix = np.eye(d)
    fix[-1, -1] = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    r = vt.T @ fix @ u.T
    m = np.eye(d + 1)
    m[:d, :d] = r
    m[:d, d] = ct - r @ cs
    return m


def rigid_about_center(rotation: np.ndarray, center: Sequence[float], translation: Sequence[float]) -> np.ndarray:
    """Homogeneous matrix of ``x ↦ R (x − c) + c + t``."""
    r = np.asarray(rotation, dtype=float)
    d = r.shape[0]
    c = np.asarray(center, dtype=float)
    m = np.eye(d + 1)
    m[:d, :d] = r
    m[:d, d] = c - r @ c + np.asarray(translation, dtype=float)
    return m

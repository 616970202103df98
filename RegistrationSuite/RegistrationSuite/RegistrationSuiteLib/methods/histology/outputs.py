"""Outputs of a histology registration: landmark transfer (both directions), warped moving slide, checkerboard.

Direction: ``result.transform`` maps fixed → moving (physical units), so fixed landmarks are *pushed* through it
into the moving slide, the moving slide is *pulled* onto the fixed grid by ``sitk.Resample``, and moving
landmarks reach the fixed slide through the inverse, solved per point.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ...errors import RegistrationFailed
from .slides import Slide


def transfer_landmarks(result, fixed_xy: np.ndarray) -> np.ndarray:
    """Fixed level-0 pixel positions ``(N, 2)`` → their positions in the moving slide (level-0 pixels)."""
    phys = result.fixed_slide.level0_to_physical(fixed_xy)
    moved = np.array([result.transform.TransformPoint(tuple(float(v) for v in p)) for p in phys])
    return result.moving_slide.physical_to_level0(moved.reshape(-1, 2))


def transfer_points(result, points):
    """:class:`~RegistrationSuiteLib.io.points.LabeledPoints` in the fixed slide's physical frame (x, y; z and
    labels kept) → their positions in the moving slide's physical frame."""
    from ...io.points import LabeledPoints

    xyz = np.asarray(points.points, dtype=float).copy()
    xyz[:, :2] = [result.transform.TransformPoint((float(x), float(y))) for x, y in xyz[:, :2]]
    return LabeledPoints(xyz, points.labels)


def transfer_landmarks_inverse(result, moving_xy: np.ndarray, *, iterations: int = 50,
                               tolerance_px: float = 1e-3) -> np.ndarray:
    """Moving level-0 pixel positions ``(N, 2)`` → fixed level-0 pixels, by solving ``T(x) = y`` per point.

    Newton-like iterations with the affine part's matrix as the Jacobian: ``x ← x − A⁻¹ (T(x) − y)``; the
    non-rigid part is small and smooth, so this contracts.

    Raises:
        RegistrationFailed: a point did not converge (the field folds there).
    """
    target = result.moving_slide.level0_to_physical(moving_xy).reshape(-1, 2)
    a = np.asarray(result.affine)[:2, :2]
    t = np.asarray(result.affine)[:2, 2]
    a_inv = np.linalg.inv(a)
    x = (target - t) @ a_inv.T
    tol = tolerance_px * result.fixed_slide.pixel_size
    for _ in range(iterations):
        fx = np.array([result.transform.TransformPoint(tuple(float(v) for v in p)) for p in x]).reshape(-1, 2)
        step = (fx - target) @ a_inv.T
        x = x - step
        if np.abs(step).max(initial=0.0) < tol:
            break
    else:
        raise RegistrationFailed(f"inverse landmark transfer did not converge (last step {np.abs(step).max():.3g})")
    return result.fixed_slide.physical_to_level0(x)


def slide_image(slide: Slide) -> sitk.Image:
    """The slide's level as a 2D SimpleITK image (RGB vector or scalar) with its physical geometry."""
    pix = slide.pixels
    image = sitk.GetImageFromArray(pix, isVector=True) if pix.shape[2] > 1 else sitk.GetImageFromArray(pix[:, :, 0])
    image.SetSpacing(tuple(float(v) for v in slide.spacing))
    image.SetOrigin(tuple(float(v) for v in slide.origin))
    return image


def warped_moving(result) -> sitk.Image:
    """The moving slide (colours kept) resampled onto the fixed slide's grid; glass colour outside."""
    moving = slide_image(result.moving_slide)
    fixed = slide_image(result.fixed_slide)
    dtype = result.moving_slide.pixels.dtype
    white = float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0
    return sitk.Resample(moving, fixed, result.transform, sitk.sitkLinear, white, moving.GetPixelID())


def checkerboard(result, warped: sitk.Image, squares: int = 8) -> sitk.Image:
    """An RGB uint8 checkerboard of the fixed slide and the warped moving slide (``squares`` along the long side)."""
    a = _rgb8(result.fixed_slide.pixels)
    b = _rgb8(sitk.GetArrayFromImage(warped))
    h, w = a.shape[:2]
    side = max(1, int(np.ceil(max(h, w) / squares)))
    yy, xx = np.mgrid[0:h, 0:w]
    pick = ((yy // side + xx // side) % 2 == 1)[:, :, None]
    out = np.where(pick, b, a)
    image = sitk.GetImageFromArray(out, isVector=True)
    return image


def _rgb8(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != np.uint8:
        top = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else max(float(arr.max()), 1.0)
        arr = np.clip(arr.astype(np.float32) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return arr[:, :, :3]

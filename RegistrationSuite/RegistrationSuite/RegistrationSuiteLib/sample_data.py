"""Small sample data shipped with the package (provenance and licences in ``data/NOTICE.md``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import rigid_about_center, rotation_from_quaternion, sitk_affine_from_matrix

DATA_DIR = Path(__file__).resolve().parent / "data"
SAMPLES = {
    "T1": "sample_T1_2mm.nii.gz",
    "T2": "sample_T2_2mm.nii.gz",
}


def sample_path(name: str) -> Path:
    """Path of a shipped sample volume (``"T1"`` or ``"T2"``: one brain, co-registered, 2 mm)."""
    if name not in SAMPLES:
        raise InputError(f"sample: expected one of {sorted(SAMPLES)}, got {name!r}")
    path = DATA_DIR / SAMPLES[name]
    if not path.is_file():
        raise InputError(f"sample: {path} is missing from the installation")
    return path


def load_sample(name: str) -> sitk.Image:
    return sitk.ReadImage(str(sample_path(name)), sitk.sitkFloat32)


def known_rigid_case(
    fixed_content: sitk.Image,
    *,
    angle_deg: float = 25.0,
    axis=(0.3, -0.5, 0.8),
    translation_mm=(12.0, -8.0, 6.0),
    padding_mm: float = 20.0,
):
    """Make a fixed image with a known rigid misalignment.

    The returned fixed image is ``fixed_content`` seen through ``fixed_to_moving`` on a grid padded by
    ``padding_mm``: ``fixed(x) = content(T(x))``, so an image in ``fixed_content``'s frame (e.g. another
    modality on the same grid) is the moving image and ``T`` is the true fixed→moving transform (LPS).

    Returns:
        ``(fixed_image, fixed_to_moving)`` with ``fixed_to_moving`` a 4x4 homogeneous matrix (LPS).
    """
    axis = np.asarray(axis, dtype=float)
    axis = axis / np.linalg.norm(axis)
    half = np.radians(angle_deg) / 2.0
    rotation = rotation_from_quaternion(np.r_[np.cos(half), np.sin(half) * axis][None])[0]
    size = np.asarray(fixed_content.GetSize(), dtype=float)
    spacing = np.asarray(fixed_content.GetSpacing(), dtype=float)
    center = np.asarray(fixed_content.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist()))
    fixed_to_moving = rigid_about_center(rotation, center, translation_mm)
    pad = np.ceil(padding_mm / spacing).astype(int)
    grid = sitk.Image([int(s) for s in size + 2 * pad], sitk.sitkFloat32)
    grid.SetSpacing(tuple(spacing))
    grid.SetDirection(fixed_content.GetDirection())
    grid.SetOrigin(fixed_content.TransformContinuousIndexToPhysicalPoint((-pad).astype(float).tolist()))
    fixed = sitk.Resample(fixed_content, grid, sitk_affine_from_matrix(fixed_to_moving), sitk.sitkLinear, 0.0)
    return fixed, fixed_to_moving


def checkerboard_png_array(fixed: sitk.Image, resampled_moving: sitk.Image, *, squares: int = 8,
                           min_height: int = 320) -> np.ndarray:
    """A uint8 RGB picture ``(H, 2W, 3)``: checkerboard of fixed/moving (left) and a colour overlay
    (fixed in magenta, moving in green; right), from the middle slice of 3D images, upscaled (linear) to at
    least ``min_height`` rows so small volumes stay legible."""
    from scipy.ndimage import zoom

    f = _middle_slice(fixed)
    m = _middle_slice(resampled_moving)
    factor = max(1.0, min_height / f.shape[0])
    if factor > 1.0:
        f, m = zoom(f, factor, order=1), zoom(m, factor, order=1)
    h, w = f.shape
    yy, xx = np.mgrid[0:h, 0:w]
    board = ((yy * squares // h + xx * squares // w) % 2).astype(bool)
    checker = np.where(board, f, m)
    overlay = np.stack([f, m, f], axis=-1)
    left = np.repeat(checker[..., None], 3, axis=-1)
    return (np.concatenate([left, overlay], axis=1) * 255).astype(np.uint8)


def _middle_slice(image: sitk.Image) -> np.ndarray:
    arr = sitk.GetArrayFromImage(image).astype(float)
    if arr.ndim == 3:
        arr = arr[arr.shape[0] // 2]
    arr = arr[::-1]  # image rows run towards +y (posterior in LPS); flip so anterior is up
    lo, hi = np.percentile(arr, [1, 99.5])
    return np.clip((arr - lo) / max(hi - lo, 1e-6), 0, 1)

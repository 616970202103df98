"""Review images of one pair: checkerboard and edge overlay of the fixed image with the resampled moving
one in three planes (2D: the slide itself), and the Jacobian-determinant map of deformable results.

Planes are the middle slices of the FIXED image's voxel grid, drawn with square millimetres (anisotropic
spacing is resampled for display only); the moving image is resampled onto the fixed grid with the
result's fixed→moving transform, as ``sitk.Resample(moving, fixed, transform)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .png import encode_png
from .quality import jacobian_determinant

MAX_SIDE = 220  # pixels of a plane's longer side in the report
GAP = 4


def _planes(image: sitk.Image) -> list:
    """Middle slices ``[(array (rows, cols), (row_mm, col_mm), name)]``; superior up for the 3D side views."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    if arr.ndim == 4:  # vector/RGB: luminance-like mean
        arr = arr.mean(axis=-1)
    sp = image.GetSpacing()
    if arr.ndim == 2:
        return [(arr, (sp[1], sp[0]), "slide")]
    z, y, x = (s // 2 for s in arr.shape)
    return [(arr[z], (sp[1], sp[0]), "axial"),
            (np.flipud(arr[:, y, :]), (sp[2], sp[0]), "coronal"),
            (np.flipud(arr[:, :, x]), (sp[2], sp[1]), "sagittal")]


def _square_pixels(a: np.ndarray, spacing) -> np.ndarray:
    rows_mm, cols_mm = a.shape[0] * spacing[0], a.shape[1] * spacing[1]
    scale = MAX_SIDE / max(rows_mm, cols_mm)
    target = (max(2, round(rows_mm * scale)), max(2, round(cols_mm * scale)))
    return ndimage.zoom(a, (target[0] / a.shape[0], target[1] / a.shape[1]), order=1, mode="nearest")


def _normalise(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    vals = ref[np.isfinite(ref)]
    lo, hi = (np.percentile(vals, [1, 99.5]) if vals.size else (0.0, 1.0))
    return np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)


def checkerboard(f: np.ndarray, m: np.ndarray, squares: int = 8) -> np.ndarray:
    """RGB checkerboard of two [0, 1] planes (fixed in the even squares)."""
    rows, cols = np.indices(f.shape)
    size = max(2, max(f.shape) // squares)
    mask = ((rows // size + cols // size) % 2) == 0
    g = np.where(mask, f, m)
    return np.repeat((g * 255)[..., None], 3, axis=2)


def edge_overlay(f: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Fixed in gray, the moving image's strongest edges (top 12 % gradient magnitude) in magenta."""
    gy, gx = np.gradient(ndimage.gaussian_filter(m, 1.0))
    mag = np.hypot(gx, gy)
    inside = mag[m > 0.02]
    edges = mag > (np.percentile(inside, 88) if inside.size else np.inf)
    rgb = np.repeat((f * 200)[..., None], 3, axis=2)
    rgb[edges] = (255, 0, 255)
    return rgb


def jacobian_colours(j: np.ndarray) -> np.ndarray:
    """log2(det J) in [-1, 1] from blue (compression) through white to red (expansion); det ≤ 0 black."""
    v = np.clip(np.log2(np.maximum(j, 1e-6)), -1, 1)
    rgb = np.empty(j.shape + (3,))
    rgb[..., 0] = np.where(v < 0, 1 + v, 1.0)
    rgb[..., 1] = 1 - np.abs(v)
    rgb[..., 2] = np.where(v > 0, 1 - v, 1.0)
    rgb[j <= 0] = 0
    return rgb * 255


def _row(tiles: list) -> np.ndarray:
    h = max(t.shape[0] for t in tiles)
    padded = [np.pad(t, ((0, h - t.shape[0]), (0, GAP), (0, 0)), constant_values=255) for t in tiles]
    return np.concatenate(padded, axis=1)[:, :-GAP]


def render_pair_previews(fixed, moving, transform, out_dir, *, identity_note: bool = False) -> dict:
    """Write ``checkerboard.png``, ``edges.png`` (and ``jacobian.png`` for deformable results) into
    ``out_dir``; returns ``{name: path}``.

    Args:
        fixed, moving: image paths (or ``sitk.Image``); transform: path, ``sitk.Transform`` or None (identity:
            the "before registration" view of a failed pair).
    """
    from ..io import read_image, read_transform

    f_img = fixed if isinstance(fixed, sitk.Image) else read_image(fixed, "fixed").image
    m_img = moving if isinstance(moving, sitk.Image) else read_image(moving, "moving").image
    if transform is None:
        tx = sitk.Transform(f_img.GetDimension(), sitk.sitkIdentity)
    else:
        tx = transform if isinstance(transform, sitk.Transform) else read_transform(transform)
    f_img, m_img = sitk.Cast(f_img, sitk.sitkFloat32), sitk.Cast(m_img, sitk.sitkFloat32)
    resampled = sitk.Resample(m_img, f_img, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    m_ref = sitk.GetArrayViewFromImage(m_img)
    cb, ed = [], []
    for (fa, sp, _), (ma, _, _) in zip(_planes(f_img), _planes(resampled)):
        f = _square_pixels(_normalise(fa, sitk.GetArrayViewFromImage(f_img)), sp)
        m = _square_pixels(_normalise(ma, m_ref), sp)
        cb.append(checkerboard(f, m))
        ed.append(edge_overlay(f, m))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"checkerboard": out / "checkerboard.png", "edges": out / "edges.png"}
    written["checkerboard"].write_bytes(encode_png(_row(cb)))
    written["edges"].write_bytes(encode_png(_row(ed)))
    jac: Optional[sitk.Image] = jacobian_determinant(tx) if transform is not None else None
    if jac is not None:
        tiles = [jacobian_colours(_square_pixels(a, sp)) for a, sp, _ in _planes(jac)]
        written["jacobian"] = out / "jacobian.png"
        written["jacobian"].write_bytes(encode_png(_row(tiles)))
    return written


def render_single_image(image, out_path) -> Path:
    """One input alone, grey, in the same planes as the pair previews (three planes; 2D: the slide): what the
    review page shows of a pair whose other input could not be read. Returns the PNG's path."""
    from ..io import read_image

    img = image if isinstance(image, sitk.Image) else read_image(image, "image").image  # RGB: luminance
    img = sitk.Cast(img, sitk.sitkFloat32)
    ref = sitk.GetArrayViewFromImage(img)
    tiles = [np.repeat((_square_pixels(_normalise(a, ref), sp) * 255)[..., None], 3, axis=2) for a, sp, _ in _planes(img)]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(encode_png(_row(tiles)))
    return out

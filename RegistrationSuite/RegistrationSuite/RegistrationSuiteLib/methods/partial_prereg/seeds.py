"""Starting points of TSPM's local search that do not need a RANSAC consensus (our additions to the paper).

All seeds are rigid fixed → moving matrices (LPS mm, ``q = R p + t``) whose rotation is the *scanner
orientation*: the moving image's physical axes are taken to be the fixed image's (scanners image heads in a
standard pose, within a few tens of degrees, which the local search's rotation neighbourhood covers).

- :func:`scanner_seeds`: no network at all (a moving image too small for a patch at template scale): the
  scanner coordinates themselves (identity, when the moving image lies inside the fixed one there), and the
  moving image's centre placed on the fixed foreground's centre and on a lattice over the fixed foreground
  whose spacing lets the local search's windows tile it.
- :func:`neighbour_seeds`: a seed and its six neighbours one window step along each fixed axis (the
  orientation-prior candidate when RANSAC finds no consensus: its translation is what the patches agree on).
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import SimpleITK as sitk

from ...geometry import Grid, apply_affine

#: lattice spacing and neighbour step, in local-search windows (half-widths): 1.5 leaves a 0.5-window overlap
STEP_IN_WINDOWS = 1.5


def placing(moving_point: np.ndarray, fixed_point: np.ndarray) -> np.ndarray:
    """Fixed → moving matrix with identity rotation mapping ``fixed_point`` onto ``moving_point`` (mm)."""
    m = np.eye(4)
    m[:3, 3] = np.asarray(moving_point, float) - np.asarray(fixed_point, float)
    return m


def foreground_box(image: sitk.Image, level: float = 0.1):
    """``(lo, hi)`` continuous indices (x, y, z) of the voxels above ``level`` of the 1-99.5 percentile range
    (the whole image when nothing is above it)."""
    arr = sitk.GetArrayViewFromImage(image)
    lo_v, hi_v = np.percentile(arr, [1.0, 99.5])
    idx = np.argwhere(arr > lo_v + level * (hi_v - lo_v))
    if len(idx) == 0:
        return np.zeros(3), np.asarray(image.GetSize(), float) - 1.0
    return idx.min(axis=0)[::-1].astype(float), idx.max(axis=0)[::-1].astype(float)


def scanner_seeds(fixed: sitk.Image, moving: sitk.Image, window_mm: float) -> Dict[str, np.ndarray]:
    """Network-free seeds (module docstring), named ``scanner_coordinates``, ``centre`` and ``lattice_<k>``.

    The lattice has ``ceil(extent / step)`` points per fixed axis (``step = STEP_IN_WINDOWS · window_mm``)
    centred on the fixed foreground's bounding box, so the windows of all seeds cover it.
    """
    grid_f = Grid.from_image(fixed)
    c_moving = Grid.from_image(moving).center()
    lo, hi = foreground_box(fixed)
    to_world = grid_f.index_to_world()
    centre = apply_affine(to_world, ((lo + hi) / 2.0)[None])[0]
    seeds: Dict[str, np.ndarray] = {}
    inside = apply_affine(grid_f.world_to_index(), c_moving[None])[0]
    if np.all((inside >= -0.5) & (inside <= np.asarray(fixed.GetSize()) - 0.5)):
        seeds["scanner_coordinates"] = np.eye(4)
    seeds["centre"] = placing(c_moving, centre)
    step = STEP_IN_WINDOWS * window_mm
    extent = (hi - lo) * np.asarray(fixed.GetSpacing())
    counts = np.maximum(1, np.ceil(extent / step)).astype(int)
    axes = np.asarray(fixed.GetDirection(), float).reshape(3, 3)  # columns: the fixed image's axes (LPS)
    offsets = [(np.arange(n) - (n - 1) / 2.0) * step for n in counts]
    k = 0
    for ox in offsets[0]:
        for oy in offsets[1]:
            for oz in offsets[2]:
                point = centre + axes @ np.array([ox, oy, oz])
                if np.linalg.norm(point - centre) > 0.5 * window_mm:  # the centre seed covers it already
                    seeds[f"lattice_{k}"] = placing(c_moving, point)
                    k += 1
    return seeds


def neighbour_seeds(name: str, seed: np.ndarray, fixed: sitk.Image, window_mm: float) -> Dict[str, np.ndarray]:
    """``seed`` (fixed → moving) and six neighbours whose fixed-space position of the moving image is moved by
    ``± STEP_IN_WINDOWS · window_mm`` along each fixed axis."""
    out = {name: np.asarray(seed, float)}
    axes = np.asarray(fixed.GetDirection(), float).reshape(3, 3)
    step = STEP_IN_WINDOWS * window_mm
    for k, axis in enumerate("xyz"):
        for sign in (1, -1):
            shifted = np.array(seed, float)
            # q = R (p - d) + t: the moving image now sits at fixed points moved by d
            shifted[:3, 3] -= shifted[:3, :3] @ (sign * step * axes[:, k])
            out[f"{name}_{'+' if sign > 0 else '-'}{axis}"] = shifted
    return out

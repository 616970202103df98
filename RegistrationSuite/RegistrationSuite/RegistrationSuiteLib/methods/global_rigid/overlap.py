"""Can any pose make the two images overlap enough? A geometric check made before the (long) search.

The search keeps a shift only when the images (their masks, when given) overlap by at least
``gamma * min(|M_F|, |M_M|)`` (paper Eq. 4, ``gamma`` = ``min_overlap``): a fraction of the *smaller* of the
two volumes. Whatever the rotation, the overlap of two boxes ``F`` and ``M`` lies inside ``F``'s thinnest
slab (width ``w_F``), and each of its sections parallel to that slab is a plane section of ``M``, whose area is
at most ``S_M = sqrt(sum of M's squared face areas)`` (a planar section's area squared is the sum of its
squared projections onto the coordinate planes). So::

    overlap <= min(|F|, |M|, w_F * S_M, w_M * S_F)

(in 2D ``S`` is the rectangle's diagonal). When that bound is below the required overlap no pose can work,
and the search is not started.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ...errors import RegistrationFailed


def _extent_mm(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.GetSize(), float) * np.asarray(image.GetSpacing(), float)


def _max_section(extent: np.ndarray) -> float:
    """Upper bound of the area (3D) or length (2D) of any plane (line) section of a box."""
    if len(extent) == 2:
        return float(np.hypot(*extent))
    a, b, c = extent
    return float(np.sqrt((a * b) ** 2 + (b * c) ** 2 + (a * c) ** 2))


def max_overlap_fraction(fixed_extent_mm, moving_extent_mm, fixed_volume=None, moving_volume=None) -> float:
    """Upper bound, over every rigid pose, of ``overlap / min(|M_F|, |M_M|)`` for two boxes.

    Args:
        fixed_extent_mm, moving_extent_mm: box side lengths ``(D,)`` in mm.
        fixed_volume, moving_volume: volume (mm³, or mm² in 2D) inside each box that must overlap (the mask's,
            default the whole box).
    """
    f, m = np.asarray(fixed_extent_mm, float), np.asarray(moving_extent_mm, float)
    vf = float(np.prod(f)) if fixed_volume is None else float(fixed_volume)
    vm = float(np.prod(m)) if moving_volume is None else float(moving_volume)
    bound = min(float(np.prod(f)), float(np.prod(m)), f.min() * _max_section(m), m.min() * _max_section(f))
    return bound / min(vf, vm)


def _inside_volume(image: sitk.Image, mask) -> float:
    voxel = float(np.prod(image.GetSpacing()))
    if mask is None:
        return float(np.prod(image.GetSize())) * voxel
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) * voxel


def check_overlap_possible(fixed: sitk.Image, moving: sitk.Image, fixed_mask, moving_mask, min_overlap: float) -> None:
    """Raise :class:`RegistrationFailed` naming ``gamma`` when no pose can reach ``min_overlap``.

    ``fixed``/``moving`` are the images cropped to their masks' bounding boxes (or whole); the masks ``None``
    when not given.
    """
    fixed_extent, moving_extent = _extent_mm(fixed), _extent_mm(moving)
    possible = max_overlap_fraction(fixed_extent, moving_extent, _inside_volume(fixed, fixed_mask),
                                    _inside_volume(moving, moving_mask))
    if possible >= min_overlap:
        return
    what = "masks" if fixed_mask is not None or moving_mask is not None else "images"
    raise RegistrationFailed(
        f"no pose can make the {what} overlap by the minimum overlap γ = min_overlap = {min_overlap:g} (a fraction "
        f"of the smaller {what[:-1]}'s volume): fixed {_fmt(fixed_extent)} mm, moving {_fmt(moving_extent)} mm can "
        f"overlap by at most {possible:.2f} of it; lower --min-overlap (min_overlap) below {possible:.2f}"
    )


def _fmt(extent) -> str:
    return " x ".join(f"{v:.0f}" for v in extent)

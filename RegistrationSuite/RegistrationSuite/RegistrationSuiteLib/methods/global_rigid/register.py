"""Entry point of the global rigid CSNGF registration: images in, physical fixed → moving transform out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import SimpleITK as sitk

from ...device import resolve_device
from ...errors import InputError
from ...geometry import Grid
from ...io import read_image, read_mask
from ...progress import as_progress
from ...result import RegistrationResult
from .config import DOUBTFUL_CONFIDENCE, GlobalRigidConfig
from .overlap import check_overlap_possible
from .refine import refine_candidates
from .rotations import rotation_distance_deg
from .search import Candidate, LevelData, SearchOutcome, search_rotations

# For the confidence, first-level candidates within _NEAR_DEG of the solution are "the same" alignment, those
# beyond _FAR_DEG a different one (the gap leaves out the flank of the solution's own basin).
_NEAR_DEG = 25.0
_FAR_DEG = 45.0


def register_global_rigid(
    fixed,
    moving,
    config: Optional[GlobalRigidConfig] = None,
    *,
    fixed_mask=None,
    moving_mask=None,
    progress=None,
    cancel=None,
) -> RegistrationResult:
    """Global rigid multimodal alignment by the cross-similarity of squared normalized gradient fields.

    A multi-level search over rotations (uniform on SO(3), or the circle in 2D, then perturbations of the best
    candidates) where every rotation's best integer shift comes from one FFT cross-correlation (paper §3),
    followed by a local sub-voxel refinement (``config.refine``).

    Args:
        fixed, moving: ``sitk.Image`` or a path (2D or 3D, any spacing/origin/direction; 2D RGB is converted
            to luminance). Both must have the same dimension.
        config: :class:`GlobalRigidConfig`; ``None`` uses the defaults.
        fixed_mask, moving_mask: optional masks (path or ``sitk.Image``, non-zero = inside) restricting where
            the similarity is measured; each image is cropped to its mask's bounding box, whose centre then is
            the moving image's centre of rotation (otherwise the moving image's centre).
        progress: ``progress(fraction, message)`` callback or a :class:`~RegistrationSuiteLib.progress.Progress`.
        cancel: ``cancel() -> bool``; polled between rotation batches.

    Returns:
        :class:`RegistrationResult` whose ``transform`` is an ``Euler3DTransform`` (2D: ``Euler2DTransform``)
        mapping fixed points to moving points (LPS mm), centred at the fixed image's centre. ``score``: mean
        squared NGF dot product over the overlap at the solution (paper Eq. 4, finest level, in [0, 1]).
        ``confidence``: ``1 - s_alt / s_sol`` on the global (first) level, where ``s_sol`` is the best first-level
        CSNGF within 25° of the solution (or of the first-level candidate it descends from) and ``s_alt`` the
        best first-level CSNGF more than 45° away, clipped to [0, 1] (near 0: a different alignment scored about
        as well at the coarsest level, so check the result). Below :data:`DOUBTFUL_CONFIDENCE` the result is
        flagged: ``diagnostics["doubtful"]`` lists the reason and ``warnings`` repeats it (BENCHMARKS.md reports
        how well the threshold separates successes from failures). ``diagnostics`` also holds the kept
        candidates per level and the refined ones.

    Raises:
        InputError: unreadable/invalid images or masks, 2D vs 3D mismatch, levels too coarse for the images.
        RegistrationFailed: no rotation and shift reach ``config.min_overlap`` (checked from the geometry before
            the search when the image or mask extents alone make it impossible).
        RegistrationCancelled: ``cancel()`` returned True.
    """
    t_start = time.perf_counter()
    cfg = GlobalRigidConfig() if config is None else config
    if not isinstance(cfg, GlobalRigidConfig):
        raise InputError(f"config: expected a GlobalRigidConfig or None, got {type(cfg).__name__}")
    prog = as_progress(progress, cancel)
    fixed_in, moving_in, fmask, mmask = _read_inputs(fixed, moving, fixed_mask, moving_mask)
    device = resolve_device(cfg.device)
    timings = {"read": time.perf_counter() - t_start}
    prog.report(0.0, "building pyramids")

    t0 = time.perf_counter()
    fixed_prep = _prepare(fixed_in.image, fmask, cfg, "fixed")
    moving_prep = _prepare(moving_in.image, mmask, cfg, "moving")
    check_overlap_possible(fixed_prep.image, moving_prep.image, None if fmask is None else fixed_prep.mask,
                           None if mmask is None else moving_prep.mask, cfg.min_overlap)
    fixed_center = Grid.from_image(fixed_in.image).center()
    levels = _build_levels(fixed_prep, moving_prep, cfg, fixed_center, device)
    timings["pyramid"] = time.perf_counter() - t0

    outcome = search_rotations(levels, cfg, prog.sub(0.02, 0.9 if cfg.refine else 1.0))
    timings.update({f"search_level_{k + 1}": sec for k, sec in enumerate(outcome.seconds)})
    final = outcome.kept[-1]
    if cfg.refine and cfg.refine_iterations > 0:
        t0 = time.perf_counter()
        final = refine_candidates(levels[-1], final, epsilon=cfg.epsilon, iterations=cfg.refine_iterations,
                                  progress=prog.sub(0.9, 1.0))
        timings["refine"] = time.perf_counter() - t0
    best = final[0]
    confidence = _confidence(outcome, best)
    diagnostics = _diagnostics(cfg, levels, outcome, final, device)
    diagnostics["doubtful"] = doubtful_reasons(confidence)
    timings["total"] = time.perf_counter() - t_start
    prog.report(1.0, "done")
    return RegistrationResult(
        method="global_rigid",
        transform=_transform(best, levels[-1].moving_center, fixed_center),
        fixed_grid=Grid.from_image(fixed_in.image),
        moving_grid=Grid.from_image(moving_in.image),
        score=float(best.angf),
        confidence=confidence,
        timings=timings,
        diagnostics=diagnostics,
        warnings=fixed_in.warnings + moving_in.warnings + [f"doubtful result: {r}" for r in diagnostics["doubtful"]],
    )


def _read_inputs(fixed, moving, fixed_mask, moving_mask):
    """Validated images (same dimension) and their masks on their grids (or ``None``)."""
    fixed_in, moving_in = read_image(fixed, "fixed"), read_image(moving, "moving")
    dim = fixed_in.image.GetDimension()
    if moving_in.image.GetDimension() != dim:
        raise InputError(f"moving: expected a {dim}D image like fixed, got {moving_in.image.GetDimension()}D")
    fmask = read_mask(fixed_mask, fixed_in.image, "fixed_mask")
    mmask = read_mask(moving_mask, moving_in.image, "moving_mask")
    return fixed_in, moving_in, fmask, mmask


# -------------------------------------------------------------------------------------------- preparation
@dataclass
class _Prepared:
    """An image normalised to [0, 1], cropped to its mask's bounding box, with its 0/1 uint8 mask."""

    image: sitk.Image
    mask: sitk.Image


def _prepare(image: sitk.Image, mask: Optional[sitk.Image], cfg: GlobalRigidConfig, name: str) -> _Prepared:
    """Robust percentile normalisation (inside the mask) and cropping to the mask's bounding box."""
    arr = sitk.GetArrayViewFromImage(image)
    inside = sitk.GetArrayViewFromImage(mask) > 0 if mask is not None else None
    values = arr[inside] if inside is not None else arr.ravel()
    lo, hi = np.percentile(values, cfg.intensity_percentiles)
    if not hi > lo:
        lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        raise InputError(f"{name}: intensities inside the mask are constant ({lo:g}); nothing to align")
    norm = sitk.GetImageFromArray(np.clip((arr.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32))
    norm.CopyInformation(image)
    if mask is None:
        ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
        ones.CopyInformation(image)
        return _Prepared(norm, ones)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    box = stats.GetBoundingBox(1)
    d = image.GetDimension()
    start = [max(0, int(box[i]) - 2) for i in range(d)]
    stop = [min(image.GetSize()[i], int(box[i] + box[d + i]) + 2) for i in range(d)]
    size = [b - a for a, b in zip(start, stop)]
    return _Prepared(sitk.RegionOfInterest(norm, size, start), sitk.RegionOfInterest(mask, size, start))


def _orthonormal(direction: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(direction)
    return u @ vt


def _working_grid(image: sitk.Image, spacing: float, name: str) -> sitk.Image:
    """An isotropic grid along the image's (orthonormalised) axes, covering its extent, centred on it."""
    d = image.GetDimension()
    direction = _orthonormal(np.asarray(image.GetDirection(), float).reshape(d, d))
    extent = np.asarray(image.GetSize(), float) * np.asarray(image.GetSpacing(), float)
    size = np.maximum(1, np.ceil(extent / spacing - 0.01)).astype(int)
    if np.any(size < 4):
        raise InputError(
            f"level_spacing_mm: {spacing:g} mm leaves {name} only {size.tolist()} voxels (extent "
            f"{np.round(extent, 1).tolist()} mm); use smaller level spacings for this image"
        )
    center = np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()]))
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing([float(spacing)] * d)
    grid.SetDirection(tuple(direction.ravel()))
    grid.SetOrigin(tuple(center - direction @ (spacing * (size - 1) / 2.0)))
    return grid


def _smooth(image: sitk.Image, sigma_mm: float) -> sitk.Image:
    if sigma_mm <= 0:
        return image
    if min(image.GetSize()) < 4:  # the recursive filter needs 4 voxels per axis
        return sitk.DiscreteGaussian(image, float(sigma_mm) ** 2, 64, 0.01, True)
    return sitk.SmoothingRecursiveGaussian(image, float(sigma_mm))


def _pyramid(prep: _Prepared, cfg: GlobalRigidConfig, name: str) -> list:
    """Per level (config order): ``(grid, intensities, mask)``, arrays float32 in array order.

    Built finest first: the finest level is smoothed from the input, each coarser one from the next finer
    level with the missing blur ``sqrt(sigma_k^2 - sigma_finer^2)`` (one full-resolution filter per image).
    """
    out = [None] * cfg.num_levels
    source, source_sigma = prep.image, 0.0
    for k in sorted(range(cfg.num_levels), key=lambda i: cfg.level_spacing_mm[i]):
        grid = _working_grid(prep.image, float(cfg.level_spacing_mm[k]), name)
        sigma = float(cfg.blur_mm[k])
        extra = float(np.sqrt(max(sigma**2 - source_sigma**2, 0.0)))
        image = sitk.Resample(_smooth(source, extra), grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        mask = sitk.Resample(prep.mask, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        out[k] = (grid, sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(mask).astype(np.float32))
        source, source_sigma = image, max(sigma, source_sigma)
    return out


def _frame(grid: sitk.Image):
    """Origin ``(D,)`` and array-order axes ``(D, D)`` (column i = direction of array axis i) of a grid."""
    d = grid.GetDimension()
    direction = np.asarray(grid.GetDirection(), float).reshape(d, d)
    return np.asarray(grid.GetOrigin(), float), direction[:, ::-1].copy()


def _build_levels(fixed: _Prepared, moving: _Prepared, cfg: GlobalRigidConfig, fixed_center, device):
    """:class:`LevelData` per level (coarsest first) on ``device``."""
    import torch

    def tensor(*arrays):
        return torch.from_numpy(np.stack(arrays)[None]).to(device=device, dtype=torch.float32)

    levels = []
    for k, ((fgrid, f_img, f_mask), (mgrid, m_img, m_mask)) in enumerate(
            zip(_pyramid(fixed, cfg, "fixed"), _pyramid(moving, cfg, "moving"))):
        s = float(cfg.level_spacing_mm[k])
        if not f_mask.any() or not m_mask.any():
            which = "fixed" if not f_mask.any() else "moving"
            raise InputError(f"{which}_mask: no voxel left on the {s:g} mm working grid; use a larger mask or "
                             "smaller level_spacing_mm")
        f_origin, f_axes = _frame(fgrid)
        m_origin, m_axes = _frame(mgrid)
        m_center = mgrid.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in mgrid.GetSize()])
        levels.append(LevelData(
            spacing=s, fixed=tensor(f_img), fixed_mask=tensor(f_mask), fixed_origin=f_origin, fixed_axes=f_axes,
            fixed_center=np.asarray(fixed_center, float), moving=tensor(m_img * m_mask, m_mask),
            moving_origin=m_origin, moving_axes=m_axes, moving_center=np.asarray(m_center, float),
            box_shape=(int(max(mgrid.GetSize())),) * fixed.image.GetDimension(),
        ))
    return levels


# ------------------------------------------------------------------------------------------------ outputs
def _transform(best: Candidate, moving_center: np.ndarray, fixed_center: np.ndarray) -> sitk.Transform:
    """``q = R (p - a) + c_M`` as an Euler transform centred at the fixed centre: ``t = R (c_F - a) + c_M - c_F``."""
    r = np.asarray(best.rotation, float)
    translation = r @ (fixed_center - best.anchor) + moving_center - fixed_center
    if r.shape[0] == 2:
        tx = sitk.Euler2DTransform()
        tx.SetCenter(tuple(float(c) for c in fixed_center))
        tx.SetAngle(float(np.arctan2(r[1, 0], r[0, 0])))
    else:
        tx = sitk.Euler3DTransform()
        tx.SetCenter(tuple(float(c) for c in fixed_center))
        tx.SetMatrix(tuple(float(v) for v in r.ravel()))
    tx.SetTranslation(tuple(float(v) for v in translation))
    return tx


def _confidence(outcome: SearchOutcome, best: Candidate) -> float:
    """``1 - s_alt / s_sol`` on the first level (see :func:`register_global_rigid`)."""
    angles = [rotation_distance_deg(c.rotation, best.rotation) for c in outcome.global_pool]
    near = [c.score for c, a in zip(outcome.global_pool, angles) if a <= _NEAR_DEG] + [best.origin.score]
    far = [c.score for c, a in zip(outcome.global_pool, angles) if a > _FAR_DEG]
    s_sol = max(near)
    if not s_sol > 0:
        return float("nan")
    return float(np.clip(1.0 - max(far) / s_sol, 0.0, 1.0)) if far else 1.0


def doubtful_reasons(confidence: float) -> list:
    """Reasons to check a result: its confidence is below :data:`DOUBTFUL_CONFIDENCE` (or undefined)."""
    if not np.isfinite(confidence):
        return ["confidence undefined (the solution scored 0 at the coarsest level)"]
    if confidence < DOUBTFUL_CONFIDENCE:
        return [f"confidence {confidence:.3f} < {DOUBTFUL_CONFIDENCE}: another alignment more than {_FAR_DEG:g}° "
                "away scored as well at the coarsest level; check the result visually"]
    return []


def _diagnostics(cfg, levels: List[LevelData], outcome: SearchOutcome, final: List[Candidate], device) -> dict:
    return {
        "config": cfg.to_dict(),
        "device": str(device),
        "levels": [
            {
                "spacing_mm": lv.spacing,
                "fixed_shape": list(lv.fixed.shape[2:]),
                "moving_box_shape": list(lv.box_shape),
                "rotations_evaluated": n,
                "seconds": sec,
                "kept": [c.to_dict() for c in kept],
            }
            for lv, n, sec, kept in zip(levels, outcome.evaluated, outcome.seconds, outcome.kept)
        ],
        "candidates": [c.to_dict() for c in final],
    }

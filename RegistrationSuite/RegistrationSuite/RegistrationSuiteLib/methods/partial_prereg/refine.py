"""Local rigid refinement measured only where the images overlap (the paper's partial-volume change, §2.2).

A partial moving image covers a small part of the fixed one; a metric averaged over the whole fixed image
would reward pulling the moving image onto empty space. Here the metric is restricted to fixed voxels whose
image under the current transform falls inside the moving image's domain (the *overlap*), recomputed before
every resolution level, and samples that leave the moving domain during a level are dropped as well.

- ``"mse"`` and ``"mi"`` use SimpleITK's ``ImageRegistrationMethod`` (mean squares / Mattes mutual
  information, regular-step gradient descent, 3 levels) with the overlap as fixed mask;
- ``"nmi"`` follows the paper (AirLab): normalised mutual information (H(F) + H(M)) / H(F, M) from a
  Parzen-window joint histogram (64 bins), Adam over the 6 rigid parameters, in torch.

Values reported: MI and NMI as similarities (higher is better), MSE as an error (lower is better).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import SimpleITK as sitk

from ...errors import InputError
from ...geometry import Grid, affine_matrix_from_sitk, apply_affine
from ...seeding import itk_seed, itk_threads

LEVELS = ((4, 2.0), (2, 1.0), (1, 0.0))  # (shrink factor, smoothing sigma in mm), coarse to fine
SAMPLES = 20_000  # metric samples per iteration (random, re-drawn every iteration); enough for 6 parameters
# ITK's multi-threaded Mattes MI is not bit-reproducible (see seeding.itk_threads): with 2 threads, four runs of
# the same fixed → template refinement differed by up to 2e-5 (matrix entries, mm). One thread makes it
# bit-reproducible; with SAMPLES points per iteration the cost is small (README "Reproducibility").
ITK_THREADS = 1


@dataclass
class RefineOutcome:
    """Result of :func:`refine_rigid`.

    Attributes:
        fixed_to_moving: refined homogeneous ``(4, 4)`` matrix (LPS mm).
        metric: ``"mse"``, ``"mi"`` or ``"nmi"``.
        before, after: metric value at the start and the end (same evaluation, same overlap rule).
        overlap_before, overlap_after: fraction of the fixed mask (or image) inside the moving domain.
        seconds: run time.
        skipped_levels: one note per level ITK's optimiser could not run (e.g. too many metric samples mapped
            outside the moving image); that level left the transform unchanged, and the caller reports it.
    """

    fixed_to_moving: np.ndarray
    metric: str
    before: float
    after: float
    overlap_before: float
    overlap_after: float
    seconds: float
    skipped_levels: tuple = ()

    @property
    def improved(self) -> bool:
        return self.after < self.before if self.metric == "mse" else self.after > self.before

    def to_dict(self) -> dict:
        return {"metric": self.metric, "before": self.before, "after": self.after, "improved": self.improved,
                "overlap_before": self.overlap_before, "overlap_after": self.overlap_after,
                "seconds": self.seconds, "skipped_levels": list(self.skipped_levels)}


def overlap_mask(fixed: sitk.Image, moving: sitk.Image, fixed_to_moving: np.ndarray,
                 fixed_mask: Optional[sitk.Image] = None) -> sitk.Image:
    """uint8 mask on the fixed grid: voxels (inside ``fixed_mask`` if given) whose image under
    ``fixed_to_moving`` lies inside the moving image's domain."""
    from ...geometry import sitk_affine_from_matrix

    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    mask = sitk.Resample(ones, fixed, sitk_affine_from_matrix(fixed_to_moving), sitk.sitkNearestNeighbor, 0,
                         sitk.sitkUInt8)
    if fixed_mask is not None:
        mask = sitk.And(mask, sitk.Cast(fixed_mask > 0, sitk.sitkUInt8))
    return mask


def _fraction(mask: sitk.Image, fixed_mask: Optional[sitk.Image]) -> float:
    inside = float(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    total = float(np.count_nonzero(sitk.GetArrayViewFromImage(fixed_mask))) if fixed_mask is not None else \
        float(np.prod(mask.GetSize()))
    return inside / max(total, 1.0)


def _euler(matrix: np.ndarray, center: np.ndarray) -> sitk.Euler3DTransform:
    u, _, vt = np.linalg.svd(matrix[:3, :3])
    r = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    tx = sitk.Euler3DTransform()
    tx.SetCenter(center.tolist())
    tx.SetMatrix(r.ravel().tolist(), 1e-6)
    tx.SetTranslation((matrix[:3, 3] + r @ center - center).tolist())
    return tx


def _sampling(mask: sitk.Image, shrink: int, samples: int) -> float:
    """Fraction of the masked voxels (at this shrink factor) that gives about ``samples`` metric samples."""
    n = np.count_nonzero(sitk.GetArrayViewFromImage(mask)) / float(shrink) ** 3
    return float(np.clip(samples / max(n, 1.0), 0.005, 1.0))


def _method(metric: str, iterations: int, seed: int, sampling: float) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(ITK_THREADS)
    if metric == "mi":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    else:
        reg.SetMetricAsMeanSquares()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    # SimpleITK reads seed 0 as 'seed from the wall clock': map every seed (0 included) to a fixed non-zero one.
    reg.SetMetricSamplingPercentage(sampling, itk_seed(seed))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=int(iterations), relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def evaluate_metric(fixed: sitk.Image, moving: sitk.Image, fixed_to_moving: np.ndarray, metric: str, *,
                    fixed_mask: Optional[sitk.Image] = None, seed: int = 0, linear: bool = False) -> float:
    """The metric over the overlap at ``fixed_to_moving`` (MI/NMI as similarity, MSE as error); NaN if the
    images do not overlap. ``fixed_to_moving`` is taken as rigid (its nearest rotation) unless ``linear``
    (any affine matrix, e.g. a similarity; not for ``"nmi"``)."""
    mask = overlap_mask(fixed, moving, fixed_to_moving, fixed_mask)
    inside = np.argwhere(sitk.GetArrayViewFromImage(mask))
    if not len(inside):
        return float("nan")
    values = sitk.GetArrayViewFromImage(fixed)[tuple(inside.T)]
    if metric != "mse" and not values.max() > values.min():
        # the overlap covers only constant fixed voxels (e.g. background): no mutual information to measure
        # (ITK's Mattes histogram refuses a zero intensity range: "zero-valued spacing")
        return float("nan")
    if metric == "nmi":
        from .refine_nmi import nmi_value

        return nmi_value(fixed, moving, fixed_to_moving, mask, seed=seed)
    reg = _method(metric, 1, seed, _sampling(mask, 1, 4 * SAMPLES))
    # ITK's MetricEvaluate reads every voxel of the fixed grid (it ignores the sampling setting) and tests each
    # against the mask: evaluate on the mask's bounding box instead (same voxels, same physical points, same
    # fixed-intensity range inside the mask, so the same value up to summation order; 5x cheaper for a tiny crop).
    lo, hi = inside.min(axis=0)[::-1], inside.max(axis=0)[::-1] + 1
    box = [(hi - lo).tolist(), lo.tolist()]
    reg.SetMetricFixedMask(sitk.RegionOfInterest(mask, *box))
    from ...geometry import sitk_affine_from_matrix

    tx = sitk_affine_from_matrix(fixed_to_moving) if linear else _euler(fixed_to_moving, Grid.from_image(fixed).center())
    reg.SetInitialTransform(tx, inPlace=False)
    with itk_threads(ITK_THREADS):
        value = float(reg.MetricEvaluate(sitk.RegionOfInterest(fixed, *box), moving))
    return -value if metric == "mi" else value


def refine_rigid(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_to_moving: np.ndarray,
    *,
    metric: str = "mi",
    fixed_mask: Optional[sitk.Image] = None,
    iterations: int = 100,
    levels=LEVELS,
    seed: int = 0,
    samples: int = SAMPLES,
    progress=None,
) -> RefineOutcome:
    """Rigid local search from ``fixed_to_moving`` (4x4, LPS) with the metric measured over the overlap.

    Args:
        fixed, moving: 3D float images.
        metric: ``"mse"``, ``"mi"`` or ``"nmi"``.
        fixed_mask: optional region of the fixed image to use (intersected with the overlap).
        iterations: optimiser iterations per level.
        levels: ``(shrink, sigma_mm)`` per level, coarse to fine.
        seed: seed of the random metric sampling.
        samples: number of masked fixed voxels sampled by the metric per iteration.

    Raises:
        InputError: unknown metric, or the images do not overlap at the start.
    """
    if metric not in ("mse", "mi", "nmi"):
        raise InputError(f"refine: expected 'mse', 'mi' or 'nmi', got {metric!r}")
    t0 = time.perf_counter()
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    current = np.asarray(fixed_to_moving, dtype=float)
    mask = overlap_mask(fixed, moving, current, fixed_mask)
    overlap_before = _fraction(mask, fixed_mask)
    if overlap_before == 0:
        raise InputError("refine: the images do not overlap at the initial transform")
    before = evaluate_metric(fixed, moving, current, metric, fixed_mask=fixed_mask, seed=seed)
    skipped = []
    for k, (shrink, sigma) in enumerate(levels):
        if progress is not None:
            progress.report(k / len(levels), f"refining ({metric}) level {k + 1}/{len(levels)}")
        mask = overlap_mask(fixed, moving, current, fixed_mask)
        if not np.any(sitk.GetArrayViewFromImage(mask)):
            break
        with itk_threads(ITK_THREADS):
            current, note = _run_level(fixed, moving, current, mask, metric, shrink, sigma, iterations, seed + k,
                                       samples)
        if note:
            skipped.append(f"level {k + 1}/{len(levels)} (shrink {shrink}, {sigma:g} mm) not refined: {note}")
    after = evaluate_metric(fixed, moving, current, metric, fixed_mask=fixed_mask, seed=seed)
    if not np.isfinite(after) or (np.isfinite(before) and not (after < before if metric == "mse" else after > before)):
        # never return a worse result, nor one whose metric cannot be measured (no overlap, constant fixed voxels)
        current, after = np.asarray(fixed_to_moving, dtype=float), before
    overlap_after = _fraction(overlap_mask(fixed, moving, current, fixed_mask), fixed_mask)
    return RefineOutcome(current, metric, float(before), float(after), overlap_before, overlap_after,
                         time.perf_counter() - t0, tuple(skipped))


def _run_level(fixed, moving, current, mask, metric, shrink, sigma, iterations, seed, samples):
    """One refinement level: ``(matrix, note)``; ``note`` is ``""`` unless ITK could not run the level, in
    which case the matrix is ``current`` unchanged and the note says why (never silently)."""
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1].astype(float)
    center = apply_affine(Grid.from_image(fixed).index_to_world(), idx.mean(axis=0)[None])[0]
    if metric == "nmi":
        from .refine_nmi import nmi_level

        return nmi_level(fixed, moving, current, mask, center, shrink=shrink, sigma=sigma,
                         iterations=iterations, seed=seed), ""
    reg = _method(metric, iterations, seed, _sampling(mask, shrink, samples))
    reg.SetMetricFixedMask(mask)
    reg.SetShrinkFactorsPerLevel([int(shrink)])
    reg.SetSmoothingSigmasPerLevel([float(sigma)])
    tx = _euler(current, center)
    reg.SetInitialTransform(tx, inPlace=True)
    try:
        reg.Execute(fixed, moving)
    except RuntimeError as exc:  # e.g. "too many samples map outside moving image buffer", or a constant
        # fixed region under the mask (Mattes MI: "zero-valued spacing" of its histogram)
        if "outside" in str(exc) or "sample" in str(exc).lower() or "spacing" in str(exc).lower():
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            return current, (lines[-1] if lines else "ITK error")[:200]
        raise
    return affine_matrix_from_sitk(tx), ""


def isotropic_scale(matrix: np.ndarray) -> float:
    """Isotropic scale of an affine 4x4 (or 3x3) matrix: ``det^(1/3)`` of its linear part (1 for a rigid one)."""
    return float(np.cbrt(np.linalg.det(np.asarray(matrix, float)[:3, :3])))


def refine_similarity(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_to_moving: np.ndarray,
    *,
    fixed_mask: Optional[sitk.Image] = None,
    iterations: int = 100,
    levels=LEVELS[:2],
    seed: int = 0,
    samples: int = SAMPLES,
) -> tuple:
    """Similarity (rotation, translation and one isotropic scale) Mattes-MI refinement from ``fixed_to_moving``,
    measured over the overlap like :func:`refine_rigid`: ``(4x4 fixed → moving matrix, scale)``. The scale is
    moving size over fixed size (``|det|^(1/3)`` of the linear part). Used to align a fixed image with the TSPM
    template, whose brain differs in size from a subject's. A level ITK cannot run leaves the matrix unchanged;
    a result whose MI is not better than the start's is not returned (the start is, scale 1)."""
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    start = np.asarray(fixed_to_moving, dtype=float)
    current = start
    before = evaluate_metric(fixed, moving, start, "mi", fixed_mask=fixed_mask, seed=seed, linear=True)
    for k, (shrink, sigma) in enumerate(levels):
        mask = overlap_mask(fixed, moving, current, fixed_mask)
        idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1].astype(float)
        if not len(idx):
            break
        center = apply_affine(Grid.from_image(fixed).index_to_world(), idx.mean(axis=0)[None])[0]
        linear = current[:3, :3]
        scale = isotropic_scale(linear)
        tx = sitk.Similarity3DTransform()
        tx.SetCenter(center.tolist())
        rotation = _euler(np.vstack([np.hstack([linear / scale, np.zeros((3, 1))]), [0, 0, 0, 1]]), center)
        tx.SetMatrix(rotation.GetMatrix(), 1e-6)
        tx.SetScale(scale)
        tx.SetTranslation((current[:3, 3] + linear @ center - center).tolist())
        reg = _method("mi", iterations, seed + k, _sampling(mask, shrink, samples))
        reg.SetMetricFixedMask(mask)
        reg.SetShrinkFactorsPerLevel([int(shrink)])
        reg.SetSmoothingSigmasPerLevel([float(sigma)])
        reg.SetInitialTransform(tx, inPlace=True)
        try:
            with itk_threads(ITK_THREADS):
                reg.Execute(fixed, moving)
        except RuntimeError:
            continue
        current = affine_matrix_from_sitk(tx)
    after = evaluate_metric(fixed, moving, current, "mi", fixed_mask=fixed_mask, seed=seed, linear=True)
    if not (np.isfinite(after) and after > before):
        return start, isotropic_scale(start)
    return current, isotropic_scale(current)

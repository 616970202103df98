"""Entry point: ``register_organ_point_cloud(fixed, moving, config)`` → :class:`OrganPointCloudResult`.

Direction: MO-BCPD deforms the fixed points onto the moving points, T(y) = sR(y + v(y)) + t, so T is the
fixed→moving mapping of every registration result (``result.transform.TransformPoint(fixed_point)`` is the
corresponding moving position, LPS mm).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk
import torch

from ...device import resolve_device
from ...errors import InputError
from ...geometry import Grid, apply_affine
from ...io.points import POINT_SUFFIXES, LabeledPoints, read_points
from ...progress import as_progress
from ...result import RegistrationResult
from ...surfaces import image_labels, labels_to_points
from .bcpd import BCPDFit, em_subset, fit_similarity, run_bcpd
from .config import LabelModel, OrganPointCloudConfig
from .field import displacement_field, field_grid
from .mapping import FittedMapping
from .sampling import spread_per_label

PointsInput = Union[LabeledPoints, sitk.Image, str, os.PathLike]
SURFACE_OVERSAMPLE = 4  # label images: area-uniform draws per kept point before farthest-point sampling
MIN_POINTS_PER_ORGAN = 4  # fewer cannot pin a surface patch (and D + 1 points fix a similarity)


@dataclass
class OrganPointCloudResult(RegistrationResult):
    """:class:`RegistrationResult` plus the registered point sets (arrays kept out of ``diagnostics``).

    Attributes:
        fixed_points: the fixed organ points that were registered (LPS mm, original labels).
        fixed_points_in_moving: T(fixed_points), their positions in moving space (exact GP mean, not the
            interpolated grid), e.g. for ``--output-points``.
        mapping: the fitted model, which :func:`transform_points` evaluates exactly at any point.
    """

    fixed_points: Optional[LabeledPoints] = None
    fixed_points_in_moving: Optional[LabeledPoints] = None
    mapping: Optional[FittedMapping] = None


@dataclass
class _Input:
    points: Optional[LabeledPoints]
    image: Optional[sitk.Image]
    labels: np.ndarray
    source: str


def register_organ_point_cloud(fixed: PointsInput, moving: PointsInput, config: Optional[OrganPointCloudConfig] = None,
                               *, progress=None, cancel=None) -> OrganPointCloudResult:
    """Register organ point clouds (or label images) with multi-organ BCPD.

    Args:
        fixed, moving: :class:`LabeledPoints`; a point file (``.csv`` with ``x,y,z,label``, ``.vtk``,
            ``.vtp``, ``.ply`` with a ``label`` array; LPS mm); or a label image (``sitk.Image`` or a NIfTI/NRRD
            path) whose organ surfaces are sampled (``config.points_per_organ`` per organ).
        config: :class:`OrganPointCloudConfig` (defaults: Λ = 3 mm, B = 50 mm, S = I, U = I, ω = 0, per-organ
            rigid pre-alignment).
        progress: ``progress(fraction, message)`` callback or :class:`~RegistrationSuiteLib.progress.Progress`.
        cancel: callable returning True to stop (raises :class:`RegistrationCancelled`).

    Returns:
        :class:`OrganPointCloudResult`; ``transform`` is a ``DisplacementFieldTransform`` mapping fixed to
        moving points (LPS). Organs present in only one input are skipped (``warnings``,
        ``diagnostics["skipped_labels"]``).

    Raises:
        InputError: unreadable/invalid inputs or config, no common organ, too few points, non-PD kernel.
        RegistrationCancelled: ``cancel()`` returned True. Nothing is written in any case.
    """
    t_start = time.perf_counter()
    cfg = config if config is not None else OrganPointCloudConfig()
    if not isinstance(cfg, OrganPointCloudConfig):
        raise InputError(f"config: expected OrganPointCloudConfig, got {type(cfg).__name__}")
    cfg.validate()
    with torch_threads(cfg.num_threads):
        return _register(fixed, moving, cfg, as_progress(progress, cancel), t_start)


@contextlib.contextmanager
def torch_threads(n: Optional[int]):
    """Run the block with ``n`` torch intra-op threads (``None``: unchanged); the caller's value is restored."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _register(fixed, moving, cfg: OrganPointCloudConfig, prog, t_start: float) -> OrganPointCloudResult:
    """The body of :func:`register_organ_point_cloud` (config validated, thread count set)."""
    prog.report(0.0, "reading organ point clouds")
    notes: list = []
    fixed_in, moving_in = _load(fixed, "fixed"), _load(moving, "moving")
    labels, skipped = _common_labels(fixed_in.labels, moving_in.labels, cfg.labels, notes)
    fixed_pts = _points_for(fixed_in, labels, cfg, "fixed", notes)
    moving_pts = _points_for(moving_in, labels, cfg, "moving", notes)
    _check_counts(fixed_pts, "fixed")
    _check_counts(moving_pts, "moving")
    model = cfg.label_model(labels)
    t_load = time.perf_counter()

    ctrl = em_subset(fixed_pts.points, fixed_pts.labels, cfg.downsample_to, cfg.seed, cfg, MIN_POINTS_PER_ORGAN)
    data = em_subset(moving_pts.points, moving_pts.labels, cfg.downsample_to, cfg.seed + 1, cfg, MIN_POINTS_PER_ORGAN)
    fov = {"applied": False}
    fixed_fov, moving_fov = _field_of_view(fixed_in, labels), _field_of_view(moving_in, labels)
    if cfg.common_fov and cfg.similarity and (fixed_fov is not None or moving_fov is not None):
        prog.report(0.01, "restricting to the common field of view")
        ctrl, data, fov = common_field_of_view(fixed_pts, moving_pts, ctrl, data, fixed_fov, moving_fov, model, cfg)
    fit = run_bcpd(moving_pts.points[data], model.index_of(moving_pts.labels[data]), fixed_pts.points[ctrl],
                   model.index_of(fixed_pts.labels[ctrl]), model, cfg, prog.sub(0.02, 0.85))
    t_fit = time.perf_counter()

    prog.report(0.86, "interpolating the deformation (Gaussian process)")
    mapping = FittedMapping(fit, model, fixed_pts.points, model.index_of(fixed_pts.labels),
                            cfg.memory_budget_mb * 2.0**20, resolve_device(cfg.device))
    moved = LabeledPoints(mapping.apply(fixed_pts.points, fixed_pts.labels), fixed_pts.labels.copy())
    prog.report(0.9, "building the displacement field")
    grid = field_grid(fixed_pts.points, cfg.grid_spacing_mm, cfg.grid_margin_mm)
    transform, info = displacement_field(fit, model, fixed_pts.points, model.index_of(fixed_pts.labels), grid,
                                         budget_bytes=cfg.memory_budget_mb * 2.0**20, device=resolve_device(cfg.device))
    prog.report(1.0, f"MO-BCPD finished: σ = {fit.sigma:.3g} mm after {fit.iterations} iterations")
    t_end = time.perf_counter()
    timings = {"load": t_load - t_start, "kernel": fit.timings.get("kernel", 0.0), "em": fit.timings.get("em", 0.0),
               "interpolate": t_end - t_fit, "total": t_end - t_start}
    return OrganPointCloudResult(
        method="organ_point_cloud", transform=transform,
        fixed_grid=_grid_of(fixed_in), moving_grid=_grid_of(moving_in), score=-fit.sigma,
        timings=timings, diagnostics={**_diagnostics(fit, model, fixed_pts, moving_pts, ctrl, data, info, skipped, cfg),
                                      "common_fov": fov},
        warnings=notes + list(fit.warnings), fixed_points=fixed_pts, fixed_points_in_moving=moved, mapping=mapping)


def transform_points(result: RegistrationResult, points, labels=None) -> np.ndarray:
    """Map fixed-space points to moving space (LPS mm).

    Args:
        result: a registration result. For an :class:`OrganPointCloudResult` the fitted MO-BCPD mapping is
            evaluated exactly (GP mean, paper eq. 5–6, with each point's organ kernel row); for any other
            result ``result.transform`` is applied (see :func:`transform_points_with_field`).
        points: ``(N, 3)`` array or :class:`LabeledPoints` (whose labels then pick the organ).
        labels: optional ``(N,)`` organ labels for an array; points without a registered organ label take
            the label of the nearest fixed surface point.

    Returns:
        ``(N, 3)`` moving-space positions. The dense field ``result.transform`` is this mapping sampled on a
        grid: they agree except within about one grid spacing of organs sliding against each other.
    """
    if isinstance(points, LabeledPoints):
        pts, labels = points.points, points.labels if labels is None else labels
    else:
        pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f"points: expected shape (N, 3), got {pts.shape}")
    mapping = getattr(result, "mapping", None)
    if mapping is not None:
        return mapping.apply(pts, labels)
    return transform_points_with_field(result.transform, pts)


def transform_points_with_field(transform: sitk.Transform, points: np.ndarray) -> np.ndarray:
    """Apply a SimpleITK transform (fixed → moving, LPS mm) to ``points (N, 3)``."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return np.array([transform.TransformPoint(tuple(p)) for p in pts.tolist()], dtype=np.float64).reshape(-1, 3)


# ------------------------------------------------------------------------------------------------ inputs


def _load(source, name: str) -> _Input:
    if isinstance(source, LabeledPoints):
        return _Input(source, None, _nonempty_labels(source, name), "<in-memory points>")
    if isinstance(source, sitk.Image):
        return _Input(None, source, image_labels(source, name), "<in-memory label image>")
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"{name}: expected LabeledPoints, a label image or a file path, got {type(source).__name__}")
    path = Path(source)
    if path.suffix.lower() in POINT_SUFFIXES:
        pts = read_points(path, name)
        return _Input(pts, None, _nonempty_labels(pts, name), str(path))
    if not path.is_file():
        raise InputError(f"{name}: file not found: {path}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{name}: cannot read label image {path} ({str(exc).strip().splitlines()[-1][:200]})") from None
    return _Input(None, image, image_labels(image, name), str(path))


def _nonempty_labels(points: LabeledPoints, name: str) -> np.ndarray:
    if len(points) == 0:
        raise InputError(f"{name}: expected organ points, got an empty point set (no labels)")
    return points.unique_labels


def _common_labels(fixed_labels, moving_labels, requested, notes: list):
    """``(used, skipped)`` organ labels: requested (or all) ∩ fixed ∩ moving; one warning per skipped organ."""
    fixed_set, moving_set = set(fixed_labels.tolist()), set(moving_labels.tolist())
    wanted = sorted(fixed_set | moving_set) if requested is None else [int(v) for v in requested]
    used, skipped = [], []
    for lab in wanted:
        if lab in fixed_set and lab in moving_set:
            used.append(lab)
            continue
        skipped.append(lab)
        if lab in fixed_set or lab in moving_set:
            where, missing = ("fixed", "moving") if lab in fixed_set else ("moving", "fixed")
            notes.append(f"organ label {lab} is present in {where} but absent from {missing}; skipped")
        else:
            notes.append(f"organ label {lab} was requested but is absent from both inputs; skipped")
    if not used:
        raise InputError(f"labels: no organ label is present in both inputs (fixed has {sorted(fixed_set)}, "
                         f"moving has {sorted(moving_set)}, requested {requested})")
    return used, skipped


def _points_for(inp: _Input, labels: list, cfg: OrganPointCloudConfig, name: str, notes: list) -> LabeledPoints:
    if inp.points is not None:
        return inp.points.select(labels)
    seed = cfg.seed + (0 if name == "fixed" else 7919)
    if not cfg.spread_sampling:
        return labels_to_points(inp.image, labels, cfg.points_per_organ, seed, name=name, notes=notes)
    # SURFACE_OVERSAMPLE times the points uniformly by area, then farthest-point sampling down to
    # points_per_organ per organ: an even cover of every surface whatever the seed (see .sampling)
    dense = labels_to_points(inp.image, labels, SURFACE_OVERSAMPLE * cfg.points_per_organ, seed, name=name, notes=notes)
    keep = spread_per_label(dense.points, dense.labels, cfg.points_per_organ, seed)
    return LabeledPoints(dense.points[keep], dense.labels[keep])


FOV_ROUNDS = 8  # at most this many (similarity fit → restrict) rounds; they stop once the kept points repeat


def common_field_of_view(fixed: LabeledPoints, moving: LabeledPoints, ctrl: np.ndarray, data: np.ndarray,
                         fixed_grid: Optional[Grid], moving_grid: Optional[Grid], model, cfg: OrganPointCloudConfig):
    """EM points restricted to the part of the anatomy both scans show (label-image inputs).

    Two scans of different lengths cut the organs at different heights. BCPD explains *every* moving point by
    the fixed points, so moving organ parts outside the fixed scan pull the fixed organs out of place (and
    fixed parts outside the moving scan are pulled onto the moving organ's cut end). Each round fits the
    global similarity T(y) = sRy + t (:func:`.bcpd.fit_similarity`) on the current points, then keeps the
    fixed points whose T(y) lies inside the moving image's box and the moving points whose T⁻¹(x) lies inside
    the fixed image's box. From the second round on, the kept sets only grow (union with the previous
    round's): a point is left out only if every round's similarity put it outside the other scan. Without
    that damping the rounds ratchet: cutting away the worst-matching points lets the next similarity tilt
    so that more of them fall outside (on the real A/B pair the global rotation drifted by ~10° and the
    kept moving share fell from 0.58 to 0.37 over 12 rounds, never settling). With it the kept sets are
    monotone, so the rounds stop once they repeat (4–7 rounds on the A/B pair; at most ``FOV_ROUNDS``). An
    organ that would keep fewer than ``MIN_POINTS_PER_ORGAN`` points on a side keeps all of them there.
    Every fixed point still receives the delivered displacement (only the EM uses fewer).

    A grid is ``None`` when that input has no field of view that cuts an organ (point files; label images
    whose organs all lie inside, such as a segmentation exported with padding): the other set is then not cut.

    Returns ``(ctrl, data, info)``: the kept indices into ``fixed`` / ``moving`` and a diagnostics dict.
    """
    f_lab, m_lab = model.index_of(fixed.labels), model.index_of(moving.labels)
    keep_f, keep_m, settled = ctrl, data, False
    for rounds in range(1, FOV_ROUNDS + 1):
        sim = fit_similarity(moving.points[keep_m], m_lab[keep_m], fixed.points[keep_f], f_lab[keep_f], model, cfg)
        in_moving = _inside(moving_grid, fixed.points[ctrl] * sim.s @ sim.R.T + sim.t)
        in_fixed = _inside(fixed_grid, (moving.points[data] - sim.t) @ sim.R / sim.s)
        new_f = _keep_per_organ(ctrl, in_moving, fixed.labels[ctrl])
        new_m = _keep_per_organ(data, in_fixed, moving.labels[data])
        if rounds > 1:  # damping: a point leaves only if every round's similarity puts it outside
            new_f, new_m = np.union1d(new_f, keep_f), np.union1d(new_m, keep_m)
        if np.array_equal(new_f, keep_f) and np.array_equal(new_m, keep_m):
            settled = True
            break
        keep_f, keep_m = new_f, new_m
    info = {"applied": True, "rounds": rounds, "settled": settled, "fixed_points_kept": float(keep_f.size / max(ctrl.size, 1)),
            "moving_points_kept": float(keep_m.size / max(data.size, 1))}
    return keep_f, keep_m, info


def _field_of_view(inp: _Input, labels) -> Optional[Grid]:
    """The grid of a label-image input whose border cuts at least one of ``labels`` (an organ voxel on a face
    of the image), else ``None``: only then does the image's box say where that scan stops seeing anatomy."""
    if inp.image is None:
        return None
    array = sitk.GetArrayViewFromImage(inp.image)
    faces = (array[0], array[-1], array[:, 0], array[:, -1], array[:, :, 0], array[:, :, -1])
    return Grid.from_image(inp.image) if any(np.isin(f, labels).any() for f in faces) else None


def _inside(grid: Optional[Grid], points: np.ndarray) -> np.ndarray:
    """``(N,)`` True where ``points`` (LPS mm) lie within the image's box (voxel centres ± half a voxel); all
    True without a grid."""
    if grid is None:
        return np.ones(len(points), dtype=bool)
    index = apply_affine(grid.world_to_index(), points)
    size = np.asarray(grid.size, dtype=np.float64)
    return np.all((index >= -0.5) & (index <= size - 0.5), axis=1)


def _keep_per_organ(indices: np.ndarray, inside: np.ndarray, labels: np.ndarray) -> np.ndarray:
    keep = inside.copy()
    for lab in np.unique(labels).tolist():
        sel = labels == lab
        if (inside & sel).sum() < MIN_POINTS_PER_ORGAN:
            keep[sel] = True
    return indices[keep]


def _check_counts(points: LabeledPoints, name: str) -> None:
    few = {lab: n for lab, n in points.counts().items() if n < MIN_POINTS_PER_ORGAN}
    if few:
        raise InputError(f"{name}: expected at least {MIN_POINTS_PER_ORGAN} points per organ, got {few} "
                         "(label: points); add points or leave those labels out")


def _grid_of(inp: _Input) -> Optional[Grid]:
    return Grid.from_image(inp.image) if inp.image is not None else None


# ------------------------------------------------------------------------------------------------ outputs


def _diagnostics(fit: BCPDFit, model: LabelModel, fixed, moving, ctrl, data, info, skipped, cfg) -> dict:
    return {
        "labels": model.labels.tolist(),
        "skipped_labels": skipped,
        "points_per_organ": {"fixed": fixed.counts(), "moving": moving.counts()},
        "em_points_per_organ": {"fixed": LabeledPoints(fixed.points[ctrl], fixed.labels[ctrl]).counts(),
                                "moving": LabeledPoints(moving.points[data], moving.labels[data]).counts()},
        "iterations": fit.iterations,
        "prealign_iterations": fit.prealign_iterations,
        "organ_prealign": cfg.organ_prealign_mode(),
        "organ_prealign_iterations": fit.organ_prealign_iterations,
        "converged": fit.converged,
        "sigma_mm": fit.sigma,
        "sigma_initial_mm": fit.sigma_history[0],
        "similarity": {"scale": fit.similarity.s, "rotation": fit.similarity.R.tolist(),
                       "translation_mm": fit.similarity.t.tolist()},
        "mean_displacement_mm": float(np.linalg.norm(fit.v, axis=1).mean()),
        "knn_estep_iterations": fit.knn_iterations,
        "kernel": fit.basis,
        "field": info.to_dict(),
        "parameters": {"lambda_mm": model.lambda_mm.tolist(), "beta_mm": model.beta_mm.tolist(),
                       "coherence": model.coherence.tolist(), "label_transition": model.transition.tolist(),
                       "omega": cfg.omega, "gamma": cfg.gamma, "rank": cfg.rank, "dtype": cfg.dtype,
                       "device": str(resolve_device(cfg.device))},
    }

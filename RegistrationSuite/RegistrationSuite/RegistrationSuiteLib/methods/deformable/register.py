"""Entry point of deformable registration: fixed and moving images in, one dense field out.

**Direction.** The result maps FIXED points to MOVING points (ITK convention, LPS mm): for a point ``x`` of
the fixed image, ``T(x) = x + d(x)`` is where the same anatomy sits in the moving image, so
``sitk.Resample(moving, fixed, result.transform)`` aligns moving onto fixed. Internally, the field ``u``
(working-grid voxels) warps the moving image resampled through the initial transform ``T0`` onto the
working grid: ``moving_w(x + u(x)) ≈ fixed_w(x)``; the output folds ``T0`` in,
``d(x) = A u(x) + d0(x + A u(x))`` with ``A = direction · diag(spacing)`` and ``d0`` the displacement of
``T0`` (so ``T(x) = T0(x + A u(x))``).

Steps: working grid (fixed direction and field of view, ``spacing_mm`` isotropic) → both images smoothed and
resampled onto it (moving through ``T0``) → overlap check → robust intensity normalisation → similarity
chosen (``auto``: see :class:`DeformableConfig`) → network estimate (optional) → instance optimisation
(:func:`RegistrationSuiteLib.deform.optimise_field`) → ``T0`` folded in → diagnostics (folding fraction,
Jacobian range, similarity before/after, timings).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Optional

import numpy as np
import SimpleITK as sitk

from ...errors import InputError
from ...geometry import Grid
from ...io import read_image, read_mask
from ...progress import as_progress
from ...result import RegistrationResult
from .config import DeformableConfig

# Peak memory estimate = BASE_GB (Python, torch, SimpleITK) + BYTES_PER_INPUT_VOXEL per voxel of the two input
# images (float copies, smoothing) + BYTES_PER_VOXEL per working-grid voxel (field, Adam moments, gradients,
# MIND descriptors of both images and their warped copy, grid_sample buffers). Measured (bench_deformable
# --memory): a 256³ 1 mm T1/T2 pair on the automatic 1.79 mm grid (2.9 M voxels, MIND) peaked at 2.34 GB,
# which this estimates at 3.4 GB; 1.5 mm brain pairs (0.86 M voxels) peaked at 0.9–1.0 GB (estimate 1.3 GB).
BASE_GB = 0.5
BYTES_PER_INPUT_VOXEL = 16
BYTES_PER_VOXEL = 800


def working_grid(fixed: sitk.Image, spacing_mm: float) -> sitk.Image:
    """An empty float image with the fixed image's origin and direction, isotropic ``spacing_mm`` and a size
    that covers the fixed image's field of view (corner voxel centres included)."""
    extent = [(n - 1) * s for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
    size = [int(math.ceil(e / spacing_mm - 1e-6)) + 1 for e in extent]
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetOrigin(fixed.GetOrigin())
    ref.SetDirection(fixed.GetDirection())
    ref.SetSpacing([float(spacing_mm)] * fixed.GetDimension())
    return ref


def _as_image(image, name):
    if image is None:
        raise InputError(f"{name}: an image is required")
    return read_image(image, name).image


def _smooth_for(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Anti-aliasing before resampling onto a coarser grid: σ² = (s_work/2)² − (s_in/2)² per axis (mm)."""
    sig = [math.sqrt(max(0.0, (spacing_mm / 2) ** 2 - (s / 2) ** 2)) for s in image.GetSpacing()]
    if max(sig) < 0.05:
        return image
    return sitk.SmoothingRecursiveGaussian(image, [max(s, 1e-3) for s in sig])


def _to_working(image, reference, transform, interp=sitk.sitkLinear, default=0.0):
    return sitk.GetArrayFromImage(sitk.Resample(image, reference, transform, interp, default, sitk.sitkFloat32))


def _normalise(arr: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Robust [0, 1]: 0.5 and 99.5 percentiles over ``region`` (or everything when it is nearly empty)."""
    values = arr[region] if region.sum() > 100 else arr.ravel()
    lo, hi = np.percentile(values, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def choose_similarity(fixed_t, moving_t, region_t, config: DeformableConfig) -> tuple:
    """``(name, correlation)``: the configured similarity, or for ``"auto"`` ``"lncc"`` when the smoothed
    images correlate at least ``auto_ncc_threshold`` over their common foreground (both normalised
    intensities above 0.05 inside ``region``: background would make any brain pair look alike) and
    ``"mind"`` otherwise. Measured on the stroke subject at 2 mm: T1/T1 1.0, T1/FLAIR 0.70, T1/T2 −0.44."""
    import torch

    from ...deform import gaussian_smooth

    sigma = config.auto_smoothing_mm / config.spacing_mm
    with torch.no_grad():
        fg = region_t & (fixed_t > 0.05) & (moving_t > 0.05)
        if int(fg.sum()) < 100:
            fg = region_t
        a = gaussian_smooth(fixed_t, sigma)[fg]
        b = gaussian_smooth(moving_t, sigma)[fg]
        a, b = a - a.mean(), b - b.mean()
        corr = float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()).clamp_min(1e-12))
    if config.similarity != "auto":
        return config.similarity, corr
    return ("lncc" if corr >= config.auto_ncc_threshold else "mind"), corr


def register_deformable(
    fixed,
    moving,
    config: Optional[DeformableConfig] = None,
    *,
    initial_transform: Optional[sitk.Transform] = None,
    model=None,
    fixed_mask=None,
    moving_mask=None,
    progress=None,
    cancel=None,
) -> RegistrationResult:
    """Deformable registration of ``moving`` to ``fixed`` (3D).

    Args:
        fixed, moving: ``sitk.Image`` or paths (any size, spacing, direction; different grids allowed).
        config: :class:`DeformableConfig` (``None``: defaults).
        initial_transform: optional ``sitk.Transform`` fixed → moving (e.g. a rigid-search result); folded
            into the output.
        model: a loaded :class:`~.network.DeformableModel`, a model name or ``.pt`` path; ``None`` uses
            ``config.model`` (``None`` there: optimisation only).
        fixed_mask, moving_mask: optional masks (image or path; non-zero = use), each on its image's grid.
        progress, cancel: see :mod:`RegistrationSuiteLib.progress`.

    Returns:
        :class:`RegistrationResult` with a ``DisplacementFieldTransform`` fixed → moving on the working grid;
        ``score`` = similarity after; ``diagnostics``: ``similarity`` (name, correlation used by auto,
        before, after), ``folding_fraction``, ``jacobian_min``/``jacobian_max``, ``working_grid``,
        ``network`` (model name or None), ``io`` (steps per level and loss history), ``overlap``.

    Raises:
        InputError: bad images/masks/transform, no overlap, grid too small or too large for memory.
    """
    import torch

    config = config or DeformableConfig()
    t_start = time.perf_counter()
    timings: dict = {}
    prog = as_progress(progress, cancel)
    fixed_img, moving_img = _as_image(fixed, "fixed"), _as_image(moving, "moving")
    for name, img in (("fixed", fixed_img), ("moving", moving_img)):
        if img.GetDimension() != 3:
            raise InputError(f"{name}: expected a 3D image, got {img.GetDimension()}D (use the deform toolkit for 2D)")
    fmask = read_mask(fixed_mask, fixed_img, "fixed mask") if fixed_mask is not None else None
    mmask = read_mask(moving_mask, moving_img, "moving mask") if moving_mask is not None else None
    t0 = _check_initial(initial_transform)
    extent = [(n - 1) * sp for n, sp in zip(fixed_img.GetSize(), fixed_img.GetSpacing())]
    config = dataclasses.replace(config, spacing_mm=config.working_spacing(extent))  # resolved "auto"
    ref = working_grid(fixed_img, config.spacing_mm)
    _check_size(ref, config, fixed_img, moving_img)
    net = _resolve_model(model if model is not None else config.model)
    device = _device(config.device)
    torch.manual_seed(config.seed)
    prog.report(0.02, "resampling onto the working grid")

    t = time.perf_counter()
    data = _prepare(fixed_img, moving_img, fmask, mmask, t0, ref, config, device)
    timings["resample"] = time.perf_counter() - t
    sim_name, corr = choose_similarity(data["fixed"], data["moving"], data["region"], config)

    u0, t = None, time.perf_counter()
    if net is not None:
        from .network import predict_field

        prog.report(0.08, "network field estimate")
        u0 = predict_field(net, data["fixed"], data["moving"], spacing_mm=config.spacing_mm,
                           passes=config.network_passes)
        timings["network"] = time.perf_counter() - t
    io = _optimise(data, sim_name, u0, config, prog.sub(0.1, 0.92))
    timings["optimisation"] = io["seconds"]

    t = time.perf_counter()
    field_img, det = _output_field(io["field"], t0, ref)
    timings["output"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    folding_region = (data["fixed_mask"][0, 0].cpu() > 0.5 if data["fixed_mask"] is not None
                      else torch.ones_like(det, dtype=torch.bool))
    det_in = det[folding_region]
    diagnostics = {
        "similarity": {"name": sim_name, "requested": config.similarity, "auto_correlation": corr,
                       "before": io["before"], "after": io["after"]},
        "folding_fraction": float((det_in <= 0).float().mean()) if det_in.numel() else 0.0,
        "jacobian_min": float(det_in.min()) if det_in.numel() else float("nan"),
        "jacobian_max": float(det_in.max()) if det_in.numel() else float("nan"),
        "working_grid": {"size": list(ref.GetSize()), "spacing_mm": config.spacing_mm},
        "network": None if net is None else net.name,
        "network_passes": None if net is None else config.network_passes,
        "io": {"steps_per_level": io["steps"], "levels": list(config.levels), "history": io["history"]},
        "overlap": data["overlap"],
        "diffeomorphic": bool(config.diffeomorphic),
        "memory_estimate_gb": _memory_gb(ref, fixed_img, moving_img),
        "config": {k: v for k, v in config.to_dict().items() if k != "extra"},
    }
    prog.report(1.0, "deformable registration done")
    transform = sitk.DisplacementFieldTransform(field_img)
    return RegistrationResult("deformable", transform, Grid.from_image(fixed_img), Grid.from_image(moving_img),
                              score=io["after"], timings=timings, diagnostics=diagnostics)


def _check_initial(initial) -> sitk.Transform:
    if initial is None:
        return sitk.Transform(3, sitk.sitkIdentity)
    if not isinstance(initial, sitk.Transform):
        from ...io.transforms import read_transform

        initial = read_transform(initial)
    if initial.GetDimension() != 3:
        raise InputError(f"initial transform: expected a 3D transform, got {initial.GetDimension()}D")
    if initial.IsLinear():
        from ...geometry import affine_matrix_from_sitk

        m = affine_matrix_from_sitk(initial, 3)
        if not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-6:
            raise InputError("initial transform: its matrix is not invertible (determinant ~ 0)")
    return initial


def _memory_gb(ref: sitk.Image, *inputs: sitk.Image) -> float:
    n_in = sum(float(np.prod(img.GetSize())) for img in inputs)
    return BASE_GB + (float(np.prod(ref.GetSize())) * BYTES_PER_VOXEL + n_in * BYTES_PER_INPUT_VOXEL) / 1024**3


def _check_size(ref: sitk.Image, config: DeformableConfig, *inputs: sitk.Image) -> None:
    size = ref.GetSize()
    if min(size) < config.min_size:
        raise InputError(f"images too small for the working resolution: working grid {size} at "
                         f"{config.spacing_mm} mm, need >= {config.min_size} voxels per axis (use a smaller --spacing)")
    need = _memory_gb(ref, *inputs)
    if need > config.max_memory_gb:
        raise InputError(f"the working grid {size} at {config.spacing_mm} mm needs about {need:.1f} GB "
                         f"(limit {config.max_memory_gb:g} GB); use a larger --spacing or raise --max-memory-gb")


def _resolve_model(model):
    if model is None:
        return None
    from .network import DeformableModel, load_deformable_model

    return model if isinstance(model, DeformableModel) else load_deformable_model(model)


def _device(name):
    from ...device import resolve_device

    return resolve_device(name)


def _prepare(fixed_img, moving_img, fmask, mmask, t0, ref, config, device) -> dict:
    """Working-grid tensors ``(1, 1, *S)``: normalised images, masks, overlap region."""
    import torch

    identity = sitk.Transform(3, sitk.sitkIdentity)
    fixed_w = _to_working(_smooth_for(fixed_img, config.spacing_mm), ref, identity)
    moving_w = _to_working(_smooth_for(moving_img, config.spacing_mm), ref, t0)
    ones = sitk.Image(moving_img.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving_img)
    in_moving = _to_working(ones, ref, t0, sitk.sitkNearestNeighbor) > 0.5
    fm = _to_working(fmask, ref, identity, sitk.sitkNearestNeighbor) > 0.5 if fmask is not None else None
    mm = _to_working(mmask, ref, t0, sitk.sitkNearestNeighbor) > 0.5 if mmask is not None else None
    domain = fm if fm is not None else np.ones_like(in_moving)
    overlap = float((in_moving & domain).sum()) / max(1.0, float(domain.sum()))
    if overlap < config.min_overlap:
        raise InputError(f"fixed and moving do not overlap after the initial transform: {overlap:.1%} of the "
                         f"fixed {'mask' if fm is not None else 'field of view'} maps into the moving image "
                         f"(need {config.min_overlap:.0%}); check --initial-transform or use --init rigid-search")
    region = in_moving & domain
    if mm is not None:
        region &= mm

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None].to(device)

    return {
        "fixed": tensor(_normalise(fixed_w, region)),
        "moving": tensor(_normalise(moving_w, region)),
        "fixed_mask": None if fm is None else tensor(fm),
        "moving_mask": None if mm is None else tensor(mm),
        "region": tensor(region) > 0.5,
        "overlap": overlap,
    }


def _optimise(data, sim_name, u0, config, prog) -> dict:
    import torch

    from ...deform import InstanceOptimisationConfig, optimise_field, score_fields

    steps = config.steps_per_level(network=u0 is not None)
    fixed, moving = data["fixed"], data["moving"]
    if sum(steps) == 0:
        u = u0 if u0 is not None else fixed.new_zeros((1, 3, *fixed.shape[2:]))
        before, after = score_fields(sim_name, fixed, moving, [torch.zeros_like(u), u], fixed_mask=data["fixed_mask"],
                                     moving_mask=data["moving_mask"])  # the features (MIND: costly) once
        return {"field": u, "before": before, "after": after, "steps": steps, "history": [], "seconds": 0.0}
    io_config = InstanceOptimisationConfig(
        similarity=sim_name, levels=tuple(config.levels), steps=tuple(steps), learning_rate=config.learning_rate,
        final_lr_fraction=config.final_lr_fraction, regularizer=config.regularizer, weight=config.regularization,
        diffeomorphic=config.diffeomorphic, lncc_radius=config.lncc_radius, lncc_eps=config.lncc_eps,
        smoothing=config.field_smoothing_mm / config.spacing_mm)
    res = optimise_field(fixed, moving, io_config, initial=u0, fixed_mask=data["fixed_mask"],
                         moving_mask=data["moving_mask"], progress=prog)
    # "before" means before any registration (the identity after the initial transform), also after a network
    # start: optimise_field scores it from the full-resolution features it computes anyway
    return {"field": res.field, "before": res.similarity_identity, "after": res.similarity_after, "steps": steps,
            "history": res.history, "seconds": res.seconds}


def _output_field(u, t0, ref) -> tuple:
    """Total displacement image (LPS mm, fixed → moving, ``T0`` folded in) and its Jacobian determinant."""
    import torch

    from ...deform import field_to_physical, jacobian_determinant, warp_image

    direction = np.asarray(ref.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(ref.GetSpacing(), dtype=np.float64)
    u = u.detach().to("cpu", torch.float64)
    u_phys = field_to_physical(u, spacing, direction)
    d0_img = sitk.TransformToDisplacementField(t0, sitk.sitkVectorFloat64, ref.GetSize(), ref.GetOrigin(),
                                               ref.GetSpacing(), ref.GetDirection())
    d0 = torch.from_numpy(sitk.GetArrayFromImage(d0_img)).movedim(-1, 0)[None]  # (1, 3, z, y, x), LPS mm
    total = u_phys + warp_image(d0, u, padding_mode="border")
    a_inv = torch.from_numpy(np.diag(1.0 / spacing) @ direction.T)
    det = jacobian_determinant(torch.einsum("ij,nj...->ni...", a_inv, total))[0, 0]
    field_img = sitk.GetImageFromArray(total[0].movedim(0, -1).numpy(), isVector=True)
    field_img.CopyInformation(ref)
    return field_img, det.to(torch.float32)

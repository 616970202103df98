"""Entry point: ``register_histology(fixed, moving, config)`` → :class:`HistologyResult`.

Direction: every stage estimates the **fixed → moving** mapping in the slides' physical frames (µm, or level-0
pixels when the files carry no pixel size; see :mod:`.slides`): ``result.transform.TransformPoint(p_fixed)``
is where fixed point ``p_fixed`` lies in the moving slide, so ``sitk.Resample(moving, fixed, result.transform)``
lays the moving slide over the fixed one, and fixed landmarks map to moving landmarks.

Pipeline (METHOD_NOTES §4 and the multi-magnification paper):
1. read both slides at a level near the working resolution; resample to a common pixel size;
2. tissue mask, stain-robust channels (optical density, its gradient magnitude);
3. centres of mass + full rotation search (0–359°, optional mirror) + coarse-to-fine affine refinement;
4. with a model (``config.model``): the multi-magnification local affine network, then the non-rigid network,
   applied ``config.iterations`` times on the model's grid (:mod:`.networks`), each result composed with the
   previous mapping; otherwise the optional non-rigid instance optimisation on its own, finer fixed grid
   (``config.io_size``, :mod:`.nonrigid`);
5. one displacement field (physical units) on the fixed grid used last, padded by two pixels.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk
import torch

from ...device import resolve_device
from ...errors import InputError
from ...geometry import Grid
from ...progress import as_progress
from ...result import RegistrationResult
from .align import Candidate, affine_angle_deg, initial_alignment, moved_points, ncc_channels, sample_with_domain
from .config import HistologyConfig
from .nonrigid import refine_nonrigid
from .preprocess import Plane, Prepared, prepare, working_spacing
from .slides import Slide, read_slide

SlideInput = Union[Slide, str, os.PathLike]
FIELD_PAD = 2  # pixels added around the fixed grid so points on its outer half-pixels still get the mapping


@dataclass
class HistologyResult(RegistrationResult):
    """:class:`RegistrationResult` plus what the outputs need.

    Attributes:
        fixed_slide, moving_slide: the levels read (pixels and geometry).
        affine: ``(3, 3)`` fixed → moving homogeneous matrix of the initial alignment (physical units).
        unit: ``"um"``, ``"mm"`` or ``"px"`` (1 unit = 1 level-0 pixel).
    """

    fixed_slide: Optional[Slide] = None
    moving_slide: Optional[Slide] = None
    affine: Optional[np.ndarray] = None
    unit: str = "px"


def register_histology(fixed: SlideInput, moving: SlideInput, config: Optional[HistologyConfig] = None, *,
                       progress=None, cancel=None) -> HistologyResult:
    """Register two histology slides (consecutive or re-stained sections).

    Args:
        fixed, moving: :class:`Slide` or a slide file (PNG/JPG/TIFF/OME-TIFF/SVS).
        config: :class:`HistologyConfig`.
        progress: ``progress(fraction, message)`` callback or :class:`~RegistrationSuiteLib.progress.Progress`.
        cancel: callable returning True to stop (raises :class:`RegistrationCancelled`).

    Returns:
        :class:`HistologyResult`; ``transform`` is a 2D ``DisplacementFieldTransform`` mapping fixed to moving
        points (physical units, see :attr:`HistologyResult.unit`) on the fixed working grid.

    Raises:
        InputError: unreadable slides, no tissue, incompatible scales, invalid config. Nothing is written.
        RegistrationCancelled: ``cancel()`` returned True.
    """
    cfg = config or HistologyConfig()
    cfg.validate()
    prog = as_progress(progress, cancel)
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    with torch_threads(cfg.num_threads), torch.no_grad():
        f_slide = _as_slide(fixed, "fixed", cfg)
        m_slide = _as_slide(moving, "moving", cfg)
        spacing = working_spacing(f_slide, m_slide, cfg.working_size)
        levels = _levels(cfg)
        pf = prepare(f_slide, spacing, levels, "fixed", device)
        pm = prepare(m_slide, spacing, levels, "moving", device)
    t_prep = time.perf_counter()
    prog.report(0.05, "slides prepared")
    best, scored, start = _initial(pf, pm, cfg, prog.sub(0.05, 0.6))
    t_init = time.perf_counter()
    displacement = None
    io_info = {}
    net_info = {}
    if cfg.model is not None:
        with torch_threads(cfg.num_threads), torch.no_grad():
            pf, pm, displacement, net_info = _networks(f_slide, m_slide, best, cfg, device, prog.sub(0.6, 0.95))
    elif cfg.io_steps > 0:
        with torch_threads(cfg.num_threads):
            pf, pm, displacement, io_info = refine_nonrigid(f_slide, m_slide, best, cfg, prog.sub(0.6, 0.95), device)
    t_io = time.perf_counter()
    transform, field_grid = displacement_transform(pf.features, best, displacement)
    with torch.no_grad():
        before = _feature_ncc(pf, pm, Candidate(np.eye(2), np.zeros(2)), None)
        after_affine = _feature_ncc(pf, pm, best, None)
        after = _feature_ncc(pf, pm, best, displacement)
    prog.report(1.0, "done")
    t_end = time.perf_counter()
    unit_note = {"um": "physical unit: µm", "mm": "physical unit: mm (LPS, from the image headers)"}.get(
        f_slide.unit, "no pixel size in the files: 1 unit = 1 level-0 pixel")
    return HistologyResult(
        method="histology", transform=transform, fixed_grid=field_grid, score=after,
        confidence=float(np.clip(best.score, 0.0, 1.0)),
        timings={"prepare": t_prep - t0, "initial": t_init - t_prep, "non_rigid": t_io - t_init,
                 "field": t_end - t_io, "total": t_end - t0},
        diagnostics=_diagnostics(cfg, f_slide, spacing, best, start, scored, before, after_affine, after, io_info,
                                 net_info),
        warnings=f_slide.notes + m_slide.notes + [unit_note],
        fixed_slide=f_slide, moving_slide=m_slide, affine=best.homogeneous(), unit=f_slide.unit,
    )


def _diagnostics(cfg, f_slide, spacing, best, start, scored, before, after_affine, after, io_info, net_info) -> dict:
    return {
        "unit": f_slide.unit,
        "working_spacing": spacing,
        "rotation_deg": affine_angle_deg(best.matrix),
        "search_angle_deg": best.angle_deg,
        "mirrored": bool(best.mirrored),
        "affine_fixed_to_moving": best.homogeneous().tolist(),
        "search_fixed_to_moving": start.homogeneous().tolist(),
        "candidates": [{"angle_deg": c.angle_deg, "mirrored": c.mirrored, "score": c.score} for c in scored],
        "ncc_before": before,
        "ncc_after_initial": after_affine,
        "ncc_after": after,
        "instance_optimisation": io_info,
        "networks": net_info,
        "config": cfg.to_dict(),
    }


@contextlib.contextmanager
def torch_threads(n: Optional[int]):
    """Temporarily set torch's intra-op thread count (``None``: leave it)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _as_slide(source: SlideInput, name: str, cfg: HistologyConfig) -> Slide:
    if isinstance(source, Slide):
        return source
    if isinstance(source, (str, os.PathLike)):
        return read_slide(source, name, level=cfg.level, resolution_um=cfg.resolution_um,
                          target_size=cfg.read_size)
    raise InputError(f"{name}: expected a Slide or a slide file path, got {type(source).__name__}")


def _levels(cfg: HistologyConfig) -> int:
    """Pyramid depth: the affine levels end at the working size and start near the search size."""
    return max(cfg.affine_levels, cfg.io_levels, 1)


def _initial(pf: Prepared, pm: Prepared, cfg: HistologyConfig, prog) -> tuple:
    edges_f = pf.features.with_data(pf.features.data[1:])
    edges_m = pm.features.with_data(pm.features.data[1:])
    n = min(cfg.affine_levels, len(pf.pyramid), len(pm.pyramid))
    with torch_threads(cfg.num_threads):
        return initial_alignment([pf.mask, pf.density, edges_f], [pm.mask, pm.density, edges_m],
                                 pf.pyramid[:n][::-1], pm.pyramid[:n][::-1], step_deg=cfg.rotation_step_deg,
                                 mirror=cfg.mirror, keep=cfg.candidates, pixels=cfg.search_size,
                                 iterations=cfg.affine_iterations, progress=prog)


def _networks(f_slide: Slide, m_slide: Slide, best: Candidate, cfg: HistologyConfig, device, prog) -> tuple:
    """Apply the model's affine and non-rigid networks ``cfg.iterations`` times on the model's grid.

    Returns ``(pf, pm, u, info)``: the slides prepared on the model's grid, the displacement ``u`` ``(2, H, W)``
    in fixed model-grid pixels (the full mapping is ``x → A (x + u(x)) + t``) and diagnostics."""
    from .networks import compose, load_histology_model, predict_field

    affine, nonrigid, net_cfg, model = load_histology_model(cfg.model)
    spacing = working_spacing(f_slide, m_slide, net_cfg.grid_size)
    pf = prepare(f_slide, spacing, 1, "fixed", "cpu")
    pm = prepare(m_slide, spacing, 1, "moving", "cpu")
    fixed = pf.features.data[1:2][None]
    u = torch.zeros(2, *pf.features.shape)
    stages = [("affine", affine)] + ([("nonrigid", nonrigid)] if cfg.network_stages == "affine+nonrigid" else [])
    history = []
    for k in range(cfg.iterations):
        for j, (name, net) in enumerate(stages):
            moving = _moving_structure(pf, pm, best, u)
            v = predict_field(net, fixed, moving)
            u = compose(u, v)
            history.append({"pass": k + 1, "network": name, "mean_px": float(v.norm(dim=0).mean())})
            prog.report((k * len(stages) + j + 1) / (cfg.iterations * len(stages)), f"{name} network, pass {k + 1}")
    info = {"model": model.name, "model_grid_size": net_cfg.grid_size, "multi_magnification": net_cfg.context,
            "network_stages": cfg.network_stages, "iterations": cfg.iterations, "passes": history}
    return pf, pm, u, info


def _moving_structure(pf: Prepared, pm: Prepared, best: Candidate, u: torch.Tensor) -> torch.Tensor:
    """The moving structure channel ``(1, 1, H, W)`` on the fixed grid through ``x → A (x + u(x)) + t``."""
    pts = moved_points(pf.features, best, u).float()
    values, _ = sample_with_domain(pm.features, pts[None])
    return values[:, 1:2]


def displacement_transform(fixed: Plane, affine: Candidate, displacement: Optional[torch.Tensor]) -> tuple:
    """A 2D ``sitk.DisplacementFieldTransform`` (fixed → moving, physical units) on the fixed grid padded by
    :data:`FIELD_PAD` pixels (edge displacement replicated, the affine part exact), and its :class:`Grid`."""
    pad = FIELD_PAD
    h, w = fixed.shape
    if displacement is not None:
        displacement = torch.nn.functional.pad(displacement[None].double(), (pad,) * 4, mode="replicate")[0]
    padded = Plane(torch.zeros(1, h + 2 * pad, w + 2 * pad, dtype=torch.float64),
                   fixed.origin - pad * fixed.spacing, fixed.spacing)
    pts = padded.points().double()
    moved = moved_points(padded, affine, displacement.cpu() if displacement is not None else None)
    vectors = (moved - pts).cpu().numpy().astype(np.float64)
    image = sitk.GetImageFromArray(vectors, isVector=True)
    image.SetOrigin(tuple(float(v) for v in padded.origin))
    image.SetSpacing(tuple(float(v) for v in padded.spacing))
    grid = Grid.from_image(image)
    return sitk.DisplacementFieldTransform(image), grid


def _feature_ncc(pf: Prepared, pm: Prepared, affine: Candidate, displacement) -> float:
    """NCC of the structure channel (OD gradient magnitude) on the fixed working grid after mapping."""
    moved = moved_points(pf.features, affine, displacement).float()
    values, inside = sample_with_domain(pm.features, moved[None])
    return float(ncc_channels(pf.features.data[None], values, inside)[-1])

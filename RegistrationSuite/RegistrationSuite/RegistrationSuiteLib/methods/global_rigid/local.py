"""CSNGF search *around given initialisations* (a local variant of the global search).

The global search samples all of SO(3) on its first level and searches every shift with enough overlap. When
a rough initialisation is known (e.g. from TSPM's patch predictions, a few centimetres and a few tens of
degrees off), the same machinery can search only its neighbourhood: rotations within ``perturbation_deg`` of
each seed, shifts within ``window_mm`` of the seed's translation (one FFT per seed for all those shifts), then
the usual finer levels and the sub-voxel NGF refinement. Restricting the search removes the far-away
look-alikes that make a global search of a small image ambiguous, at a fraction of its cost.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import List, Sequence

import numpy as np

from ...device import resolve_device
from ...errors import InputError, RegistrationFailed
from ...geometry import Grid
from ...progress import as_progress
from ...result import RegistrationResult
from .config import GlobalRigidConfig
from .ngf import INVALID_SCORE
from .refine import refine_candidates
from .register import _build_levels, _prepare, _read_inputs, _transform
from .rotations import perturb_rotations
from .search import Candidate, _evaluate_local, distinct_best

#: default levels of the local search: 5 mm then 2.5 mm (the finest level is also the refinement's)
LOCAL_LEVELS_MM = (5.0, 2.5)
LOCAL_BLUR_MM = (3.5, 2.0)
#: a first-level candidate is an *alternative* to the best one when it places the moving image's corners more
#: than this many first-level voxels away (mean distance; 2 voxels = 10 mm on the default 5 mm level)
DISTINCT_VOXELS = 2.0


def candidate_from_matrix(fixed_to_moving: np.ndarray, moving_center: np.ndarray, level: int = 0) -> Candidate:
    """A search :class:`Candidate` ``q = R (p - a) + c_M`` equal to the rigid matrix ``q = R p + t``
    (``a = R^T (c_M - t)``); the rotation part is orthonormalised first."""
    m = np.asarray(fixed_to_moving, float)
    u, _, vt = np.linalg.svd(m[:3, :3])
    r = u @ vt
    if np.linalg.det(r) < 0:
        raise InputError("seed: expected a rigid transform (a proper rotation), got a reflection")
    anchor = r.T @ (np.asarray(moving_center, float) - m[:3, 3])
    return Candidate(r, anchor, INVALID_SCORE, level)


def local_rigid_search(
    fixed,
    moving,
    seeds: Sequence[np.ndarray],
    *,
    window_mm: float = 40.0,
    perturbation_deg: float = 20.0,
    rotations_per_seed: int = 100,
    keep: int = 2,
    level_spacing_mm: tuple = LOCAL_LEVELS_MM,
    blur_mm: tuple = LOCAL_BLUR_MM,
    refine_iterations: int = 30,
    fixed_mask=None,
    moving_mask=None,
    seed: int = 0,
    device: str = "auto",
    progress=None,
    cancel=None,
) -> RegistrationResult:
    """CSNGF search restricted to the neighbourhood of one or more initial fixed → moving transforms.

    Level 1 (``level_spacing_mm[0]``): for each seed, itself plus ``rotations_per_seed - 1`` rotations within
    ``perturbation_deg`` of it, each scored at its best integer shift within ``± window_mm`` of the seed's
    (FFT over the window). The ``keep`` best distinct candidates of all seeds go on; each later level
    re-scores them and ``rotations_per_seed / 10`` perturbations within a quarter of the previous angle, within
    ± 2 voxels (widened to the FFT length); the survivors are
    refined sub-voxel (:mod:`.refine`).

    Args:
        fixed, moving: 3D (or 2D) images or paths, as for :func:`register_global_rigid`.
        seeds: ``(4, 4)`` (2D: ``(3, 3)``) rigid fixed → moving matrices (LPS mm).
        window_mm: half-width of the translation window around each seed (mm, per axis of the fixed grid).
        perturbation_deg: half-width of the rotation neighbourhood of each seed (degrees).
        rotations_per_seed: rotations scored per seed on the first level (the seed's own included).
        keep: candidates kept after the first level (and refined at the end).
        level_spacing_mm, blur_mm: working grids (mm) and Gaussian sigmas (mm) per level, coarsest first.
        refine_iterations: L-BFGS iterations of the final NGF refinement (0: none).
        fixed_mask, moving_mask, seed, device, progress, cancel: as for :func:`register_global_rigid`.

    Returns:
        :class:`RegistrationResult` like :func:`register_global_rigid` (``method = "local_rigid_search"``).
        ``confidence`` = ``1 - s_alt / s_best`` on the first level, where ``s_best`` is the best first-level
        CSNGF (normalised NGF similarity) and ``s_alt`` the best separate first-level peak: a candidate that
        places the moving image's corners more than :data:`DISTINCT_VOXELS` first-level voxels (mean) away from
        the best one, with no better candidate that close to it (0 when there is none). Each rotation keeps
        only its best shift, so alternatives come from other rotations and other seeds' windows. Scale [0, 1]:
        0 = an alternative pose scores as well (ambiguous), 1 = no alternative scores at all; the same scale as
        the global search's confidence.
        ``diagnostics["first_level"]`` holds ``best``, ``runner_up`` and ``runner_up_distance_mm``;
        ``diagnostics["candidates"]`` lists the refined candidates (best first) with the index of the seed
        each descends from, and ``diagnostics["seed_scores"]`` the CSNGF of every seed at its own pose
        (best shift within the window).

    Raises:
        InputError: bad images, masks, seeds or parameters.
        RegistrationFailed: no candidate reaches the minimum overlap.
        RegistrationCancelled: ``cancel()`` returned True.
    """
    t_start = time.perf_counter()
    if not seeds:
        raise InputError("seeds: expected at least one initial transform")
    if not window_mm > 0 or not perturbation_deg > 0:
        raise InputError(f"window_mm and perturbation_deg: expected positive values, got {window_mm}, "
                         f"{perturbation_deg}")
    if int(rotations_per_seed) < 1 or int(keep) < 1:
        raise InputError(f"rotations_per_seed and keep: expected integers >= 1, got {rotations_per_seed}, {keep}")
    n_levels = len(level_spacing_mm)
    cfg = GlobalRigidConfig(
        level_spacing_mm=tuple(level_spacing_mm), blur_mm=tuple(blur_mm),
        num_rotations=(1000,) * n_levels, perturbation_deg=(180.0,) * n_levels, keep=(int(keep),) * n_levels,
        refine=refine_iterations > 0, refine_iterations=int(refine_iterations), seed=int(seed), device=device)
    prog = as_progress(progress, cancel)
    fixed_in, moving_in, fmask, mmask = _read_inputs(fixed, moving, fixed_mask, moving_mask)
    dim = fixed_in.image.GetDimension()
    seeds = [np.asarray(s, float) for s in seeds]
    if any(s.shape != (dim + 1, dim + 1) for s in seeds):
        raise InputError(f"seeds: expected ({dim + 1}, {dim + 1}) matrices, got {[s.shape for s in seeds]}")
    dev = resolve_device(device)
    fixed_center = Grid.from_image(fixed_in.image).center()
    levels = _build_levels(_prepare(fixed_in.image, fmask, cfg, "fixed"), _prepare(moving_in.image, mmask, cfg, "moving"),
                           cfg, fixed_center, dev)
    timings = {"prepare": time.perf_counter() - t_start}
    rng = np.random.default_rng(seed)
    parents: List[Candidate] = [candidate_from_matrix(s, levels[0].moving_center) for s in seeds]
    seed_of = {id(c): i for i, c in enumerate(parents)}  # every later candidate's ``origin`` is its seed
    seed_scores: List[float] = []
    angle = float(perturbation_deg)
    for k, level in enumerate(levels):
        t0 = time.perf_counter()
        if k == 0:
            window, per_parent = int(np.ceil(window_mm / level.spacing)), int(rotations_per_seed)
        else:
            window, per_parent, angle = 2, max(2, int(rotations_per_seed) // 10), angle / 4.0
        rotations, parent_index = perturb_rotations(np.stack([c.rotation for c in parents]), per_parent, angle, rng)
        cands = _evaluate_local(level, rotations, parent_index, parents, replace(cfg, local_shift_window=window),
                                prog.sub(k / (n_levels + 1), (k + 1) / (n_levels + 1)), k)
        if k == 0:
            seed_scores = [float(c.score) for c in cands[:len(parents)]]
            first = first_level_margin(cands, Grid.from_image(moving_in.image).corners(), level.moving_center,
                                       DISTINCT_VOXELS * level.spacing)
        if not any(c.score > INVALID_SCORE for c in cands):
            raise RegistrationFailed(f"local search: no candidate reaches the minimum overlap on level {k + 1} "
                                     f"({level.spacing:g} mm)")
        parents = distinct_best(cands, int(keep), max(angle / 2.0, 1.0), 2.0 * level.spacing)
        timings[f"search_level_{k + 1}"] = time.perf_counter() - t0
    final = parents
    if refine_iterations > 0:
        t0 = time.perf_counter()
        final = refine_candidates(levels[-1], final, epsilon=cfg.epsilon, iterations=int(refine_iterations),
                                  progress=prog.sub(n_levels / (n_levels + 1), 1.0))
        timings["refine"] = time.perf_counter() - t0
    best = final[0]
    timings["total"] = time.perf_counter() - t_start
    prog.report(1.0, "done")
    return RegistrationResult(
        method="local_rigid_search",
        transform=_transform(best, levels[-1].moving_center, fixed_center),
        fixed_grid=Grid.from_image(fixed_in.image),
        moving_grid=Grid.from_image(moving_in.image),
        score=float(best.angf),
        confidence=first["confidence"],
        timings=timings,
        diagnostics={"seed_scores": seed_scores, "first_level": first, "window_mm": float(window_mm),
                     "perturbation_deg": float(perturbation_deg),
                     "candidates": [dict(c.to_dict(), seed=seed_of.get(id(c.origin), -1),
                                         fixed_to_moving=_matrix(c, levels[-1].moving_center)) for c in final]},
        warnings=fixed_in.warnings + moving_in.warnings,
    )


def first_level_margin(cands: Sequence[Candidate], moving_points: np.ndarray, moving_center: np.ndarray,
                       distinct_mm: float, top: int = 400) -> dict:
    """The best candidate's score, the runner-up's and the confidence ``1 - s_alt / s_best`` (see
    :func:`local_rigid_search`).

    The runner-up is the best *separate peak*: a candidate whose fixed-space image of ``moving_points`` lies
    more than ``distinct_mm`` (mean) from the best one's, and with no better candidate within ``distinct_mm``
    of it (so the flank of the best pose's own basin does not count as an alternative).

    Args:
        cands: first-level candidates ``q = R (p - a) + c_M``; moving_points: ``(P, D)`` mm (the moving corners);
        moving_center: ``c_M`` (mm); distinct_mm: separation of peaks; top: only the ``top`` best are compared.
    """
    order = sorted((c for c in cands if c.score > INVALID_SCORE), key=lambda c: -c.score)[:top]
    if not order or not order[0].score > 0:
        return {"best": float("nan"), "runner_up": float("nan"), "runner_up_distance_mm": None,
                "confidence": float("nan")}
    rel = np.asarray(moving_points, float) - np.asarray(moving_center, float)
    # fixed point of each moving point: p = R^T (q - c_M) + a, i.e. rows (q - c_M) @ R + a
    placed = np.einsum("pj,njk->npk", rel, np.stack([c.rotation for c in order])) + np.stack(
        [c.anchor for c in order])[:, None, :]
    dist = np.linalg.norm(placed[:, None] - placed[None, :], axis=3).mean(axis=2)  # (n, n), sorted by score
    best, alt, alt_dist = float(order[0].score), 0.0, None
    for i in range(1, len(order)):
        if dist[i, 0] > distinct_mm and not np.any(dist[i, :i] <= distinct_mm):
            alt, alt_dist = float(order[i].score), float(dist[i, 0])
            break
    return {"best": best, "runner_up": alt, "runner_up_distance_mm": alt_dist,
            "confidence": float(np.clip(1.0 - alt / best, 0.0, 1.0))}


def _matrix(c: Candidate, moving_center: np.ndarray) -> list:
    m = np.eye(len(c.anchor) + 1)
    m[:-1, :-1] = c.rotation
    m[:-1, -1] = np.asarray(moving_center, float) - c.rotation @ c.anchor
    return m.tolist()


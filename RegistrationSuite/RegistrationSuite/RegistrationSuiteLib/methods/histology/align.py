"""Initial alignment: centres of mass, full rotation search (0–359°, optional mirror), affine refinement.

Every mapping here goes **fixed → moving** in the slides' physical frames: ``x_m = A x_f + t`` with ``A``
``(2, 2)`` and ``t`` ``(2,)``, points as (x, y). The moving plane is sampled at ``A x_f + t`` for every fixed
pixel, so the warped moving image lives on the fixed grid.

Rotation search (as in the reference pipeline, METHOD_NOTES §4): the tissue's centres of mass are paired,
then every rotation (and, with mirror, every reflection) about them is scored by the normalised
cross-correlation of the stain channels on a common square canvas large enough for either slide in any
orientation; the best few, well separated, go on to the affine stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...progress import Progress
from .preprocess import Plane

MIRROR = np.diag([-1.0, 1.0])


@dataclass
class Candidate:
    """A fixed → moving affine ``x_m = matrix @ x_f + offset`` and how it was found."""

    matrix: np.ndarray
    offset: np.ndarray
    angle_deg: float = 0.0
    mirrored: bool = False
    score: float = float("nan")

    def homogeneous(self) -> np.ndarray:
        m = np.eye(3)
        m[:2, :2], m[:2, 2] = self.matrix, self.offset
        return m


def sample(plane: Plane, points: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Values of ``plane`` at physical ``points`` ``(N, H, W, 2)`` → ``(N, C, H, W)``; 0 outside the plane."""
    h, w = plane.shape
    origin = torch.as_tensor(plane.origin, dtype=points.dtype, device=points.device)
    spacing = torch.as_tensor(plane.spacing, dtype=points.dtype, device=points.device)
    size = torch.tensor([w - 1, h - 1], dtype=points.dtype, device=points.device).clamp(min=1)
    grid = 2.0 * (points - origin) / spacing / size - 1.0
    data = plane.data[None].expand(points.shape[0], -1, -1, -1)
    return F.grid_sample(data, grid, mode=mode, padding_mode="zeros", align_corners=True)


def apply_affine(points: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``matrix @ p + offset`` for points ``(..., 2)``; ``matrix`` ``(N, 2, 2)``, ``offset`` ``(N, 2)`` → ``(N, ..., 2)``."""
    n = matrix.shape[0]
    flat = points.reshape(1, -1, 2)
    out = torch.einsum("nij,nkj->nki", matrix, flat.expand(n, -1, -1)) + offset[:, None, :]
    return out.reshape(n, *points.shape)


def ncc(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor = None) -> torch.Tensor:
    """Global normalised cross-correlation per batch item of ``(N, C, H, W)`` tensors (optionally weighted)."""
    if weight is None:
        weight = torch.ones_like(a[:, :1])
    w = weight / weight.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1e-8)
    ma = (a * w).sum(dim=(1, 2, 3), keepdim=True)
    mb = (b * w).sum(dim=(1, 2, 3), keepdim=True)
    da, db = a - ma, b - mb
    cov = (w * da * db).sum(dim=(1, 2, 3))
    va = (w * da * da).sum(dim=(1, 2, 3))
    vb = (w * db * db).sum(dim=(1, 2, 3))
    return cov / torch.sqrt(va * vb).clamp(min=1e-12)


def ncc_channels(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor = None) -> torch.Tensor:
    """NCC of each channel ``(C,)`` of two ``(1, C, H, W)`` tensors, optionally weighted by ``(1, 1, H, W)``."""
    c = a.shape[1]
    w = None if weight is None else weight.expand(c, -1, -1, -1)
    return ncc(a.transpose(0, 1), b.transpose(0, 1), w)


def sample_with_domain(plane: Plane, points: torch.Tensor) -> tuple:
    """``(values (N, C, H, W), inside (N, 1, H, W))``: ``inside`` is 1 where the points fall in the plane's
    domain. Similarities are weighted by it, so the plane's border (where a slide cuts through tissue) never
    looks like a tissue edge: that would pull the frames, not the tissue, into line."""
    ones = torch.ones_like(plane.data[:1])
    out = sample(plane.with_data(torch.cat([plane.data, ones])), points)
    return out[:, :-1], (out[:, -1:] > 0.999).float()


def centre_of_mass(plane: Plane) -> np.ndarray:
    """Intensity-weighted centre ``(2,)`` (physical x, y) of a non-negative plane."""
    pts = plane.points().reshape(-1, 2).double()
    w = plane.data[0].reshape(-1).double().clamp(min=0)
    return (pts * w[:, None]).sum(0).cpu().numpy() / max(float(w.sum()), 1e-12)


def canvas(centre: np.ndarray, side: float, pixels: int, device=None) -> Plane:
    """An empty square plane of ``pixels``² covering ``side`` physical units, centred on ``centre``."""
    spacing = np.array([side / pixels, side / pixels])
    origin = np.asarray(centre, dtype=float) - side / 2.0 + spacing / 2.0
    return Plane(torch.zeros(1, pixels, pixels, device=device), origin, spacing)


def rotation_matrices(angles_deg: np.ndarray, mirrored: bool) -> np.ndarray:
    """``(N, 2, 2)`` fixed → moving linear parts: rotation by each angle, after a reflection of x if mirrored."""
    a = np.radians(angles_deg)
    c, s = np.cos(a), np.sin(a)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    return rot @ MIRROR if mirrored else rot


def rotation_search(fixed: Plane, moving: Plane, *, step_deg: float, mirror: str, keep: int, pixels: int,
                    progress: Progress = None) -> List[Candidate]:
    """Score every rotation (0–359°, ``step_deg`` apart; mirrored too when ``mirror`` is "auto"/"yes") about
    the tissue centres of mass; return the ``keep`` best candidates at least 20° apart (per mirror state).

    Args:
        fixed, moving: stain channels (non-negative, 0 on glass), any resolution.
        pixels: side of the square search canvas (it spans the larger slide diagonal, so nothing is clipped).
    """
    c_f, c_m = centre_of_mass(fixed), centre_of_mass(moving)
    side = float(max(np.hypot(*fixed.extent), np.hypot(*moving.extent)))
    can = canvas(c_f, side, pixels, fixed.data.device)
    f_small = _shrink(fixed, can.spacing[0])
    m_small = _shrink(moving, can.spacing[0])
    pts = can.points()
    f_img = sample(f_small, pts[None])
    angles = np.arange(0.0, 360.0, step_deg)
    states = {"auto": (False, True), "no": (False,), "yes": (True,)}[mirror]
    found = []
    for k, mirrored in enumerate(states):
        mats = rotation_matrices(angles, mirrored)
        scores = []
        for chunk in np.array_split(np.arange(len(angles)), max(1, len(angles) // 60)):
            m = torch.as_tensor(mats[chunk], dtype=torch.float32, device=pts.device)
            t = torch.as_tensor(c_m[None] - np.einsum("nij,j->ni", mats[chunk], c_f), dtype=torch.float32,
                                device=pts.device)
            warped, inside = sample_with_domain(m_small, apply_affine(pts, m, t))
            scores.append(ncc(f_img.expand(len(chunk), -1, -1, -1), warped, inside))
            if progress is not None:
                progress.report((k + chunk[-1] / len(angles)) / len(states), "rotation search")
        scores = torch.cat(scores).cpu().numpy()
        for i in np.argsort(-scores):
            if all(c.mirrored != mirrored or _angle_gap(c.angle_deg, angles[i]) >= 20.0 for c in found):
                found.append(Candidate(mats[i], c_m - mats[i] @ c_f, float(angles[i]), mirrored, float(scores[i])))
                if sum(c.mirrored == mirrored for c in found) >= keep:
                    break
    return sorted(found, key=lambda c: -c.score)[:keep]


def _angle_gap(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def _shrink(plane: Plane, spacing: float) -> Plane:
    """``plane`` resampled (area-weighted) to about ``spacing`` when that is coarser; otherwise unchanged."""
    if spacing <= plane.spacing.max() * 1.01:
        return plane
    size = np.maximum(np.round(plane.extent / spacing), 4).astype(int)
    return plane.resized((size[1], size[0]))


def refine_affine(fixed_levels: Sequence[Plane], moving_levels: Sequence[Plane], start: Candidate, *,
                  iterations: int, score_channel: int = -1, progress: Progress = None) -> Candidate:
    """Affine refinement of ``start`` coarse to fine: Adam on 1 − NCC over the fixed grid (glass included, so
    the tissue outlines count), parameters in units of the fixed slide's half extent (balanced steps).

    Args:
        fixed_levels, moving_levels: feature pyramids ``(C, H, W)``, **coarsest first**, same number of levels.
        score_channel: the channel whose NCC is returned as ``score`` (the optimised loss averages all).
    """
    finest = fixed_levels[-1]
    c = torch.as_tensor(centre_of_mass(finest), dtype=torch.float32)
    half = float(max(finest.extent)) / 2.0
    a = torch.as_tensor(start.matrix, dtype=torch.float32).clone().requires_grad_(True)
    b = torch.as_tensor((start.matrix @ centre_of_mass(finest) + start.offset - centre_of_mass(finest)) / half,
                        dtype=torch.float32).clone().requires_grad_(True)
    score = float("nan")
    for level, (fixed, moving) in enumerate(zip(fixed_levels, moving_levels)):
        pts = fixed.points()
        cc = c.to(pts.device)
        target = fixed.data[None]
        opt = torch.optim.Adam([a, b], lr=0.01 / (level + 1))
        for it in range(iterations):
            opt.zero_grad()
            moved = ((pts - cc) @ a.T) + cc + b * half
            loss = 1.0 - ncc_channels(target, *sample_with_domain(moving, moved[None])).mean()
            loss.backward()
            opt.step()
            if progress is not None and it % 10 == 0:
                progress.report((level + it / max(iterations, 1)) / len(fixed_levels), "affine refinement")
        with torch.no_grad():
            moved = ((pts - cc) @ a.T) + cc + b * half
            score = float(ncc_channels(target, *sample_with_domain(moving, moved[None]))[score_channel])
    mat = a.detach().double().cpu().numpy()
    cn = c.double().numpy()
    off = cn + b.detach().double().cpu().numpy() * half - mat @ cn
    return Candidate(mat, off, start.angle_deg, start.mirrored, score)


def affine_angle_deg(matrix: np.ndarray) -> float:
    """Rotation angle (degrees, [0, 360)) of the closest rotation/reflection to a ``(2, 2)`` matrix."""
    u, _, vt = np.linalg.svd(matrix)
    r = u @ vt
    if np.linalg.det(r) < 0:
        r = r @ MIRROR
    return float(math.degrees(math.atan2(r[1, 0], r[0, 0])) % 360.0)


def initial_alignment(fixed_search: Sequence[Plane], moving_search: Sequence[Plane], fixed_levels: Sequence[Plane],
                      moving_levels: Sequence[Plane], *, step_deg: float, mirror: str, keep: int, pixels: int,
                      iterations: int, progress: Progress) -> tuple:
    """Rotation search on each search channel, then the affine stage on the union of the candidates.

    Every candidate is refined on the coarsest feature level; the one whose structure channel (last feature,
    the gradient magnitude: it ignores stain contrast) correlates best continues on the finer levels.

    Args:
        fixed_search, moving_search: single-channel planes searched separately (outline, density, edges).
        fixed_levels, moving_levels: feature pyramids, **coarsest first**.

    Returns:
        ``(best, candidates, start)``: the refined :class:`Candidate`, every candidate after its coarse
        refinement (diagnostics), and the rotation-search candidate ``best`` started from (no refinement).
    """
    found: List[Candidate] = []
    for k, (f, m) in enumerate(zip(fixed_search, moving_search)):
        sub = progress.sub(0.3 * k / len(fixed_search), 0.3 * (k + 1) / len(fixed_search))
        for c in rotation_search(f, m, step_deg=step_deg, mirror=mirror, keep=keep, pixels=pixels, progress=sub):
            if all(o.mirrored != c.mirrored or _angle_gap(o.angle_deg, c.angle_deg) >= 10.0 for o in found):
                found.append(c)
    scored = []
    for k, c in enumerate(found):
        sub = progress.sub(0.3 + 0.4 * k / len(found), 0.3 + 0.4 * (k + 1) / len(found))
        scored.append(refine_affine(fixed_levels[:1], moving_levels[:1], c, iterations=iterations, progress=sub))
    index = int(np.argmax([c.score for c in scored]))
    best = scored[index]
    if len(fixed_levels) > 1:
        best = refine_affine(fixed_levels[1:], moving_levels[1:], best, iterations=iterations,
                             progress=progress.sub(0.7, 1.0))
    return best, scored, found[index]


def moved_points(fixed: Plane, affine: Candidate, displacement: Optional[torch.Tensor]) -> torch.Tensor:
    """Moving positions ``(H, W, 2)`` of the fixed plane's pixel centres: ``A (x + u(x)) + t``, ``u`` in fixed
    pixels converted to physical units."""
    pts = fixed.points().double()
    if displacement is not None:
        spacing = torch.as_tensor(fixed.spacing, dtype=torch.float64, device=pts.device)
        pts = pts + displacement.double().movedim(0, -1) * spacing
    a = torch.as_tensor(affine.matrix, dtype=torch.float64, device=pts.device)
    t = torch.as_tensor(affine.offset, dtype=torch.float64, device=pts.device)
    return pts @ a.T + t

"""Multi-level rotation search with FFT cross-similarity of squared NGF over all shifts (paper §3.1).

Frames. Each level holds isotropic working volumes (spacing ``s`` mm, array order):

- fixed: array index ``x`` is at physical ``O_F + s A_F x`` (``A_F``: ``(D, D)``, column ``i`` = physical
  direction of array axis ``i``);
- moving: array index ``v`` is at ``O_M + s A_M v``;
- for a physical rotation ``R`` (fixed → moving) the moving image is resampled into a box of shape ``Lb``
  whose centre ``y_c = (Lb - 1) / 2`` sits on the moving rotation centre ``c_M``:
  ``B(y) = moving(v_c + Q (y - y_c))`` with ``Q = A_M^T R A_F`` and ``v_c`` the index of ``c_M``.

Pairing fixed voxel ``x`` with box voxel ``y = x - chi`` is the physical fixed → moving map
``q = R (p - a) + c_M`` with the *anchor* ``a = O_F + s A_F (chi + y_c)``: the fixed point that lands on the
moving centre. A candidate is stored as ``(R, a)``, independent of the level's resolution.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from ...errors import RegistrationFailed
from ...progress import Progress
from .config import GlobalRigidConfig
from .ngf import (
    INVALID_SCORE,
    cross_similarity_fft,
    fast_len,
    full_shift_range,
    gather_spectra,
    gradient_support,
    normalized_gradient_field,
    prepare_fixed_spectra,
)
from .rotations import global_rotations, perturb_rotations, rotate_volumes, rotation_distance_deg

# A voxel of the rotated moving box is inside only if all its interpolation corners are (no zero bleeding).
_INSIDE = 1.0 - 1e-3
_SPECTRA_BUDGET_BYTES = 512 * 2**20
_POOL = 64


@dataclass
class LevelData:
    """Working volumes of one pyramid level (see the module docstring for the frames).

    Attributes:
        spacing: isotropic voxel size ``s`` (mm).
        fixed: ``(1, 1, *Fa)`` intensities in [0, 1]; ``fixed_mask`` the same shape, 0/1.
        fixed_origin, fixed_axes: ``O_F`` ``(D,)`` mm and ``A_F`` ``(D, D)``.
        fixed_center: ``(D,)`` mm, the fixed image's centre (reference of ``max_shift_mm``).
        moving: ``(1, 2, *Ma)``: intensities in [0, 1] and the 0/1 mask (domain and user mask).
        moving_origin, moving_axes: ``O_M``, ``A_M``.
        moving_center: ``c_M`` ``(D,)`` mm, centre of rotation of the moving image.
        box_shape: ``Lb``, spatial shape of the rotated moving box.
    """

    spacing: float
    fixed: torch.Tensor
    fixed_mask: torch.Tensor
    fixed_origin: np.ndarray
    fixed_axes: np.ndarray
    fixed_center: np.ndarray
    moving: torch.Tensor
    moving_origin: np.ndarray
    moving_axes: np.ndarray
    moving_center: np.ndarray
    box_shape: tuple

    @property
    def dim(self) -> int:
        return len(self.box_shape)

    @property
    def box_center(self) -> np.ndarray:
        return (np.asarray(self.box_shape, dtype=float) - 1.0) / 2.0

    def index_rotations(self, rotations: np.ndarray) -> np.ndarray:
        """``Q = A_M^T R A_F`` for physical rotations ``(N, D, D)``."""
        return np.einsum("ji,njk,kl->nil", self.moving_axes, rotations, self.fixed_axes)

    def moving_center_index(self) -> np.ndarray:
        return self.moving_axes.T @ (self.moving_center - self.moving_origin) / self.spacing

    def anchor_from_shift(self, shifts: np.ndarray) -> np.ndarray:
        """Anchors ``(N, D)`` mm of integer shifts ``(N, D)``."""
        return self.fixed_origin + self.spacing * (np.asarray(shifts, float) + self.box_center) @ self.fixed_axes.T

    def shift_from_anchor(self, anchors: np.ndarray) -> np.ndarray:
        """Continuous shifts ``(N, D)`` of anchors ``(N, D)`` mm."""
        return (np.asarray(anchors, float) - self.fixed_origin) @ self.fixed_axes / self.spacing - self.box_center


@dataclass
class Candidate:
    """A rigid hypothesis ``q = R (p - anchor) + c_M`` (fixed → moving, mm) and its score.

    Attributes:
        rotation: ``(D, D)`` physical rotation.
        anchor: ``(D,)`` mm, fixed point mapped onto the moving centre.
        score: CSNGF at the level it was evaluated on (after refinement: the normalised similarity ``C`` of
            :mod:`.refine`).
        level: 0-based level index (``-1`` after refinement).
        angf: mean squared NGF dot product over the overlap (paper Eq. 4); CSNGF equals it on search levels.
        root: the first-level candidate this one descends from (``None`` on the first level).
    """

    rotation: np.ndarray
    anchor: np.ndarray
    score: float
    level: int
    angf: float = float("nan")
    root: Optional["Candidate"] = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if math.isnan(self.angf) and self.level >= 0:
            self.angf = float(self.score)

    @property
    def origin(self) -> "Candidate":
        """The first-level ancestor (itself on the first level)."""
        return self if self.root is None else self.root

    def to_dict(self) -> dict:
        return {"rotation": self.rotation.tolist(), "anchor_mm": self.anchor.tolist(), "score": float(self.score),
                "angf": float(self.angf), "level": int(self.level)}


@dataclass
class SearchOutcome:
    """What the search found.

    Attributes:
        kept: kept (distinct) candidates per level, best first.
        evaluated: number of rotations evaluated per level.
        seconds: wall time per level.
        global_pool: up to ``_POOL`` distinct best candidates of the first level (for the confidence measure).
    """

    kept: List[List[Candidate]] = field(default_factory=list)
    evaluated: List[int] = field(default_factory=list)
    seconds: List[float] = field(default_factory=list)
    global_pool: List[Candidate] = field(default_factory=list)


def search_rotations(levels: List[LevelData], config: GlobalRigidConfig, progress: Progress) -> SearchOutcome:
    """Run the coarse-to-fine search over ``levels`` (coarsest first).

    Raises:
        RegistrationFailed: no rotation and shift reach the minimum overlap on some level.
        RegistrationCancelled: the caller cancelled (checked between batches).
    """
    rng = np.random.default_rng(config.seed)
    outcome = SearchOutcome()
    weights = np.array([_level_cost(lv, config, k) for k, lv in enumerate(levels)], dtype=float)
    bounds = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
    kept: List[Candidate] = []
    for k, level in enumerate(levels):
        t0 = time.perf_counter()
        sub = progress.sub(bounds[k], bounds[k + 1])
        if config.perturbation_deg[k] >= 180.0 or not kept:
            rotations = global_rotations(config.num_rotations[k], level.dim, rng)
            cands = _evaluate_global(level, rotations, config, sub, k)
        else:
            per_parent = max(1, config.num_rotations[k] // len(kept))
            parents = np.stack([c.rotation for c in kept])
            rotations, parent_index = perturb_rotations(parents, per_parent, config.perturbation_deg[k], rng)
            cands = _evaluate_local(level, rotations, parent_index, kept, config, sub, k)
        if not any(c.score > INVALID_SCORE for c in cands):
            raise RegistrationFailed(
                f"no rotation and shift reach the minimum overlap γ = min_overlap = {config.min_overlap} (a fraction "
                f"of the smaller image's, or mask's, volume) on level {k + 1} ({level.spacing:g} mm); lower "
                "--min-overlap (min_overlap) or check that the images show the same region"
                + (f" within max_shift_mm={config.max_shift_mm}" if config.max_shift_mm is not None else "")
            )
        angle = _distinct_angle(config, k)
        kept = distinct_best(cands, config.keep[k], angle, 2.0 * level.spacing)
        if k == 0:
            outcome.global_pool = distinct_best(cands, _POOL, angle, 2.0 * level.spacing)
        outcome.kept.append(kept)
        outcome.evaluated.append(len(cands))
        outcome.seconds.append(time.perf_counter() - t0)
    return outcome


def _distinct_angle(config: GlobalRigidConfig, k: int) -> float:
    """Suppression angle of level ``k``: half the next level's perturbation (the last level: its own), so the
    kept candidates' perturbation balls do not mostly overlap; 10 degrees before a global level."""
    nxt = config.perturbation_deg[min(k + 1, config.num_levels - 1)]
    return 0.5 * nxt if nxt < 180.0 else 10.0


def _level_cost(level: LevelData, config: GlobalRigidConfig, k: int) -> float:
    """Rough relative cost of level ``k`` (rotations times FFT volume), to split the progress bar."""
    extent = [2 * b for b in level.box_shape] if config.perturbation_deg[k] >= 180 else [
        b + 2 * config.local_shift_window for b in level.box_shape]
    return float(config.num_rotations[k]) * float(np.prod(extent))


def distinct_best(cands: List[Candidate], count: int, angle_deg: float, shift_mm: float) -> List[Candidate]:
    """The ``count`` best candidates, skipping any within ``angle_deg`` *and* ``shift_mm`` (anchor distance)
    of a better kept one (non-maximum suppression); invalid (``-1``) scores are never kept."""
    order = sorted((c for c in cands if c.score > INVALID_SCORE), key=lambda c: -c.score)
    if not order:
        return []
    dim = order[0].rotation.shape[0]
    rotations, anchors = np.empty((count, dim, dim)), np.empty((count, dim))
    kept: List[Candidate] = []
    for c in order:
        n = len(kept)
        if n:
            close = (rotation_distance_deg(c.rotation, rotations[:n]) < angle_deg) & (
                np.linalg.norm(anchors[:n] - c.anchor, axis=1) < shift_mm)
            if close.any():
                continue
        rotations[n], anchors[n] = c.rotation, c.anchor
        kept.append(c)
        if len(kept) == count:
            break
    return kept


# ----------------------------------------------------------------------------------------------- levels
def _fixed_ngf(level: LevelData, config: GlobalRigidConfig):
    """Masked NGF ``(1, D, *Fa)`` of the fixed level image and its gradient support ``(1, 1, *Fa)``."""
    support = gradient_support(level.fixed_mask)
    return normalized_gradient_field(level.fixed, support, epsilon=config.epsilon, erode=False), support


def _global_window(level: LevelData, config: GlobalRigidConfig):
    """Inclusive shift window of a global level: every shift with enough box overlap, within max_shift_mm."""
    lo, hi = full_shift_range(level.fixed.shape[2:], level.box_shape, config.min_overlap)
    lo, hi = np.array(lo), np.array(hi)
    if config.max_shift_mm is not None:
        centre = level.shift_from_anchor(level.fixed_center[None])[0]
        reach = config.max_shift_mm / level.spacing
        lo = np.maximum(lo, np.ceil(centre - reach - 1e-9).astype(int))
        hi = np.minimum(hi, np.floor(centre + reach + 1e-9).astype(int))
    return lo, hi


def _evaluate_global(level, rotations, config, progress, k) -> List[Candidate]:
    """Score each rotation at its best shift over the whole overlap range (one fixed FFT for all)."""
    fixed_ngf, support = _fixed_ngf(level, config)
    lo, hi = _global_window(level, config)
    if np.any(hi < lo):
        return [Candidate(r, np.zeros(level.dim), INVALID_SCORE, k) for r in rotations]
    spectra = prepare_fixed_spectra(fixed_ngf, support, level.box_shape, tuple(lo), tuple(hi))
    scores, shifts = _score_rotations(level, rotations, spectra, config, progress)
    anchors = level.anchor_from_shift(shifts)
    return [Candidate(r, a, float(s), k) for r, a, s in zip(rotations, anchors, scores)]


def _evaluate_local(level, rotations, parent_index, parents, config, progress, k) -> List[Candidate]:
    """Score each parent's rotations within ± ``local_shift_window`` voxels of the parent's shift.

    Parents whose windows have the same size (the usual case) are evaluated together: their rotations share
    batches, each compared against its own parent's fixed spectra (fewer, larger tensor operations).
    """
    fixed_ngf, support = _fixed_ngf(level, config)
    windows = [_local_window(level, config, parent) for parent in parents]
    groups: dict = {}
    # On a CPU, gathering copies every window's spectra once per rotation (more work than the arithmetic it
    # batches); there each parent is scored alone against its own spectra, which gives the same scores.
    gather = level.fixed.device.type != "cpu"
    for j, win in enumerate(windows):
        if win is not None:
            groups.setdefault(tuple(win[1] - win[0]) if gather else j, []).append(j)
    scores = np.full(len(rotations), INVALID_SCORE)
    shifts = np.zeros((len(rotations), level.dim))
    for g, members in enumerate(groups.values()):
        spectra = [prepare_fixed_spectra(fixed_ngf, support, level.box_shape, tuple(windows[j][0]),
                                         tuple(windows[j][1])) for j in members]
        position = {j: i for i, j in enumerate(members)}
        sel = np.flatnonzero(np.isin(parent_index, members))
        which = np.array([position[j] for j in parent_index[sel]], dtype=np.int64)
        sub = progress.sub(g / len(groups), (g + 1) / len(groups))
        if len(members) == 1:  # one window: no gathering
            spectra, which = spectra[0], None
        scores[sel], shifts[sel] = _score_rotations(level, rotations[sel], spectra, config, sub, which)
    anchors = level.anchor_from_shift(shifts)
    return [Candidate(rot, a, float(s), k, root=parents[j].origin)
            for rot, a, s, j in zip(rotations, anchors, scores, parent_index)]


def _local_window(level: LevelData, config: GlobalRigidConfig, parent: Candidate):
    """Inclusive shift window around ``parent``'s shift at this level (``None`` if it leaves the range)."""
    g_lo, g_hi = _global_window(level, config)
    r = int(config.local_shift_window)
    centre = np.round(level.shift_from_anchor(parent.anchor[None])[0]).astype(int)
    # Widen the window to fill the FFT length it needs anyway: the extra shifts cost nothing.
    extra = np.array([fast_len(2 * r + b) - (2 * r + b) for b in level.box_shape])
    lo = np.maximum(centre - r - extra // 2, g_lo)
    hi = np.minimum(centre + r + extra - extra // 2, g_hi)
    return None if np.any(hi < lo) else (lo, hi)


def _batch_size(spectra, config: GlobalRigidConfig, gathered: bool) -> int:
    half = list(spectra.fft_shape)
    half[-1] = half[-1] // 2 + 1
    channels = spectra.products.shape[-len(half) - 1]
    per_rotation = 8 * ((2 if gathered else 1) * channels + 3) * math.prod(half) * 2
    return int(max(1, min(config.batch_size, _SPECTRA_BUDGET_BYTES // per_rotation)))


def _score_rotations(level: LevelData, rotations, spectra, config, progress: Progress, which=None):
    """Best score ``(N,)`` and integer shift ``(N, D)`` for each rotation, in batches.

    ``spectra``: one :class:`FixedSpectra` for all rotations, or a list with ``which[i]`` naming the entry
    that rotation ``i`` is compared against.
    """
    n = len(rotations)
    q_all = level.index_rotations(rotations)
    v_c = level.moving_center_index()
    scores, shifts = np.empty(n), np.empty((n, level.dim))
    gathered = isinstance(spectra, (list, tuple))
    step = _batch_size(spectra[0] if gathered else spectra, config, gathered)
    with torch.no_grad():
        for start in range(0, n, step):
            progress.check_cancel()
            stop = min(n, start + step)
            box = rotate_volumes(level.moving, q_all[start:stop], level.box_shape, v_c)
            inside = (box[:, 1:2] >= _INSIDE).to(box.dtype)
            support = gradient_support(inside)
            ngf = normalized_gradient_field(box[:, :1], support, epsilon=config.epsilon, erode=False)
            window = gather_spectra(spectra, which[start:stop]) if gathered else spectra
            value, chi = cross_similarity_fft(window, ngf, support, min_overlap=config.min_overlap).best()
            scores[start:stop] = value.double().cpu().numpy()
            shifts[start:stop] = chi.cpu().numpy()
            progress.report(stop / n, f"level {level.spacing:g} mm: {stop}/{n} rotations")
    return scores, shifts

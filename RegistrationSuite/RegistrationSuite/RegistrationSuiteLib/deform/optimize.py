"""Instance optimisation of a dense displacement (or stationary velocity) field on one image pair.

Coarse to fine: at each pyramid level the images (and masks) are resized to a grid with the same corner
voxels (:func:`~.filters.level_shape`), the field from the previous level (or the caller's initial field)
is resized onto it, and Adam minimises ``similarity + weight × regulariser`` over the field's voxels
(VoxelMorph++, Heinrich & Hansen, WBIR 2022: Adam on a dense field, MIND-SSC + diffusion). Masks are
honoured through the loss weight ``fixed_mask × warped moving_mask × overlap`` (voxels sampled outside the
moving image do not count). Dimension-generic: 2D ``(N, 1, H, W)`` and 3D ``(N, 1, D, H, W)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..progress import as_progress
from .fields import _cached_identity, integrate_velocity, resize_field, voxel_to_normalized, warp_image
from .filters import gaussian_smooth, level_shape, resize_image
from .losses import SIMILARITIES, make_similarity
from .regularizers import REGULARIZERS


@dataclass
class InstanceOptimisationConfig:
    """Settings of :func:`optimise_field`.

    Attributes:
        similarity: ``"ncc"``, ``"lncc"``, ``"mind"`` or ``"ngf"`` (see :mod:`.losses`).
        levels: shrink factors of the pyramid, coarse to fine (``(4, 2, 1)``: quarter, half, full grid).
        steps: Adam steps per level (one value for all levels, or one per level).
        learning_rate: Adam step size in voxels of the current level.
        regularizer: ``"diffusion"`` or ``"bending"``.
        weight: regulariser weight λ.
        diffeomorphic: optimise a stationary velocity field and integrate it by scaling and squaring.
        integration_steps: squaring steps when ``diffeomorphic``.
        lncc_radius, mind_radius, mind_dilation: similarity parameters (voxels of the current level).
        lncc_eps: LNCC's variance floor, relative to the product of the two images' mean local variances
            (:func:`~.losses.lncc_loss`): windows of flat, noise-only background, whose local correlation is
            noise, weigh less as it grows.
        smoothing: σ (voxels of the level) of a Gaussian applied to the optimised parameters before use:
            Adam's first steps move every voxel by about ``learning_rate`` whatever its gradient, and the
            smoothing keeps that noise out of the field (ConvexAdam smooths its field the same way).
        final_lr_fraction: within each level the step size falls from ``learning_rate`` to this fraction of
            it (cosine schedule). Adam moves every parameter by about the step size at every step, so a
            constant step leaves the field jittering by about ``learning_rate`` voxels around the optimum;
            the decay lets it settle (1.0 = constant step).
    """

    similarity: str = "ncc"
    levels: Sequence[float] = (4, 2, 1)
    steps: Sequence[int] = (80, 40, 20)
    learning_rate: float = 0.3
    regularizer: str = "diffusion"
    weight: float = 1.0
    diffeomorphic: bool = False
    integration_steps: int = 7
    lncc_radius: int = 2
    lncc_eps: float = 1e-5
    mind_radius: int = 1
    mind_dilation: int = 2
    smoothing: float = 1.0
    final_lr_fraction: float = 1.0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity: expected one of {', '.join(SIMILARITIES)}, got {self.similarity!r}")
        if self.regularizer not in REGULARIZERS:
            raise ValueError(f"regularizer: expected one of {', '.join(REGULARIZERS)}, got {self.regularizer!r}")
        levels = list(self.levels)
        if not levels or any(not float(f) >= 1 for f in levels):
            raise ValueError(f"levels: expected shrink factors >= 1, got {self.levels}")
        steps = self.steps_per_level()
        if any(int(s) != s or s < 0 for s in steps):
            raise ValueError(f"steps: expected integers >= 0, got {self.steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: expected a positive number, got {self.learning_rate}")
        if not 0 < self.final_lr_fraction <= 1:
            raise ValueError(f"final_lr_fraction: expected a number in (0, 1], got {self.final_lr_fraction}")
        if not self.smoothing >= 0:
            raise ValueError(f"smoothing: expected a number >= 0, got {self.smoothing}")
        if not self.lncc_eps > 0:
            raise ValueError(f"lncc_eps: expected a positive number, got {self.lncc_eps}")
        if not self.weight >= 0:
            raise ValueError(f"weight: expected a number >= 0, got {self.weight}")

    def steps_per_level(self) -> list:
        if isinstance(self.steps, (int, float)):
            return [int(self.steps)] * len(list(self.levels))
        steps = list(self.steps)
        if len(steps) != len(list(self.levels)):
            raise ValueError(f"steps: expected one value or one per level ({len(list(self.levels))}), got {self.steps}")
        return steps


@dataclass
class InstanceOptimisationResult:
    """Outcome of :func:`optimise_field`.

    Attributes:
        field: displacement ``(N, d, *S)`` in voxel units of the input grid (integrated when diffeomorphic).
        velocity: the stationary velocity (same layout) when diffeomorphic, else ``None``.
        similarity_before, similarity_after: the similarity's score (higher is better) at full resolution
            for the initial and the final field.
        history: per level, the total loss at its first and last step and the level's wall time.
        seconds: wall time.
        similarity_identity: the score of no displacement (the zero field), from the same full-resolution
            features: ``similarity_before`` when there is no ``initial`` field, else what the images score
            before any registration (a caller starting from a network's field needs no second feature pass).
    """

    field: torch.Tensor
    velocity: Optional[torch.Tensor]
    similarity_before: float
    similarity_after: float
    history: list = field(default_factory=list)
    seconds: float = 0.0
    similarity_identity: float = float("nan")


def _inside(u):
    """1 where ``x + u(x)`` lies inside the grid (a weight, not differentiated)."""
    with torch.no_grad():
        sizes = [int(n) for n in reversed(u.shape[2:])]
        coords = _cached_identity(u.shape[2:], u.device, u.dtype).movedim(-1, 1)
        pos = coords + voxel_to_normalized(u)
        return (pos.abs() <= 1.0 + 1e-6).all(1, keepdim=True).to(u.dtype) if min(sizes) > 1 else torch.ones_like(u[:, :1])


def _weight(fixed_mask, moving_mask, u):
    """Loss weight: fixed mask × moving mask warped by ``u`` × inside-the-moving-image."""
    w = _inside(u) if moving_mask is None else warp_image(moving_mask, u, padding_mode="zeros")
    return w if fixed_mask is None else w * fixed_mask


class _Adam:
    """Adam (Kingma & Ba, 2015; β = (0.9, 0.999), ε = 1e-8) on one tensor, the same arithmetic as
    ``torch.optim.Adam``'s single-tensor path. Written out because constructing ``torch.optim.Adam`` imports
    ``torch._dynamo`` (about 1.2 s of CPU at every start of the command line)."""

    def __init__(self, param: torch.Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.param, self.lr, self.betas, self.eps = param, float(lr), betas, eps
        self.exp_avg = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.exp_avg_sq = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        grad = self.param.grad
        if grad is None:
            return
        beta1, beta2 = self.betas
        self.steps += 1
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = self.lr / (1 - beta1 ** self.steps)
        denom = (self.exp_avg_sq.sqrt() / (1 - beta2 ** self.steps) ** 0.5).add_(self.eps)
        self.param.addcdiv_(self.exp_avg, denom, value=-step_size)


def _displacement(param, config, smooth: bool = False):
    if smooth and config.smoothing > 0:
        param = gaussian_smooth(param, config.smoothing)
    return integrate_velocity(param, config.integration_steps) if config.diffeomorphic else param


def optimise_field(fixed: torch.Tensor, moving: torch.Tensor, config: Optional[InstanceOptimisationConfig] = None,
                   *, initial: Optional[torch.Tensor] = None, fixed_mask: Optional[torch.Tensor] = None,
                   moving_mask: Optional[torch.Tensor] = None, progress=None, cancel=None) -> InstanceOptimisationResult:
    """Optimise a dense field so that ``warp_image(moving, field)`` matches ``fixed``.

    Args:
        fixed, moving: ``(N, 1, *S)`` on the same grid (resample the moving image onto it first), intensities
            normalised by the caller (e.g. robust [0, 1]).
        config: :class:`InstanceOptimisationConfig` (``None``: defaults).
        initial: optional starting field ``(N, d, *S)`` in voxel units (e.g. a network's estimate); with
            ``diffeomorphic`` it is read as a velocity.
        fixed_mask, moving_mask: optional ``(N, 1, *S)`` masks (moving mask on the same grid, in moving-image
            position: it is warped with the image).
        progress, cancel: see :mod:`RegistrationSuiteLib.progress`; cancel raises ``RegistrationCancelled``.

    Returns:
        :class:`InstanceOptimisationResult`.
    """
    config = config or InstanceOptimisationConfig()
    start = time.perf_counter()
    if fixed.shape != moving.shape or fixed.dim() not in (4, 5) or fixed.shape[1] != 1:
        raise ValueError(f"fixed, moving: expected equal shapes (N, 1, *S) in 2D or 3D, got "
                         f"{tuple(fixed.shape)} and {tuple(moving.shape)}")
    d, shape = fixed.dim() - 2, tuple(fixed.shape[2:])
    prog = as_progress(progress, cancel)
    sim = make_similarity(config.similarity, lncc_radius=config.lncc_radius, mind_radius=config.mind_radius,
                          mind_dilation=config.mind_dilation, lncc_eps=config.lncc_eps)
    reg = REGULARIZERS[config.regularizer]
    param = (initial.detach().clone() if initial is not None
             else fixed.new_zeros((fixed.shape[0], d, *shape)))
    with torch.no_grad():  # features at full resolution, computed once (scores and the finest level)
        full = (sim.features(fixed), sim.features(moving))
    before = _full_score(sim, fixed, moving, _displacement(param, config), fixed_mask, moving_mask, full)
    identity = before if initial is None else _full_score(sim, fixed, moving, torch.zeros_like(param), fixed_mask,
                                                          moving_mask, full)
    history, steps = [], config.steps_per_level()
    total = max(1, sum(steps))
    done = 0
    for factor, n_steps in zip(config.levels, steps):
        lshape = level_shape(shape, factor)
        sub = prog.sub(done / total, (done + n_steps) / total)
        param = _optimise_level(sim, reg, config, fixed, moving, fixed_mask, moving_mask, param, lshape,
                                n_steps, sub, history, full if lshape == shape else None)
        done += n_steps
    param = resize_field(param, shape).detach()
    u = _displacement(param, config).detach()
    after = _full_score(sim, fixed, moving, u, fixed_mask, moving_mask, full)
    prog.report(1.0, "instance optimisation done")
    return InstanceOptimisationResult(u, param if config.diffeomorphic else None, before, after, history,
                                      time.perf_counter() - start, similarity_identity=identity)


def score_field(similarity: str, fixed: torch.Tensor, moving: torch.Tensor, u: torch.Tensor, *,
                fixed_mask: Optional[torch.Tensor] = None, moving_mask: Optional[torch.Tensor] = None) -> float:
    """The score (higher is better) of ``similarity`` between ``fixed`` and ``moving`` warped by ``u``, over
    ``fixed_mask`` × warped ``moving_mask`` × overlap (same conventions as :func:`optimise_field`)."""
    return score_fields(similarity, fixed, moving, [u], fixed_mask=fixed_mask, moving_mask=moving_mask)[0]


def score_fields(similarity: str, fixed: torch.Tensor, moving: torch.Tensor, fields: Sequence[torch.Tensor], *,
                 fixed_mask: Optional[torch.Tensor] = None, moving_mask: Optional[torch.Tensor] = None) -> list:
    """:func:`score_field` for several fields of the same pair, the similarity's features (MIND descriptors,
    for ``"mind"``) computed once."""
    sim = make_similarity(similarity)
    with torch.no_grad():
        features = (sim.features(fixed), sim.features(moving))
    return [_full_score(sim, fixed, moving, u, fixed_mask, moving_mask, features) for u in fields]


def _full_score(sim, fixed, moving, u, fixed_mask, moving_mask, features=None) -> float:
    with torch.no_grad():
        ff, fm = features if features is not None else (sim.features(fixed), sim.features(moving))
        return sim.score(ff, warp_image(fm, u), _weight(fixed_mask, moving_mask, u))


def _optimise_level(sim, reg, config, fixed, moving, fixed_mask, moving_mask, param, lshape, n_steps, prog, history,
                    features=None):
    """Adam on the field at the grid ``lshape``; returns the field (level voxel units). ``features``: the
    similarity's features of fixed and moving when ``lshape`` is their own grid (already computed)."""
    t_level = time.perf_counter()
    param = resize_field(param.detach(), lshape)
    if n_steps == 0:
        return param
    with torch.no_grad():
        if features is not None:
            f, m = features
        else:
            f = sim.features(resize_image(fixed, lshape))
            m = sim.features(resize_image(moving, lshape))
        fm = None if fixed_mask is None else resize_image(fixed_mask, lshape, smooth=False)
        mm = None if moving_mask is None else resize_image(moving_mask, lshape, smooth=False)
    param = param.clone().requires_grad_(True)
    opt = _Adam(param, config.learning_rate)
    first = last = float("nan")
    low = config.learning_rate * config.final_lr_fraction
    for step in range(n_steps):
        prog.check_cancel()
        if n_steps > 1 and low < config.learning_rate:
            cos = 0.5 * (1.0 + math.cos(math.pi * step / (n_steps - 1)))
            opt.lr = low + (config.learning_rate - low) * cos
        param.grad = None
        u = _displacement(param, config, smooth=True)
        loss = sim.loss(f, warp_image(m, u), _weight(fm, mm, u)) + config.weight * reg(u)
        loss.backward()
        opt.step()
        last = float(loss.detach())
        if step == 0:
            first = last
        if step % 5 == 0 or step == n_steps - 1:
            prog.report((step + 1) / n_steps, f"level {'x'.join(map(str, lshape))}: step {step + 1}/{n_steps}")
    history.append({"shape": list(lshape), "steps": n_steps, "loss_first": first, "loss_last": last,
                    "seconds": time.perf_counter() - t_level})
    with torch.no_grad():
        return gaussian_smooth(param, config.smoothing) if config.smoothing > 0 else param.detach()

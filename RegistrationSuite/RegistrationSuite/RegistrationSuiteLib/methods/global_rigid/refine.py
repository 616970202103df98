"""Sub-voxel, sub-degree local refinement of search candidates (after the global search).

The search finds shifts to whole voxels and rotations to the spacing of its samples. Here each kept candidate
``q = R (p - a) + c_M`` is refined on the finest level by L-BFGS (torch autograd) over ``R = R_0 Exp(theta)``
and ``a = a_0 + s delta``, maximising the squared-NGF similarity normalised like a correlation coefficient
over the overlap ``w(p) = M_F(p) M_M(T p)``:

    C(R, a) = sum_p w <n_F, R^T n_M(T p)>^2 / sqrt(sum_p w |n_F|^4 * sum_p w |n_M(T p)|^4)      (<= 1)

rather than the paper's mean over the overlap, ``S = sum_p w <n_F, R^T n_M>^2 / sum_p w`` (Eq. 4). ``S``
rewards shrinking the overlap while keeping the edges inside it, so when a rotation cuts the corners off the
moving field of view its maximum moves away from the true pose (by a few degrees on synthetic phantoms with
empty background); ``C`` is maximal (= 1) at the true pose of identical fields. ``S`` is still reported.

Unlike the search (which resamples the moving image and
differentiates it per rotation, as the paper does), the moving NGF is computed once on its own grid and
rotated as a vector field (``grad (M o T) = R^T (grad M) o T``): the two agree up to interpolation, and this
makes every iteration a sparse lookup at the fixed image's edge voxels.
"""

from __future__ import annotations

import contextlib
import sys
from typing import List

import numpy as np
import torch
import torch.nn.functional as F

from ...progress import Progress
from .ngf import gradient_support, normalized_gradient_field, unravel_index
from .search import Candidate, LevelData

# Work per iteration is bounded by subsampling (every k-th point in array order): the objective is a mean
# over many voxels, so a regular subsample changes it little (a 6-parameter fit needs far fewer points), and
# small tensors keep each iteration a few cheap operations (on a busy 2-core machine, waiting for threads in
# many small parallel regions costs more than the arithmetic).
_MAX_EDGE_POINTS = 20_000
_MAX_DENOMINATOR_POINTS = 10_000
# Fixed voxels with |n_F|^2 below this contribute at most this much each; skipping them is exact enough.
_MIN_EDGE = 1e-2


def refine_candidates(
    level: LevelData, candidates: List[Candidate], *, epsilon: float, iterations: int, progress: Progress
) -> List[Candidate]:
    """Refine each candidate on ``level``; returns new candidates (``level = -1``), best first.

    The returned ``score`` is ``C`` and ``angf`` is ``S`` (module docstring) at the refined pose; a candidate
    never gets worse than its starting point under ``C`` (the best iterate is kept).
    """
    problem = _Problem(level, epsilon)
    out = []
    for i, cand in enumerate(candidates):
        progress.check_cancel()
        out.append(problem.refine(cand, iterations))
        progress.report((i + 1) / len(candidates), f"refined {i + 1}/{len(candidates)} candidates")
    return sorted(out, key=lambda c: -c.score)


class _Problem:
    """Precomputed fixed edge points, fixed overlap points and the moving NGF field for one level."""

    def __init__(self, level: LevelData, epsilon: float):
        dev, dt = level.fixed.device, level.fixed.dtype
        self.level, self.dim = level, level.dim
        support = gradient_support(level.fixed_mask)
        ngf = normalized_gradient_field(level.fixed, support, epsilon=epsilon, erode=False)[0]  # (D, *Fa)
        flat = torch.nonzero(((ngf * ngf).sum(0) > _MIN_EDGE).flatten()).squeeze(1)
        step = int(np.ceil(len(flat) / _MAX_EDGE_POINTS))
        flat = flat[::max(1, step)]
        index = unravel_index(flat, ngf.shape[1:]).to(dt)  # (N, D) array order
        axes_f = torch.as_tensor(level.fixed_axes, dtype=dt, device=dev)
        origin_f = torch.as_tensor(level.fixed_origin, dtype=dt, device=dev)
        self.points = origin_f + level.spacing * index @ axes_f.T  # (N, D) mm
        self.normals = ngf.flatten(1)[:, flat].T @ axes_f.T  # (N, D) physical directions
        self.num_scale = float(step)
        inside = torch.nonzero(support[0, 0] > 0)
        stride = max(1, int(np.ceil((len(inside) / _MAX_DENOMINATOR_POINTS) ** (1.0 / self.dim))))
        keep = (inside % stride == 0).all(dim=1)
        self.den_points = origin_f + level.spacing * inside[keep].to(dt) @ axes_f.T
        self.den_scale = float(len(inside)) / max(1, int(keep.sum()))
        mov_support = gradient_support(level.moving[:, 1:2])
        mov_ngf = normalized_gradient_field(level.moving[:, :1], mov_support, epsilon=epsilon, erode=False)
        self.moving_volume = torch.cat([mov_ngf, mov_support], dim=1)  # (1, D + 1, *Ma), index-frame NGF
        self.axes_m = torch.as_tensor(level.moving_axes, dtype=dt, device=dev)
        self.origin_m = torch.as_tensor(level.moving_origin, dtype=dt, device=dev)
        self.center_m = torch.as_tensor(level.moving_center, dtype=dt, device=dev)
        shape_m = torch.as_tensor(level.moving.shape[2:], dtype=dt, device=dev)
        self.scale_m = 2.0 / (shape_m - 1).clamp_min(1.0)

    def _rotation(self, r0: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        if self.dim == 2:
            c, s = torch.cos(theta[0]), torch.sin(theta[0])
            return r0 @ torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
        zero = theta.new_zeros(())
        k = torch.stack([
            torch.stack([zero, -theta[2], theta[1]]),
            torch.stack([theta[2], zero, -theta[0]]),
            torch.stack([-theta[1], theta[0], zero]),
        ])
        return r0 @ torch.linalg.matrix_exp(k)

    def _sample(self, volume: torch.Tensor, points_mm: torch.Tensor, rotation, anchor) -> torch.Tensor:
        """``volume`` (1, C, *Ma) at the moving images of fixed points ``(N, D)``; returns ``(N, C)``."""
        q = (points_mm - anchor) @ rotation.T + self.center_m
        v = (q - self.origin_m) @ self.axes_m / self.level.spacing
        grid = (v * self.scale_m - 1.0).flip(-1).reshape((1, -1) + (1,) * (self.dim - 1) + (self.dim,))
        out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.reshape(volume.shape[1], -1).T

    def similarity(self, rotation: torch.Tensor, anchor: torch.Tensor):
        """``(C, S)`` of the module docstring as scalar tensors (differentiable)."""
        at_edges = self._sample(self.moving_volume, self.points, rotation, anchor)  # (N, D + 1)
        n_m = at_edges[:, :-1] @ self.axes_m.T  # physical directions
        dot = ((self.normals @ rotation.T) * n_m).sum(dim=1)
        numerator = (dot * dot).sum() * self.num_scale
        fixed_energy = (at_edges[:, -1] * (self.normals * self.normals).sum(1) ** 2).sum() * self.num_scale
        dense = self._sample(self.moving_volume, self.den_points, rotation, anchor)
        moving_energy = ((dense[:, :-1] * dense[:, :-1]).sum(1) ** 2).sum() * self.den_scale
        overlap = dense[:, -1].sum() * self.den_scale
        normalised = numerator / torch.sqrt(fixed_energy * moving_energy).clamp_min(1e-12)
        return normalised, numerator / overlap.clamp_min(1.0)

    def refine(self, cand: Candidate, iterations: int) -> Candidate:
        """L-BFGS (strong Wolfe line search) on ``(theta in degrees, delta in voxels)``, both O(1) per step."""
        dt, dev = self.points.dtype, self.points.device
        r0 = torch.as_tensor(cand.rotation, dtype=dt, device=dev)
        a0 = torch.as_tensor(cand.anchor, dtype=dt, device=dev)
        params = torch.zeros((1 if self.dim == 2 else 3) + self.dim, dtype=dt, device=dev, requires_grad=True)
        nrot = params.numel() - self.dim
        best = [-1.0, np.asarray(cand.rotation), np.asarray(cand.anchor)]

        def transform():
            rotation = self._rotation(r0, torch.deg2rad(params[:nrot]))
            return rotation, a0 + self.level.spacing * params[nrot:]

        def closure():
            opt.zero_grad()
            rotation, anchor = transform()
            value = self.similarity(rotation, anchor)[0]
            if float(value.detach()) > best[0]:
                best[:] = [float(value.detach()), rotation.detach().double().cpu().numpy(),
                           anchor.detach().double().cpu().numpy()]
            (-value).backward()
            return -value

        with _without_compiler_import():
            opt = torch.optim.LBFGS([params], lr=1.0, max_iter=max(1, iterations),
                                    max_eval=int(iterations * 1.5) + 1, tolerance_grad=1e-6, tolerance_change=1e-5,
                                    history_size=10, line_search_fn="strong_wolfe")
            if iterations > 0:
                opt.step(closure)
        rotation = _orthonormalise(best[1])
        with torch.no_grad():
            normalised, mean = self.similarity(torch.as_tensor(rotation, dtype=dt, device=dev),
                                               torch.as_tensor(best[2], dtype=dt, device=dev))
        return Candidate(rotation, best[2], float(normalised), -1, angf=float(mean), root=cand.origin)


@contextlib.contextmanager
def _without_compiler_import():
    """Run torch's optimiser bookkeeping without importing its compiler (``torch._dynamo``).

    ``torch.optim.Optimizer`` marks a few methods (``__init__``'s helpers, ``zero_grad``, ...) as "not to be
    compiled"; the marker imports ``torch._dynamo`` on first use, which costs about 1 s of CPU per process
    (measured: ``import torch._dynamo`` after ``import torch``, 1.0 s) and is most of a CLI run's start-up
    beyond torch itself. Nothing here is compiled, so inside this block those methods are called directly
    (the marker's own cache attribute is pre-filled with the undecorated method), and the attribute is removed
    again on exit, so code elsewhere in the process that compiles an optimiser gets torch's behaviour. No-op
    if the compiler is already imported or torch's marker has another shape.
    """
    patched = []
    if "torch._dynamo" not in sys.modules:
        for name in dir(torch.optim.Optimizer):
            wrapper = getattr(torch.optim.Optimizer, name, None)
            fn = getattr(wrapper, "__wrapped__", None)
            marker = getattr(getattr(wrapper, "__code__", None), "co_qualname", "")  # functools.wraps keeps it
            if (callable(fn) and marker.startswith("_disable_dynamo.")
                    and getattr(fn, "__dynamo_disable", None) is None):
                fn.__dynamo_disable = fn
                patched.append(fn)
    try:
        yield
    finally:
        for fn in patched:
            if getattr(fn, "__dynamo_disable", None) is fn:
                del fn.__dynamo_disable


def _orthonormalise(r: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(r)
    out = u @ vt
    if np.linalg.det(out) < 0:
        u[:, -1] *= -1
        out = u @ vt
    return out

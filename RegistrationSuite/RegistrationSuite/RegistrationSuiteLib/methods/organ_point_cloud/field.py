"""Dense fixed→moving displacement field from a MO-BCPD fit (Gaussian-process interpolation, paper eq. 5–6).

The EM deforms the fixed points Y onto the moving points X: T(y) = s R (y + v(y)) + t gives, for a fixed
position y, the corresponding moving position. The field stored here is u(p) = T(p) − p on an axis-aligned
grid covering the fixed points (plus a margin), so ``sitk.DisplacementFieldTransform`` maps **fixed points to
moving points** (LPS mm), as every registration transform of this package does. Outside the grid the
displacement is zero (identity), so the margin should cover the region of interest.

v(p) is the GP mean v(p) = G(p, Y) W with the kernel row of p's organ. A grid node takes the organ label of
the nearest fixed surface point (found with a Euclidean distance transform of the rasterised points), so
with S = I neighbouring organs slide independently; organs with identical kernel rows (same Λ, B, S row:
e.g. every organ when S = 1 and Λ, B are shared) form one class and need no label map.
The GP mean is smooth on the scale of B, so it is evaluated (float32 kernel blocks) on a coarser lattice (spacing about
B_min/3, an integer multiple of the output spacing) and brought to the output grid by tensor-product cubic
spline interpolation; the similarity part is exact at every node. With the per-organ pre-alignment
(:mod:`.organ_prealign`) a node of organ l is first moved by A_l (the organs' own similarity), then v is
evaluated there: u(p) = s R (A_l(p) + v(A_l(p))) + t − p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from ...geometry import Grid
from .bcpd import BCPDFit
from .config import LabelModel
from .kernel import KernelParams, gp_interpolate
from .organ_prealign import apply_organ_affine

_COARSE_PAD = 2  # coarse nodes beyond a class's box on each side, for the spline ends


@dataclass
class FieldInfo:
    """Diagnostics of the dense field (JSON-able through :meth:`to_dict`)."""

    grid: Grid
    classes: int
    coarse_factor: list
    evaluated_nodes: int

    def to_dict(self) -> dict:
        return {"grid": self.grid.to_dict(), "label_classes": self.classes, "coarse_factor": self.coarse_factor,
                "gp_evaluated_nodes": self.evaluated_nodes}


def field_grid(points: np.ndarray, spacing: float, margin: float) -> Grid:
    """Axis-aligned grid (identity direction) covering ``points (N, 3)`` mm plus ``margin`` mm per side."""
    lo = points.min(axis=0) - margin
    hi = points.max(axis=0) + margin
    size = tuple(int(math.ceil((h - l) / spacing)) + 1 for l, h in zip(lo, hi))
    return Grid(size=size, spacing=(float(spacing),) * 3, origin=tuple(float(v) for v in lo), direction=np.eye(3))


def displacement_field(fit: BCPDFit, model: LabelModel, fixed_points: np.ndarray, fixed_labels: np.ndarray,
                       grid: Grid, *, budget_bytes: float, device="cpu"):
    """Build the fixed→moving ``sitk.DisplacementFieldTransform`` of a fit.

    Args:
        fit: MO-BCPD result (control points, GP weights, s, R, t; original LPS frame).
        model: per-label parameters. fixed_points: ``(P, 3)`` all fixed surface points (mm), used for the
            nearest-organ label map; fixed_labels ``(P,)`` their internal label ids.
        grid: output grid (see :func:`field_grid`).

    Returns:
        ``(transform, FieldInfo)``.
    """
    # With per-organ pre-alignment every organ has its own A_l, so each organ is its own class.
    classes = model.field_classes() if fit.organ_affine is None else np.arange(model.n_labels)
    node_class, node_label = None, None
    if classes.max() > 0:
        node_label = _nearest_label_map(grid, fixed_points, fixed_labels)
        node_class = classes[node_label]
    v = np.zeros(tuple(reversed(grid.size)) + (3,))  # (z, y, x, 3)
    # float32 blocks: the GP weights are bounded (see update_deformation), so sums of ~10³ terms keep
    # ~1e-4 mm accuracy at half the cost; the weights themselves and the accumulation stay float64.
    params = KernelParams.from_model(model, torch.float32, device)
    factors, evaluated = [], 0
    for c in range(int(classes.max()) + 1):
        label = int(np.nonzero(classes == c)[0][0])
        mask = None if node_class is None else node_class == c
        if mask is not None and not mask.any():
            continue
        factor = _coarse_factor(model, label, grid.spacing[0])
        evaluated += _fill_class(v, mask, grid, factor, label, fit, params, budget_bytes, device)
        factors.append(factor)
    disp = _add_similarity(v, grid, fit, node_label)
    image = sitk.GetImageFromArray(disp, isVector=True)
    image.SetOrigin(grid.origin)
    image.SetSpacing(grid.spacing)
    image.SetDirection(tuple(grid.direction.ravel()))
    transform = sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64))
    return transform, FieldInfo(grid, int(classes.max()) + 1, factors, evaluated)


def _nearest_label_map(grid: Grid, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(z, y, x)`` internal label of the nearest fixed point of every node (to one node's precision)."""
    from scipy import ndimage

    shape = tuple(reversed(grid.size))
    idx = np.rint((points - np.asarray(grid.origin)) / np.asarray(grid.spacing)).astype(np.int64)
    idx = np.clip(idx, 0, np.asarray(grid.size) - 1)
    seeds = np.full(shape, -1, dtype=np.int64)
    seeds[idx[:, 2], idx[:, 1], idx[:, 0]] = labels
    _, nearest = ndimage.distance_transform_edt(seeds < 0, return_distances=True, return_indices=True)
    return seeds[nearest[0], nearest[1], nearest[2]]


def _coarse_factor(model: LabelModel, label: int, spacing: float) -> int:
    """Integer ratio of GP-evaluation spacing to output spacing: about min coupled bandwidth / 3."""
    coupled = np.nonzero(model.coherence[label] != 0)[0]
    bandwidth = float(np.sqrt(model.beta_mm[label] * model.beta_mm[coupled]).min())
    return max(1, int(bandwidth / 3.0 // spacing))


def _fill_class(v, mask, grid: Grid, factor: int, label: int, fit: BCPDFit, params, budget, device) -> int:
    """Write the GP displacement of organ ``label``'s kernel row into ``v`` where ``mask`` (all if None)."""
    shape = v.shape[:3]
    if mask is None:
        lo, hi = np.zeros(3, dtype=np.int64), np.asarray(shape) - 1
    else:
        nz = np.nonzero(mask)
        lo, hi = np.array([a.min() for a in nz]), np.array([a.max() for a in nz])
    if factor == 1:
        box_nodes = [np.arange(lo[i], hi[i] + 1) for i in range(3)]
        values = _evaluate(box_nodes, grid, label, fit, params, budget, device)
    else:
        coarse = [np.arange(lo[i] // factor - _COARSE_PAD, -(-hi[i] // factor) + _COARSE_PAD + 1) * factor
                  for i in range(3)]
        values = _upsample(_evaluate(coarse, grid, label, fit, params, budget, device), coarse, lo, hi)
    box = tuple(slice(lo[i], hi[i] + 1) for i in range(3))
    if mask is None:
        v[box] = values
    else:
        sub = mask[box]
        v[box][sub] = values[sub]
    return int(np.prod([len(c) for c in (box_nodes if factor == 1 else coarse)]))


def _evaluate(nodes_zyx, grid: Grid, label: int, fit: BCPDFit, params, budget, device) -> np.ndarray:
    """GP mean at the lattice ``nodes_zyx`` (three index arrays, z, y, x), returns ``(nz, ny, nx, 3)``."""
    kz, ky, kx = np.meshgrid(*nodes_zyx, indexing="ij")
    ijk = np.stack([kx.ravel(), ky.ravel(), kz.ravel()], axis=1).astype(np.float64)
    centre = fit.control_points.mean(axis=0)
    pts = np.asarray(grid.origin) + ijk * np.asarray(grid.spacing)  # identity direction
    pts = apply_organ_affine(pts, np.full(pts.shape[0], label), fit.organ_affine) - centre
    t = dict(dtype=torch.float64, device=device)
    out = gp_interpolate(torch.as_tensor(pts, **t), torch.full((pts.shape[0],), label, dtype=torch.int64, device=device),
                         torch.as_tensor(fit.control_points - centre, **t),
                         torch.as_tensor(fit.control_labels, dtype=torch.int64, device=device),
                         torch.as_tensor(fit.w, **t), params, budget)
    return out.cpu().numpy().reshape(kz.shape + (3,))


def _upsample(values: np.ndarray, coarse, lo, hi) -> np.ndarray:
    """Tensor-product cubic spline from coarse node indices ``coarse`` to fine indices ``lo..hi``."""
    from scipy.interpolate import CubicSpline

    out = values
    for axis in range(3):
        fine = np.arange(lo[axis], hi[axis] + 1)
        matrix = CubicSpline(coarse[axis], np.eye(len(coarse[axis])), axis=0)(fine)  # (n_fine, n_coarse)
        out = np.moveaxis(np.tensordot(matrix, out, axes=([1], [axis])), 0, axis)
    return out


def _add_similarity(v: np.ndarray, grid: Grid, fit: BCPDFit, node_label=None) -> np.ndarray:
    """u(p) = s R (q + v) + t − p at every node, q = A_l(p) with l = ``node_label`` (``(z, y, x)``; organ 0
    everywhere when None) or q = p without per-organ pre-alignment; ``(z, y, x, 3)`` float64."""
    sim = fit.similarity
    a = sim.s * sim.R
    axes = [grid.origin[i] + grid.spacing[i] * np.arange(grid.size[i]) for i in range(3)]
    if fit.organ_affine is not None:
        # s R (A_l p + v) + t − p = s R v + [(s R a_l − I) p + s R b_l + t]: v absorbs the per-organ offset
        zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
        p = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3)
        labels = np.zeros(p.shape[0], dtype=np.int64) if node_label is None else node_label.reshape(-1)
        q = apply_organ_affine(p, labels, fit.organ_affine).reshape(v.shape)
        return (q + v) @ a.T + sim.t - p.reshape(v.shape)
    disp = v @ a.T
    affine = a - np.eye(3)
    disp += sim.t
    disp += (axes[0][:, None] * affine[:, 0])[None, None, :, :]
    disp += (axes[1][:, None] * affine[:, 1])[None, :, None, :]
    disp += (axes[2][:, None] * affine[:, 2])[:, None, None, :]
    return disp

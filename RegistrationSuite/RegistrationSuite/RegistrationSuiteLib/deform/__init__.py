"""Dimension-generic (2D and 3D) dense deformation toolkit in torch, shared by the deformable methods.

Conventions (every function in this package follows them):

- **Images** are tensors ``(N, C, *S)`` with ``S = (H, W)`` in 2D or ``(D, H, W)`` in 3D: the NumPy array
  order of ``sitk.GetArrayFromImage`` (z, y, x). Spatial axes are called x (last tensor axis), y, z.
- **Displacement fields** ``u`` are tensors ``(N, d, *S)`` in **voxel units of the grid they live on**, with
  channel ``c`` the displacement along ITK index axis ``c``: channel 0 = x (last tensor axis), 1 = y, 2 = z.
  This is the order of ``grid_sample``'s last grid axis and of ITK indices, so
  ``phys = direction @ (spacing * u)`` (:func:`field_to_physical`).
- **Warping** ``warp_image(image, u)(x) = image(x + u(x))``: the field maps every point of the *fixed* grid
  to the point of the *moving* image to sample (the ITK fixed → moving convention), evaluated with
  ``grid_sample(..., align_corners=True)``: voxel 0 and voxel ``n - 1`` sit exactly at normalised -1 and +1,
  so voxel units convert to normalised units by ``2 / (n - 1)`` per axis and fields resize exactly between
  grids that share their corner voxels (:func:`resize_field`, :func:`level_shape`).
- **Composition** ``compose_fields(outer, inner)`` is "``inner`` first, then ``outer``":
  ``warp_image(warp_image(image, outer), inner) == warp_image(image, compose_fields(outer, inner))``.
- Losses return a scalar to **minimise**; similarities used for reporting are "higher is better".

Modules: :mod:`.fields` (grids, warping, integration, composition, Jacobians), :mod:`.filters` (Gaussian and
box smoothing, pyramids), :mod:`.losses` (NCC, local NCC, MIND-SSC, NGF), :mod:`.regularizers` (diffusion,
bending) and :mod:`.optimize` (instance optimisation: Adam, coarse to fine, masks, progress and cancel).
"""

from .fields import (
    compose_fields,
    field_to_physical,
    folding_fraction,
    identity_grid,
    integrate_velocity,
    jacobian_determinant,
    normalized_to_voxel,
    resize_field,
    voxel_to_normalized,
    warp_image,
)
from .filters import box_filter, gaussian_smooth, level_shape, resize_image
from .losses import SIMILARITIES, Similarity, lncc_loss, make_similarity, mind_loss, mind_ssc, ncc_loss, ngf_loss
from .optimize import InstanceOptimisationConfig, InstanceOptimisationResult, optimise_field, score_field, score_fields
from .regularizers import REGULARIZERS, bending_energy, diffusion_energy

__all__ = [
    "REGULARIZERS",
    "SIMILARITIES",
    "InstanceOptimisationConfig",
    "InstanceOptimisationResult",
    "Similarity",
    "bending_energy",
    "box_filter",
    "compose_fields",
    "diffusion_energy",
    "field_to_physical",
    "folding_fraction",
    "gaussian_smooth",
    "identity_grid",
    "integrate_velocity",
    "jacobian_determinant",
    "level_shape",
    "lncc_loss",
    "make_similarity",
    "mind_loss",
    "mind_ssc",
    "ncc_loss",
    "ngf_loss",
    "normalized_to_voxel",
    "optimise_field",
    "resize_field",
    "resize_image",
    "score_field",
    "score_fields",
    "voxel_to_normalized",
    "warp_image",
]

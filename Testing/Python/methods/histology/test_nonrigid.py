"""Non-rigid stage: a known smooth deformation is recovered better than by the affine stage alone, in the
fixed → moving direction, without folding."""

import numpy as np
import pytest
from scipy import ndimage

from RegistrationSuiteLib.methods.histology import HistologyConfig, register_histology, transfer_landmarks
from RegistrationSuiteLib.methods.histology.slides import from_array

from .conftest import DAB_OD, HE_OD, stain, tissue_density

AMPLITUDE = 5.0  # pixels


def _bump(x, y, size):
    """Fixed → moving displacement (dx, dy) in pixels: a smooth local swirl that no affine map can express."""
    cx, cy, r = 0.42 * size, 0.55 * size, 0.16 * size
    g = AMPLITUDE * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    return g * (y - cy) / r, -g * (x - cx) / r


def _warped(density):
    """moving(x + u(x)) = fixed(x), built by sampling fixed at the inverse (solved by fixed-point iteration)."""
    size = density.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    sx, sy = xx.copy(), yy.copy()
    for _ in range(30):  # find s with s + u(s) = (x, y)
        dx, dy = _bump(sx, sy, size)
        sx, sy = xx - dx, yy - dy
    return ndimage.map_coordinates(density, [sy, sx], order=1)


def _known_warp_case(size=256):
    """H&E fixed, DAB moving under the known bump warp; tissue points in fixed and their true moving positions."""
    d = tissue_density(size, seed=3)
    fixed = from_array(stain(d, HE_OD), name="fixed")
    moving = from_array(stain(_warped(d), DAB_OD, 1.2), name="moving")
    yy, xx = np.mgrid[70:190:12, 50:170:12]
    pts = np.stack([xx.ravel(), yy.ravel()], 1).astype(float)
    pts = pts[d[pts[:, 1].astype(int), pts[:, 0].astype(int)] > 0.2]
    dx, dy = _bump(pts[:, 0], pts[:, 1], size)
    return fixed, moving, pts, pts + np.stack([dx, dy], 1)


@pytest.mark.slow
def test_instance_optimisation_recovers_smooth_warp():
    fixed, moving, pts, truth = _known_warp_case()
    base = dict(working_size=256, search_size=96, mirror="no")
    affine = register_histology(fixed, moving, HistologyConfig(io_steps=0, **base))
    full = register_histology(fixed, moving, HistologyConfig(io_steps=60, io_smoothness=1.0, **base))
    err_affine = np.linalg.norm(transfer_landmarks(affine, pts) - truth, axis=1).mean()
    err_full = np.linalg.norm(transfer_landmarks(full, pts) - truth, axis=1).mean()
    assert err_affine > 1.5  # the warp is not affine
    assert err_full < 0.6 * err_affine, (err_affine, err_full)
    io = full.diagnostics["instance_optimisation"]
    assert io["folding_fraction"] < 1e-3 and io["similarity_after"] > io["similarity_before"]


@pytest.mark.slow
@pytest.mark.parametrize("similarity", ["mind", "lncc"])
def test_instance_optimisation_on_its_own_finer_grid(similarity):
    """The non-rigid stage runs on ``io_size`` (finer than the affine stage's 128-pixel grid): the field lives
    on that grid and the known non-affine warp is recovered, with the stain changed between the slides."""
    fixed, moving, pts, truth = _known_warp_case()
    base = dict(working_size=128, search_size=96, mirror="no", io_similarity=similarity)
    affine = register_histology(fixed, moving, HistologyConfig(io_steps=0, **base))
    full = register_histology(fixed, moving, HistologyConfig(io_steps=60, io_size=256, **base))
    assert affine.fixed_grid.size[:2] == (128 + 4, 128 + 4)  # the affine-only field: working grid + 2 px pad
    assert full.fixed_grid.size[:2] == (256 + 4, 256 + 4)  # the non-rigid field: the io_size grid
    assert full.diagnostics["instance_optimisation"]["grid_hw"] == [256, 256]
    err_affine = np.linalg.norm(transfer_landmarks(affine, pts) - truth, axis=1).mean()
    err_full = np.linalg.norm(transfer_landmarks(full, pts) - truth, axis=1).mean()
    assert err_affine > 1.5
    assert err_full < 0.5 * err_affine, (err_affine, err_full)

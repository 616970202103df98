"""register_global_rigid: known-answer recovery in 2D and 3D (also with inverted contrast and with anisotropic,
oblique and left-handed grids), determinism, failure and cancellation."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from gr_phantoms import corner_error, make_grid, rigid, rotation, sample

from RegistrationSuiteLib.errors import InputError, RegistrationCancelled, RegistrationFailed
from RegistrationSuiteLib.methods.global_rigid import GlobalRigidConfig, register_global_rigid
from RegistrationSuiteLib.methods.global_rigid.rotations import rotation_distance_deg

# Small settings so each 3D case takes a few seconds on 2 CPU cores (defaults target 151 mm brain cubes).
CONFIG_3D = dict(level_spacing_mm=(9.0, 4.5, 3.0), blur_mm=(6.0, 3.0, 1.5), num_rotations=(300, 40, 16),
                 perturbation_deg=(180.0, 15.0, 5.0), keep=(4, 2, 2), refine_iterations=40, device="cpu")
CONFIG_2D = dict(level_spacing_mm=(6.0, 3.0, 1.5), blur_mm=(4.0, 2.0, 1.0), num_rotations=(72, 24, 12),
                 perturbation_deg=(180.0, 8.0, 3.0), keep=(4, 2, 2), refine_iterations=15, device="cpu")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: these small volumes gain little from two, and on a shared 2-core machine
    OpenMP threads waiting for each other cost several times the work itself."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _case_3d(invert=False):
    cm, cf = np.array([10.0, -5.0, 20.0]), np.array([-30.0, 12.0, 5.0])
    fgrid = make_grid((48, 48, 48), (3.0, 3.0, 3.0), centre=cf)
    mgrid = make_grid((48, 48, 48), (3.0, 3.0, 3.0), centre=cm)
    truth = rigid(rotation((1.0, 2.0, -1.0), 40.0), cf, cm - cf + np.array([8.0, -12.0, 6.0]))
    return sample(fgrid, cm, truth), sample(mgrid, cm, invert=invert), truth


def _case_2d():
    cm, cf = np.array([4.0, -3.0]), np.array([-20.0, 15.0])
    fgrid = make_grid((120, 100), (1.2, 1.2), centre=cf)
    mgrid = make_grid((110, 110), (1.3, 1.3), centre=cm)
    truth = rigid(rotation(None, 70.0), cf, cm - cf + np.array([12.0, -9.0]))
    return sample(fgrid, cm, truth), sample(mgrid, cm), truth


def _check(result, fixed, truth, max_mm, max_deg):
    estimate = result.fixed_to_moving_matrix
    d = fixed.GetDimension()
    assert corner_error(fixed, estimate, truth) < max_mm
    assert rotation_distance_deg(estimate[:d, :d], truth[:d, :d]) < max_deg


@pytest.mark.parametrize("invert", [False, True], ids=["same-contrast", "inverted-contrast"])
def test_recovers_oblique_3d_rotation_and_shift(invert):
    fixed, moving, truth = _case_3d(invert)
    result = register_global_rigid(fixed, moving, GlobalRigidConfig(**CONFIG_3D))
    _check(result, fixed, truth, max_mm=3.0, max_deg=2.0)  # one 3 mm voxel, 2 degrees
    assert isinstance(result.transform, sitk.Euler3DTransform)
    np.testing.assert_allclose(result.transform.GetCenter(), fixed.TransformContinuousIndexToPhysicalPoint(
        [23.5, 23.5, 23.5]), atol=1e-6)
    assert 0 < result.score <= 1 and 0 <= result.confidence <= 1
    assert {"pyramid", "search_level_1", "refine", "total"} <= set(result.timings)
    assert len(result.diagnostics["levels"]) == 3 and result.diagnostics["candidates"]


def test_physical_space_with_anisotropic_oblique_and_left_handed_grids():
    cm, cf = np.array([5.0, 8.0, -12.0]), np.array([-14.0, 3.0, 22.0])
    fdir = rotation((0.3, 1.0, 0.2), 25.0)
    mdir = rotation((1.0, -0.5, 0.7), -35.0) @ np.diag([1.0, 1.0, -1.0])  # det -1: a left-handed grid
    fgrid = make_grid((40, 44, 30), (3.2, 2.9, 4.5), direction=fdir, centre=cf)
    mgrid = make_grid((50, 38, 42), (2.6, 3.6, 3.1), direction=mdir, centre=cm)
    truth = rigid(rotation((-0.4, 0.3, 1.0), 55.0), cf, cm - cf + np.array([-6.0, 10.0, 4.0]))
    fixed, moving = sample(fgrid, cm, truth), sample(mgrid, cm)
    result = register_global_rigid(fixed, moving, GlobalRigidConfig(**CONFIG_3D))
    _check(result, fixed, truth, max_mm=3.5, max_deg=2.0)


def test_recovers_2d_rotation_and_shift_deterministically_with_progress():
    fixed, moving, truth = _case_2d()
    reports = []
    result = register_global_rigid(fixed, moving, GlobalRigidConfig(seed=3, **CONFIG_2D),
                                   progress=lambda f, msg: reports.append(f))
    _check(result, fixed, truth, max_mm=1.2, max_deg=1.0)  # one 1.2 mm pixel
    assert isinstance(result.transform, sitk.Euler2DTransform)
    assert reports[-1] == 1.0 and all(b >= a for a, b in zip(reports, reports[1:]))
    # The transform maps fixed -> moving: resampling the moving image onto the fixed grid aligns it.
    aligned = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, result.transform, sitk.sitkLinear, 0.0))
    assert np.corrcoef(aligned.ravel(), sitk.GetArrayFromImage(fixed).ravel())[0, 1] > 0.97
    again = register_global_rigid(fixed, moving, GlobalRigidConfig(seed=3, **CONFIG_2D))
    assert np.array_equal(again.fixed_to_moving_matrix, result.fixed_to_moving_matrix)


def test_no_possible_overlap_raises_registration_failed():
    grid = make_grid((100, 100), (1.0, 1.0), centre=(0.0, 0.0))
    fixed, moving = sample(grid, (0.0, 0.0)), sample(grid, (0.0, 0.0))
    bar = np.zeros((100, 100), np.uint8)
    bar[48:53, 20:80] = 1  # 60 x 5 pixels
    square = np.zeros((100, 100), np.uint8)
    square[38:62, 38:62] = 1  # 24 x 24 pixels: no rotation puts 90 % of the bar's pixels inside it
    masks = [sitk.GetImageFromArray(m) for m in (bar, square)]
    for m in masks:
        m.CopyInformation(grid)
    cfg = GlobalRigidConfig(level_spacing_mm=(2.0, 1.0), blur_mm=(1.0, 0.5), num_rotations=(36, 8),
                            perturbation_deg=(180.0, 5.0), keep=(2, 1), min_overlap=0.9, device="cpu")
    with pytest.raises(RegistrationFailed, match="minimum overlap"):
        register_global_rigid(fixed, moving, cfg, fixed_mask=masks[0], moving_mask=masks[1])


def test_cancel_raises_registration_cancelled():
    fixed, moving, _ = _case_2d()
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(RegistrationCancelled):
        register_global_rigid(fixed, moving, GlobalRigidConfig(**CONFIG_2D), cancel=cancel)
    assert len(calls) == 3


def test_dimension_mismatch_and_bad_config_raise_input_error():
    fixed, _, _ = _case_2d()
    moving = make_grid((8, 8, 8), (1.0, 1.0, 1.0)) + 1.0
    moving[2, 2, 2] = 5.0
    with pytest.raises(InputError, match="moving: expected a 2D image"):
        register_global_rigid(fixed, moving, GlobalRigidConfig(**CONFIG_2D))
    with pytest.raises(InputError, match="config"):
        register_global_rigid(fixed, fixed, config={"seed": 1})
    with pytest.raises(InputError, match="level_spacing_mm"):
        register_global_rigid(fixed, fixed, GlobalRigidConfig(level_spacing_mm=(40.0,), blur_mm=(1.0,),
                                                               num_rotations=(4,), perturbation_deg=(180.0,),
                                                               keep=(1,), device="cpu"))

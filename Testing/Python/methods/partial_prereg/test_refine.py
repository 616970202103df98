"""Overlap-restricted rigid refinement: recovers a small known misalignment for each metric, also when the
moving image is a partial crop (only the overlap counts), and never returns a worse result."""

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.geometry import Grid, apply_affine
from RegistrationSuiteLib.methods.partial_prereg.refine import evaluate_metric, overlap_mask, refine_rigid
from RegistrationSuiteLib.sample_data import known_rigid_case, load_sample


@pytest.fixture(scope="module")
def case():
    fixed, truth = known_rigid_case(load_sample("T1"), angle_deg=6.0, translation_mm=(5.0, -4.0, 3.0))
    return fixed, truth


def _error(fixed, m, truth):
    c = Grid.from_image(fixed).corners()
    return np.linalg.norm(apply_affine(m, c) - apply_affine(truth, c), axis=1).mean()


@pytest.mark.parametrize("metric,modality", [("mi", "T2"), ("mse", "T1"), ("nmi", "T2")])
def test_recovers_known_misalignment(case, metric, modality):
    fixed, truth = case
    out = refine_rigid(fixed, load_sample(modality), np.eye(4), metric=metric,
                       iterations=40 if metric == "nmi" else 100, levels=((4, 2.0), (2, 1.0)))
    assert _error(fixed, np.eye(4), truth) > 10
    assert _error(fixed, out.fixed_to_moving, truth) < 2.5
    assert out.improved and out.metric == metric and 0 < out.overlap_after <= 1


def test_partial_moving_image_only_overlap_counts(case):
    fixed, truth = case
    t2 = load_sample("T2")
    crop = t2[10:40, 15:55, 20:50]  # a 60 x 80 x 60 mm part of the brain
    out = refine_rigid(fixed, crop, np.eye(4), metric="mi", levels=((2, 1.0), (1, 0.0)))
    c = Grid.from_image(crop).corners()  # error over the crop's own extent (the anchor error idea)
    inv = np.linalg.inv
    err = np.linalg.norm(apply_affine(inv(out.fixed_to_moving), c) - apply_affine(inv(truth), c), axis=1).mean()
    assert err < 3.0
    assert out.overlap_after < 0.5  # the crop covers a minority of the fixed image


def test_overlap_mask_and_metric_outside(case):
    fixed, _ = case
    far = np.eye(4)
    far[:3, 3] = 1000.0
    assert not np.any(sitk.GetArrayFromImage(overlap_mask(fixed, load_sample("T2"), far)))
    assert np.isnan(evaluate_metric(fixed, load_sample("T2"), far, "mi"))
    with pytest.raises(InputError, match="do not overlap"):
        refine_rigid(fixed, load_sample("T2"), far)
    with pytest.raises(InputError, match="expected 'mse', 'mi' or 'nmi'"):
        refine_rigid(fixed, load_sample("T2"), np.eye(4), metric="ncc")


def test_overlap_on_constant_fixed_voxels_is_nan_not_an_itk_error():
    """A candidate whose overlap covers only constant fixed voxels (background): ITK's Mattes MI refuses a zero
    intensity range ("zero-valued spacing"); the metric is NaN and the refinement leaves the start unchanged, so
    the caller can rank such a candidate last instead of crashing."""
    rng = np.random.default_rng(0)
    arr = np.zeros((40, 40, 60), np.float32)
    arr[:, :, 30:] = rng.random((40, 40, 30)).astype(np.float32)  # x < 30 is empty background
    fixed = sitk.GetImageFromArray(arr)
    fixed.SetSpacing((1.5, 1.0, 1.2))
    moving = sitk.GetImageFromArray(rng.random((10, 12, 14)).astype(np.float32))
    start = np.eye(4)
    start[0, 3] = -5.0  # fixed x in [5, 18] mm: inside the background
    assert np.isnan(evaluate_metric(fixed, moving, start, "mi"))
    out = refine_rigid(fixed, moving, start, metric="mi", levels=((2, 1.0),))
    assert np.isnan(out.before) and np.array_equal(out.fixed_to_moving, start)
    assert np.isfinite(evaluate_metric(fixed, moving, start, "mse"))  # MSE is defined on a constant region

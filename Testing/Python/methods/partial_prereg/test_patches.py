"""Patches: normalisation, the foreground rule, sampling geometry (centres in physical space), errors."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.methods.partial_prereg.patches import (
    IntensityConfig,
    box_sums,
    normalize,
    rotated_patch_grid,
    sample_patches,
)
from RegistrationSuiteLib.methods.partial_prereg.template import load_template
from RegistrationSuiteLib.sample_data import load_sample


@pytest.fixture(scope="module")
def template():
    return load_template()


def test_intensity_modes():
    mr = IntensityConfig()
    values = np.r_[np.zeros(500), np.linspace(10, 200, 500)]
    lo, hi = mr.value_range(values)
    assert lo == 0.0 and 195 < hi <= 200  # non-negative MR: background is 0
    assert mr.value_range(values - 50)[0] < 0  # signed data: lower percentile
    ct = IntensityConfig(mode="window")
    assert ct.value_range(values) == (-500.0, 3000.0)
    np.testing.assert_allclose(normalize(np.array([-1000.0, -500.0, 1250.0, 5000.0]), -500, 3000), [-0.5, -0.5, 0, 0.5])
    assert IntensityConfig.from_dict(mr.to_dict()) == mr
    with pytest.raises(InputError, match="intensity mode"):
        IntensityConfig(mode="zscore")


def test_box_sums_match_brute_force():
    mask = np.random.default_rng(0).random((9, 10, 11)) > 0.5
    s = box_sums(mask, 4)
    assert s.shape == (6, 7, 8)
    assert s[2, 3, 4] == mask[2:6, 3:7, 4:8].sum() and s[0, 0, 0] == mask[:4, :4, :4].sum()


def test_identity_grid_equals_slicing_and_rotation_moves_samples():
    vol = np.random.default_rng(1).random((30, 31, 32)).astype(np.float32)
    centre = torch.tensor([[6 + 7.5, 5 + 7.5, 4 + 7.5]])  # corner (z, y, x) = (4, 5, 6)
    grid = rotated_patch_grid(centre, torch.eye(3)[None], vol.shape)
    patch = F.grid_sample(torch.from_numpy(vol)[None, None], grid, align_corners=True)[0, 0].numpy()
    np.testing.assert_allclose(patch, vol[4:20, 5:21, 6:22], atol=1e-5)
    quarter = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # 90° about z
    rotated = F.grid_sample(torch.from_numpy(vol)[None, None], rotated_patch_grid(centre, quarter, vol.shape),
                            align_corners=True)[0, 0].numpy()
    np.testing.assert_allclose(rotated, np.rot90(vol[4:20, 5:21, 6:22], k=1, axes=(1, 2)), atol=1e-5)


def test_sampled_centres_are_physical_patch_centres(template):
    moving = load_sample("T1")
    ps = sample_patches(moving, template, IntensityConfig(), num_patches=30, min_foreground_fraction=0.6,
                        min_patches=20, rng=np.random.default_rng(0))
    assert ps.patches.shape == (30, 16, 16, 16) and ps.patches.min() >= -0.5 and ps.patches.max() <= 0.5
    assert np.all(ps.foreground_fraction >= 0.6) and ps.num_candidates > 1000
    # resampling the moving image around each centre along the template axes reproduces the patch
    ref = sitk.Image([16] * 3, sitk.sitkFloat32)
    ref.SetSpacing([template.spacing_mm] * 3)
    ref.SetDirection(template.image.GetDirection())
    d = template.direction * template.spacing_mm
    assert min(moving.GetSpacing()) > template.spacing_mm  # 2 mm sample: no anti-aliasing before resampling
    for k in range(3):
        ref.SetOrigin((ps.centers_mm[k] - d @ np.full(3, 7.5)).tolist())
        raw = sitk.GetArrayFromImage(sitk.Resample(moving, ref, sitk.Transform(), sitk.sitkLinear, 0.0))
        np.testing.assert_allclose(normalize(raw, *ps.value_range), ps.patches[k], atol=2e-3)


def test_moving_too_small(template):
    small = sitk.Image([10, 40, 40], sitk.sitkFloat32) + 1
    with pytest.raises(InputError, match="too small for 16³ patches at template scale"):
        sample_patches(small, template, IntensityConfig(), num_patches=10, min_foreground_fraction=0.6,
                       min_patches=6, rng=np.random.default_rng(0))


def test_too_few_foreground_patches(template):
    arr = np.zeros((40, 40, 40), np.float32)
    arr[18:22, 18:22, 18:22] = 100.0  # a 4-voxel speck in an empty volume
    with pytest.raises(InputError, match="too few foreground patches: 0 patch positions"):
        sample_patches(sitk.GetImageFromArray(arr), template, IntensityConfig(), num_patches=10,
                       min_foreground_fraction=0.6, min_patches=6, rng=np.random.default_rng(0))

"""RANSAC: known rigid transform recovered with 40 % outliers; proper rotations only; no-consensus reporting."""

import numpy as np
import pytest

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.geometry import apply_affine, rigid_about_center, uniform_random_rotations
from RegistrationSuiteLib.methods.partial_prereg.ransac import batched_kabsch, ransac_rigid


def _case(seed, n=100, outlier_fraction=0.4, noise=2.0):
    rng = np.random.default_rng(seed)
    truth = rigid_about_center(uniform_random_rotations(1, rng)[0], [0, 0, 0], rng.uniform(-50, 50, 3))
    source = rng.uniform(-40, 40, (n, 3))
    target = apply_affine(truth, source) + rng.normal(0, noise, (n, 3))
    outliers = rng.permutation(n) < int(outlier_fraction * n)
    target[outliers] = rng.uniform(-120, 120, (outliers.sum(), 3))
    return source, target, truth, outliers


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_known_rigid_with_40_percent_outliers(seed):
    source, target, truth, outliers = _case(seed)
    res = ransac_rigid(source, target, threshold_mm=10.0, rng=np.random.default_rng(seed))
    assert res.consensus
    # corner error of a 80 mm cube well below the noise-free threshold
    corners = np.array(np.meshgrid([-40, 40], [-40, 40], [-40, 40])).reshape(3, -1).T
    err = np.linalg.norm(apply_affine(res.matrix, corners) - apply_affine(truth, corners), axis=1).mean()
    assert err < 2.0
    assert np.array_equal(res.inliers, ~outliers)
    assert res.num_inliers == 60 and res.inlier_ratio == pytest.approx(0.6)
    np.testing.assert_allclose(np.linalg.det(res.matrix[:3, :3]), 1.0, atol=1e-9)
    d = res.to_dict()
    assert d["num_inliers"] == 60 and len(d["residuals_mm"]) == 100 and d["inlier_residual_max_mm"] < 10


def test_mirrored_points_give_a_rotation_not_a_reflection():
    rng = np.random.default_rng(3)
    source = rng.normal(size=(1, 30, 3)) * 20
    target = source * np.array([-1.0, 1.0, 1.0])  # a reflection: Kabsch without the fix returns det = -1
    m = batched_kabsch(source, target)[0]
    assert np.linalg.det(m[:3, :3]) == pytest.approx(1.0)
    res = ransac_rigid(source[0], target[0], rng=np.random.default_rng(0))
    assert np.linalg.det(res.matrix[:3, :3]) == pytest.approx(1.0)


def test_no_consensus_is_reported_after_doubling_the_threshold():
    rng = np.random.default_rng(4)
    source, target = rng.uniform(-40, 40, (50, 3)), rng.uniform(-200, 200, (50, 3))
    res = ransac_rigid(source, target, threshold_mm=2.0, min_inliers=20, rng=np.random.default_rng(0))
    assert not res.consensus and res.threshold_mm == 4.0 and res.num_inliers < 20


def test_deterministic_for_a_seed():
    source, target, _, _ = _case(5)
    a = ransac_rigid(source, target, rng=np.random.default_rng(9))
    b = ransac_rigid(source, target, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(a.matrix, b.matrix)


def test_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match=r"two \(n, 3\) arrays"):
        ransac_rigid(np.zeros((10, 3)), np.zeros((9, 3)), rng=rng)
    with pytest.raises(InputError, match="at least 6 correspondences, got 5"):
        ransac_rigid(np.zeros((5, 3)), np.zeros((5, 3)), rng=rng)

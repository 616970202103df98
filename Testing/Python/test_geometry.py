"""Frames and transforms: known answers for every named direction."""

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.geometry import (
    LPS_TO_RAS,
    Grid,
    affine_matrix_from_sitk,
    apply_affine,
    fit_rigid,
    fixed_to_moving_lps_to_moving_to_fixed_ras,
    moving_to_fixed_ras_to_fixed_to_moving_lps,
    rigid_about_center,
    rotation_angle_deg,
    rotation_from_quaternion,
    sitk_affine_from_matrix,
    uniform_random_rotations,
)


def _oblique_image():
    img = sitk.Image([7, 9, 5], sitk.sitkFloat32)
    img.SetSpacing((0.7, 1.3, 2.5))
    img.SetOrigin((10.0, -4.0, 33.0))
    r = rotation_from_quaternion(np.array([[0.9, 0.1, -0.3, 0.2]]))[0]
    img.SetDirection(tuple(r.ravel()))
    return img


def test_grid_index_to_world_matches_sitk():
    img = _oblique_image()
    grid = Grid.from_image(img)
    for idx in [(0, 0, 0), (6, 8, 4), (1.5, 2.25, 3.0)]:
        np.testing.assert_allclose(
            apply_affine(grid.index_to_world(), np.array([idx], float))[0],
            img.TransformContinuousIndexToPhysicalPoint(idx),
            atol=1e-9,
        )
    np.testing.assert_allclose(grid.world_to_index() @ grid.index_to_world(), np.eye(4), atol=1e-12)
    assert grid.corners().shape == (8, 3)
    np.testing.assert_allclose(grid.center(), grid.corners().mean(axis=0), atol=1e-9)


def test_grid_reference_image_round_trip():
    img = _oblique_image()
    ref = Grid.from_image(img).reference_image()
    assert ref.GetSize() == img.GetSize()
    np.testing.assert_allclose(ref.GetDirection(), img.GetDirection())
    np.testing.assert_allclose(ref.GetOrigin(), img.GetOrigin())


def test_affine_matrix_from_sitk_and_back():
    tx = sitk.Euler3DTransform((5.0, 6.0, 7.0), 0.3, -0.1, 0.7, (1.0, -2.0, 3.0))
    m = affine_matrix_from_sitk(tx)
    p = np.array([[12.0, -3.0, 40.0]])
    np.testing.assert_allclose(apply_affine(m, p)[0], tx.TransformPoint(tuple(p[0])), atol=1e-9)
    back = sitk_affine_from_matrix(m)
    np.testing.assert_allclose(back.TransformPoint(tuple(p[0])), tx.TransformPoint(tuple(p[0])), atol=1e-9)


def test_affine_matrix_from_sitk_rejects_deformable():
    field = sitk.Image([5, 5, 5], sitk.sitkVectorFloat64, 3)
    arr = np.zeros((5, 5, 5, 3))
    arr[2, 2, 2] = (3.0, 0.0, 0.0)
    field = sitk.GetImageFromArray(arr, isVector=True)
    field.SetSpacing((10.0, 10.0, 10.0))
    with pytest.raises(InputError, match="expected a linear"):
        affine_matrix_from_sitk(sitk.DisplacementFieldTransform(field))


def test_ras_lps_conversions_known_answer():
    # fixed→moving in LPS: translate by +5 mm along L (x). In RAS that is −5 along R.
    a = np.eye(4)
    a[0, 3] = 5.0
    to_parent = fixed_to_moving_lps_to_moving_to_fixed_ras(a)
    # moving→fixed in RAS undoes it: a moving RAS point maps to RAS x + 5 (i.e. LPS x − 5).
    np.testing.assert_allclose(to_parent[:3, 3], [5.0, 0.0, 0.0])
    np.testing.assert_allclose(moving_to_fixed_ras_to_fixed_to_moving_lps(to_parent), a)
    np.testing.assert_allclose(LPS_TO_RAS @ LPS_TO_RAS, np.eye(4))


def test_uniform_rotations_are_rotations_and_uniform():
    r = uniform_random_rotations(4000, np.random.default_rng(0))
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", r, r), np.broadcast_to(np.eye(3), r.shape), atol=1e-10)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-10)
    # Haar measure: the angle density is (1 − cos θ)/π, so E[θ] = π/2 + 2/π (≈ 126.5°).
    assert np.degrees(np.pi / 2 + 2 / np.pi) == pytest.approx(rotation_angle_deg(r).mean(), abs=2.0)
    # and a random unit vector's image is uniform on the sphere: mean ≈ 0
    np.testing.assert_allclose((r @ np.array([0, 0, 1.0])).mean(axis=0), 0.0, atol=0.05)


@pytest.mark.parametrize("dim", [2, 3])
def test_fit_rigid_recovers_transform_and_never_reflects(dim):
    rng = np.random.default_rng(dim)
    src = rng.normal(size=(30, dim)) * 20
    if dim == 3:
        r = uniform_random_rotations(1, rng)[0]
    else:
        t = 0.8
        r = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    tr = rng.normal(size=dim) * 10
    dst = src @ r.T + tr
    m = fit_rigid(src, dst)
    np.testing.assert_allclose(m[:dim, :dim], r, atol=1e-9)
    np.testing.assert_allclose(m[:dim, dim], tr, atol=1e-9)
    mirrored = src * np.r_[-1.0, np.ones(dim - 1)]
    assert np.linalg.det(fit_rigid(src, mirrored)[:dim, :dim]) == pytest.approx(1.0)


def test_fit_rigid_bad_shapes():
    with pytest.raises(InputError, match="equal shape"):
        fit_rigid(np.zeros((5, 3)), np.zeros((4, 3)))


def test_rigid_about_center_fixes_center():
    r = rotation_from_quaternion(np.array([[0.8, 0.2, 0.5, -0.1]]))[0]
    c = np.array([10.0, 20.0, -5.0])
    m = rigid_about_center(r, c, (1.0, 2.0, 3.0))
    np.testing.assert_allclose(apply_affine(m, c[None])[0], c + [1, 2, 3])

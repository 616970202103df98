"""The fixed → template alignment as a similarity (one isotropic scale) and the matching scaled RANSAC fit moving →
template: a subject whose head is smaller than the template's is placed exactly by the scaled fit, where the
rigid one (the previous pipeline) leaves an error that grows with the distance from the template's centre."""

import types

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.geometry import Grid, apply_affine, rigid_about_center
from RegistrationSuiteLib.methods.partial_prereg import PartialPreregConfig
from RegistrationSuiteLib.methods.partial_prereg import register as register_module
from RegistrationSuiteLib.methods.partial_prereg.refine import refine_rigid, refine_similarity
from RegistrationSuiteLib.progress import as_progress

from scipy.spatial.transform import Rotation

SCALE = 0.85  # subject size / template size (development crops of the stroke subject: 0.83-0.86)


def _similarity(scale, degrees, translation, center=(0.0, 0.0, 0.0)):
    m = rigid_about_center(Rotation.from_euler("xyz", degrees, degrees=True).as_matrix(), center, translation)
    m[:3, :3] *= scale
    m[:3, 3] = np.asarray(translation) + np.asarray(center) - m[:3, :3] @ np.asarray(center)
    return m


def _anchor_error(moving_points, estimate, truth):
    return float(np.linalg.norm(apply_affine(np.linalg.inv(estimate), moving_points)
                                - apply_affine(np.linalg.inv(truth), moving_points), axis=1).mean())


@pytest.mark.parametrize("crop_offset", [(45.0, -30.0, 20.0), (-50.0, 25.0, -35.0)])
def test_scaled_ransac_fit_composes_to_the_true_rigid_transform(monkeypatch, crop_offset):
    """Noise-free patch predictions of a crop 55-70 mm from the centre of a subject 0.85 times the template's
    size: the composition with the similarity fixed → template alignment is exact with the scaled fit, and the
    rigid fit (scale 1, the old pipeline) is several mm off."""
    t_tf = _similarity(SCALE, (4.0, -6.0, 9.0), (3.0, -12.0, 20.0))  # template → fixed points
    truth = _similarity(1.0, (10.0, -8.0, 5.0), (-30.0, 15.0, 40.0))  # fixed → moving points (the answer)
    rng = np.random.default_rng(1)
    fixed_points = np.asarray(crop_offset) + rng.uniform(-30.0, 30.0, (60, 3))  # patch centres, fixed mm
    centers = apply_affine(truth, fixed_points)  # the same points in the moving image
    predictions = apply_affine(np.linalg.inv(t_tf), fixed_points)  # their template positions, exact

    def fake_predict(moving, tspm, cfg, rng_, timings=None, prog=None):
        return types.SimpleNamespace(centers_mm=centers, patches=np.zeros((len(centers), 1)), num_candidates=60,
                                     foreground_fraction=np.ones(len(centers)), value_range=(0.0, 1.0)), predictions

    monkeypatch.setattr(register_module, "predict_template_positions", fake_predict)
    cfg = PartialPreregConfig(device="cpu", local_search=False, refine="none")
    errors = {}
    for scale in (1.0, SCALE):
        diag = {}
        a_mov, ransac = register_module._moving_to_template(None, None, cfg, {}, diag, as_progress(None), scale=scale)
        estimate = register_module.compose_fixed_to_moving(a_mov["ransac"], t_tf)
        np.testing.assert_allclose(estimate[:3, :3] @ estimate[:3, :3].T, np.eye(3), atol=1e-9)  # rigid
        errors[scale] = _anchor_error(centers, estimate, truth)
        assert diag["ransac"]["scale"] == pytest.approx(scale)
    assert errors[SCALE] < 0.05
    assert errors[1.0] > 3.0  # the rigid fit of a 0.85-scaled subject: several mm off


def test_nearest_rigid_projects_a_scaled_rotation():
    m = _similarity(1.07, (20.0, 5.0, -30.0), (1.0, 2.0, 3.0))
    r = register_module.nearest_rigid(m)
    np.testing.assert_allclose(r[:3, :3], m[:3, :3] / 1.07, atol=1e-12)
    np.testing.assert_allclose(r[:3, 3], m[:3, 3])
    assert register_module.template_scale(m) == pytest.approx(1.07)


def _head(size=48, spacing=3.0, scale=1.0):
    """An ellipsoidal 'head' with an off-centre inner structure (so rotation and scale are defined), on a grid
    centred at the origin; ``scale`` shrinks the object (not the grid)."""
    z, y, x = (np.mgrid[:size, :size, :size].astype(np.float32) - (size - 1) / 2.0) * spacing / scale
    outer = (x / 55.0) ** 2 + (y / 65.0) ** 2 + (z / 50.0) ** 2
    inner = ((x - 15.0) / 18.0) ** 2 + ((y + 10.0) / 25.0) ** 2 + ((z - 8.0) / 15.0) ** 2
    arr = 100.0 / (1.0 + np.exp(np.minimum((outer - 1.0) * 12.0, 50.0))) + 80.0 / (1.0 + np.exp(np.minimum((inner - 1.0) * 8.0, 50.0)))
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing((spacing,) * 3)
    img.SetOrigin((-(size - 1) / 2.0 * spacing,) * 3)
    return img


@pytest.mark.slow
def test_refine_similarity_recovers_a_known_scale():
    """Template = the head; 'fixed' = the same head 0.88 times the size, shifted 4 mm: the similarity refinement
    from the identity finds the scale (and the template → fixed mapping) where the rigid refinement cannot."""
    template, fixed = _head(), _head(scale=0.88)
    shift = np.eye(4)
    shift[:3, 3] = (4.0, 0.0, 0.0)
    fixed.SetOrigin(tuple(np.asarray(fixed.GetOrigin()) + 4.0 * np.array([1.0, 0.0, 0.0])))
    truth = shift.copy()  # template → fixed points: x ↦ 0.88 x + (4, 0, 0)
    truth[:3, :3] *= 0.88
    matrix, scale = refine_similarity(template, fixed, np.eye(4), iterations=200)
    assert scale == pytest.approx(0.88, abs=0.02)
    pts = apply_affine(Grid.from_image(template).index_to_world(), np.argwhere(
        sitk.GetArrayViewFromImage(template) > 50)[::7, ::-1].astype(float))
    err = np.linalg.norm(apply_affine(matrix, pts) - apply_affine(truth, pts), axis=1).mean()
    rigid = refine_rigid(template, fixed, np.eye(4), metric="mi", iterations=200).fixed_to_moving
    err_rigid = np.linalg.norm(apply_affine(rigid, pts) - apply_affine(truth, pts), axis=1).mean()
    assert err < 1.5 and err_rigid > 3.0


def test_fixed_to_template_key_changes_with_the_similarity():
    """The cache key of the fixed → template result distinguishes the similarity from the rigid refinement (older
    rigid entries are never reused), and ignores the setting where no refinement runs (the default pipeline)."""
    fixed = _head(size=16)
    template = types.SimpleNamespace(sha256="t")
    key = register_module.fixed_to_template_key

    def cfg(**kw):
        return PartialPreregConfig(device="cpu", **kw)

    assert key(fixed, template, cfg(local_search=False)) != key(fixed, template, cfg(local_search=False,
                                                                                        fixed_to_template_scale=False))
    assert key(fixed, template, cfg()) == key(fixed, template, cfg(fixed_to_template_scale=False))
    assert register_module.fixed_to_template_scaled(cfg(local_search=False))
    assert not register_module.fixed_to_template_scaled(cfg())  # "auto" with the local search: no refinement
    assert not register_module.fixed_to_template_scaled(cfg(local_search=False, fixed_to_template_refine="mse"))

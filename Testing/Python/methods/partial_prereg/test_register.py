"""register_partial_prereg end to end with the shipped model and sample, and every bad input of the issue."""

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError, RegistrationFailed
from RegistrationSuiteLib.geometry import Grid, apply_affine, rigid_about_center
from RegistrationSuiteLib.methods.partial_prereg import (
    DEFAULT_MODEL,
    PartialPreregConfig,
    build_template,
    load_tspm_model,
    register_partial_prereg,
)
from RegistrationSuiteLib.methods.partial_prereg import register as register_module
from RegistrationSuiteLib.models.registry import resolve_model
from RegistrationSuiteLib.sample_data import load_sample

CPU = PartialPreregConfig(device="cpu")


def _moved_crop(image, start, size, angles_deg, offset_mm):
    """A crop of ``image`` moved into its own frame; returns (moving, true fixed→moving)."""
    crop = sitk.RegionOfInterest(image, size, start)
    a = np.radians(angles_deg)
    r = sitk.Euler3DTransform((0, 0, 0), *a).GetMatrix()
    r = np.asarray(r).reshape(3, 3)
    c = Grid.from_image(crop).center()
    truth = rigid_about_center(r, c, offset_mm)
    moved = sitk.Image(crop)
    moved.SetDirection((r @ np.asarray(crop.GetDirection()).reshape(3, 3)).ravel().tolist())
    moved.SetOrigin(apply_affine(truth, np.asarray(crop.GetOrigin())[None])[0].tolist())
    return moved, truth


def _anchor_error(moving, estimate, truth):
    axes = [np.linspace(0, s - 1, 5) for s in moving.GetSize()]
    pts = apply_affine(Grid.from_image(moving).index_to_world(),
                       np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1).T)
    return np.linalg.norm(apply_affine(np.linalg.inv(estimate), pts) - apply_affine(np.linalg.inv(truth), pts),
                          axis=1).mean()


def test_end_to_end_shipped_model_on_shipped_sample():
    register_module._FIXED_CACHE.clear()
    fixed = load_sample("T2")
    moving, truth = _moved_crop(load_sample("T1"), [8, 12, 20], [44, 48, 36], (8.0, -6.0, 10.0), (30.0, -25.0, 20.0))
    result = register_partial_prereg(fixed, moving, CPU)  # run time: bench_partial_prereg.py, not a unit test
    assert _anchor_error(moving, result.fixed_to_moving_matrix, truth) < 4.0
    d = result.diagnostics
    assert d["ransac"]["consensus"] and d["ransac"]["num_inliers"] >= 12 and len(d["ransac"]["residuals_mm"]) > 20
    assert d["refinement"]["metric"] == "mi" and d["refinement"]["after"] >= d["refinement"]["before"]
    assert d["fixed_to_template"]["cached"] is False and result.confidence == d["ransac"]["inlier_ratio"]
    assert d["initialisation"]["chosen"] in ("local_search_from_ransac", "local_search_from_orientation_prior")
    assert set(d["local_search"]["seeds"]) == {"ransac", "orientation_prior"}
    assert d["moving_inside_fixed"] == 1.0 and d["doubtful"] == [], d["doubtful"]
    assert result.summary()["method"] == "partial_prereg"  # JSON-serialisable diagnostics


def test_without_local_search_the_tspm_candidates_are_refined_directly():
    fixed = load_sample("T2")
    moving, truth = _moved_crop(load_sample("T1"), [8, 12, 20], [44, 48, 36], (8.0, -6.0, 10.0), (30.0, -25.0, 20.0))
    result = register_partial_prereg(fixed, moving, dataclasses.replace(CPU, local_search=False))
    d = result.diagnostics
    assert "local_search" not in d
    assert d["initialisation"]["chosen"] in ("ransac", "orientation_prior")
    assert set(d["initialisation"]["candidates"]) == {"ransac", "orientation_prior"}


def test_non_3d_images_rejected():
    img2d = sitk.GetImageFromArray(np.random.default_rng(0).random((40, 40)).astype(np.float32))
    with pytest.raises(InputError, match="moving: expected a 3D image, got a 2D image"):
        register_partial_prereg(load_sample("T2"), img2d, CPU)
    with pytest.raises(InputError, match="fixed: expected a 3D image, got a 2D image"):
        register_partial_prereg(img2d, load_sample("T1"), CPU)


def test_moving_too_small_for_patches():
    tiny = sitk.RegionOfInterest(load_sample("T1"), [10, 30, 30], [25, 25, 25])  # 20 mm along x
    with pytest.raises(InputError, match="too small for 16³ patches at template scale"):
        register_partial_prereg(load_sample("T2"), tiny, CPU)


def test_too_few_foreground_patches():
    arr = np.zeros((40, 40, 40), np.float32)
    arr[:, :, :3] = 100.0  # a thin bright slab: almost every patch is background
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 2.0, 2.0))
    with pytest.raises(InputError, match="too few foreground patches"):
        register_partial_prereg(load_sample("T2"), img, CPU)


def _random_predictions(monkeypatch):
    def fake(net, patches, *, device, batch_size=128):
        return np.random.default_rng(0).uniform(0.0, 1.0, (len(patches), 3))

    monkeypatch.setattr(register_module, "predict_positions", fake)


def test_no_consensus_without_fallback_fails_clearly(monkeypatch):
    _random_predictions(monkeypatch)
    with pytest.raises(RegistrationFailed, match="RANSAC found no consensus"):
        register_partial_prereg(load_sample("T2"), load_sample("T1"),
                                PartialPreregConfig(device="cpu", fallback_to_global=False))


def test_no_consensus_falls_back_to_global_search_and_flags_it(monkeypatch):
    _random_predictions(monkeypatch)
    calls = []

    def fake_global(fixed, moving, config=None, **kw):
        calls.append(config)
        from RegistrationSuiteLib.result import RegistrationResult

        return RegistrationResult("global_rigid", sitk.Euler3DTransform(), score=0.3, confidence=0.5)

    import RegistrationSuiteLib.methods.global_rigid as gr

    monkeypatch.setattr(gr, "register_global_rigid", fake_global)
    result = register_partial_prereg(load_sample("T2"), load_sample("T1"),
                                     PartialPreregConfig(device="cpu", refine="none"))
    assert len(calls) == 1 and result.diagnostics["fallback"]["used"] and result.confidence == 0.0
    assert not result.diagnostics["ransac"]["consensus"]
    assert any("no consensus" in w for w in result.warnings) and result.diagnostics["doubtful"]


def test_corrupt_model_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(resolve_model(DEFAULT_MODEL).read_bytes()[:100_000])
    with pytest.raises(InputError, match="corrupt or truncated"):
        register_partial_prereg(load_sample("T2"), load_sample("T1"), CPU, model=str(bad))


def test_model_template_mismatch(tmp_path):
    other = build_template(load_sample("T2"), name="other", canvas_size=64)
    other.write(tmp_path / "other.nii.gz")
    with pytest.raises(InputError, match="model/template mismatch"):
        register_partial_prereg(load_sample("T2"), load_sample("T1"),
                                PartialPreregConfig(device="cpu", template_path=str(tmp_path / "other.nii.gz")))


def test_model_with_wrong_weights(tmp_path):
    from RegistrationSuiteLib.models.model_file import load_model, save_model

    model = load_model(resolve_model(DEFAULT_MODEL))
    model.state_dict = {k.replace("head.", "fc."): v for k, v in model.state_dict.items()}
    save_model(model, tmp_path / "renamed.pt")
    with pytest.raises(InputError, match="weights do not match the network: missing keys"):
        load_tspm_model(str(tmp_path / "renamed.pt"))


def test_config_validation():
    with pytest.raises(InputError, match="refine: expected one of mse, nmi, mi, none, got 'ncc'"):
        PartialPreregConfig(refine="ncc")
    with pytest.raises(InputError, match="min_patches: expected <= num_patches"):
        PartialPreregConfig(num_patches=10, min_patches=20)
    with pytest.raises(InputError, match="ransac_threshold_mm"):
        PartialPreregConfig(ransac_threshold_mm=0)
    with pytest.raises(InputError, match="local_search_window_mm: expected a positive number"):
        PartialPreregConfig(local_search_window_mm=0)
    with pytest.raises(InputError, match="local_search_deg"):
        PartialPreregConfig(local_search_deg=-5)
    with pytest.raises(InputError, match="local_search_rotations: expected an integer >= 1"):
        PartialPreregConfig(local_search_rotations=0)
    with pytest.raises(InputError, match="config: expected a PartialPreregConfig"):
        register_partial_prereg(load_sample("T2"), load_sample("T1"), {"refine": "mi"})

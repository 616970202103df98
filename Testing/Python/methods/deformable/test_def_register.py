"""register_deformable: direction (known smooth field, reversed fails), initial transform folded in, auto
similarity, diagnostics, masks and bad input."""

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.methods.deformable import DeformableConfig, register_deformable
from RegistrationSuiteLib.sample_data import load_sample

from def_cases import deformed_pair, field_error, negated, oblique_fixed

FAST = dict(spacing_mm=4.0, io_steps=60, levels=(2, 1), level_fractions=(0.6, 0.4), device="cpu")


def test_package_import_is_torch_free():
    code = ("import sys, RegistrationSuiteLib.methods.deformable as m; m.DeformableConfig(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_initial_transform_is_folded_in_exactly():
    """With no optimisation and no network the output is the initial (non-identity) transform itself."""
    fixed, _ = oblique_fixed()
    init = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.05, -0.03, 0.08, (6.0, -4.0, 3.0))
    result = register_deformable(fixed, fixed, DeformableConfig(io_steps=0, **{k: v for k, v in FAST.items() if k != "io_steps"}),
                                 initial_transform=init)
    assert result.transform.GetName() == "DisplacementFieldTransform"
    rng = np.random.default_rng(0)
    for idx in rng.integers(2, np.array(fixed.GetSize()) - 2, size=(20, 3)):
        p = fixed.TransformIndexToPhysicalPoint([int(i) for i in idx])
        np.testing.assert_allclose(result.transform.TransformPoint(p), init.TransformPoint(p), atol=1e-6)
    assert result.diagnostics["folding_fraction"] == 0.0
    assert result.diagnostics["jacobian_min"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
def test_known_smooth_field_is_recovered_in_the_fixed_to_moving_direction():
    fixed, moving, truth = deformed_pair()
    mask = sitk.GetArrayFromImage(fixed) > 20
    result = register_deformable(fixed, moving, DeformableConfig(**FAST))
    identity = field_error(sitk.Transform(3, sitk.sitkIdentity), truth, fixed, mask)[0]
    mean, _ = field_error(result.transform, truth, fixed, mask)
    assert identity > 1.5
    assert mean < 0.5 * identity
    # the reversed direction (moving → fixed read as fixed → moving) is far worse than the result
    assert field_error(negated(result.transform, fixed), truth, fixed, mask)[0] > 3 * mean
    sim = result.diagnostics["similarity"]
    assert sim["name"] == "lncc" and sim["after"] > sim["before"]
    assert result.diagnostics["folding_fraction"] < 1e-3


def test_auto_similarity_follows_the_contrast():
    fixed, _ = oblique_fixed("T1")
    t2 = load_sample("T2")
    cfg = DeformableConfig(**{**FAST, "io_steps": 0})
    same = register_deformable(fixed, load_sample("T1"), cfg)
    cross = register_deformable(fixed, t2, cfg)
    assert same.diagnostics["similarity"]["name"] == "lncc"
    assert cross.diagnostics["similarity"]["name"] == "mind"
    assert same.diagnostics["similarity"]["auto_correlation"] > 0.8 > cross.diagnostics["similarity"]["auto_correlation"]
    forced = register_deformable(fixed, t2, DeformableConfig(**{**FAST, "io_steps": 0, "similarity": "ngf"}))
    assert forced.diagnostics["similarity"]["name"] == "ngf"


def test_result_record_and_timings():
    fixed, _ = oblique_fixed()
    result = register_deformable(fixed, load_sample("T1"), DeformableConfig(**{**FAST, "io_steps": 6}))
    s = result.summary()
    assert s["transform_type"] == "DisplacementFieldTransform"
    assert {"resample", "optimisation", "output", "total"} <= set(s["timings"])
    assert s["diagnostics"]["io"]["steps_per_level"] == [4, 2]
    assert s["diagnostics"]["working_grid"]["spacing_mm"] == 4.0


def _image(size, spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0), value=None):
    arr = np.random.default_rng(0).random(size[::-1]).astype(np.float32) if value is None else np.full(size[::-1], value, np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


@pytest.mark.parametrize("case,match", [
    ("no_overlap", "do not overlap"),
    ("singular", "not invertible"),
    ("too_small", "too small for the working resolution"),
    ("nan", "NaN"),
    ("empty_mask", "mask is empty"),
    ("memory", "needs about"),
    ("2d", "expected a 3D image"),
])
def test_bad_input_is_one_clear_error(case, match):
    fixed, moving = _image((24, 24, 24)), _image((24, 24, 24))
    kw, cfg = {}, dict(FAST)
    if case == "no_overlap":
        kw["initial_transform"] = sitk.TranslationTransform(3, (500.0, 0.0, 0.0))
    elif case == "singular":
        kw["initial_transform"] = sitk.AffineTransform((1, 0, 0, 0, 0, 0, 0, 0, 1), (0, 0, 0))
    elif case == "too_small":
        fixed = _image((6, 24, 24))
    elif case == "nan":
        arr = sitk.GetArrayFromImage(moving)
        arr[3, 3, 3] = np.nan
        moving = sitk.GetImageFromArray(arr)
    elif case == "empty_mask":
        kw["fixed_mask"] = _image((24, 24, 24), value=0.0)
    elif case == "memory":
        cfg["spacing_mm"], cfg["max_memory_gb"] = 0.25, 1.0
    elif case == "2d":
        fixed = sitk.GetImageFromArray(np.random.default_rng(0).random((20, 20)).astype(np.float32))
    with pytest.raises(InputError, match=match):
        register_deformable(fixed, moving, DeformableConfig(**cfg), **kw)


@pytest.mark.parametrize("field,value", [("spacing_mm", 0), ("similarity", "mi"), ("io_steps", -1),
                                         ("levels", ()), ("level_fractions", (1.0,)), ("regularization", -1.0)])
def test_config_validation(field, value):
    kw = {field: value}
    if field == "levels":
        kw["level_fractions"] = ()
    with pytest.raises(InputError, match=field):
        DeformableConfig(**kw)


def test_config_splits_steps_exactly():
    assert DeformableConfig(io_steps=120).steps_per_level() == [60, 42, 18]
    assert sum(DeformableConfig(io_steps=7).steps_per_level()) == 7
    assert DeformableConfig(model="none").model is None


def test_automatic_working_spacing_is_bounded_by_the_voxel_budget():
    import math

    cfg = DeformableConfig()
    assert cfg.spacing_mm is None and DeformableConfig(spacing_mm="auto").spacing_mm is None
    assert cfg.working_spacing((140.0, 160.0, 125.0)) == 1.5  # a brain at 1.5 mm stays at 1.5 mm

    def voxels(extent, s):
        return math.prod(int(math.ceil(e / s - 1e-6)) + 1 for e in extent)

    big = (255.0, 255.0, 255.0)  # a 256³ 1 mm volume: 171³ voxels at 1.5 mm, over the 3 M budget
    s = cfg.working_spacing(big)
    assert s > 1.5 and voxels(big, s) <= cfg.auto_max_voxels < voxels(big, s / 1.03)
    assert DeformableConfig(spacing_mm=1.0).working_spacing(big) == 1.0  # an explicit spacing is kept

"""Initial transforms and composition (fixed→moving, ITK order) and the valid chains."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.cohort.chain import (VALID_CHAINS, check_chain, compose_fixed_to_moving, linear_transform,
                                               prewarp_moving, step_of_composed)
from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.geometry import affine_matrix_from_sitk

from tiny_cases import corner_error_mm, inside_points, known_deformable_pair_3d, known_pair_2d, rigid_2d, slide_pair_rgb

CLI = [sys.executable, "-m", "RegistrationSuiteLib"]


def _oblique_volume():
    rng = np.random.default_rng(3)
    img = sitk.GetImageFromArray(rng.random((12, 14, 16)).astype(np.float32))
    img.SetSpacing((0.9, 1.3, 2.5))
    img.SetOrigin((10.0, -4.0, 7.0))
    r = sitk.Euler3DTransform()
    r.SetRotation(0.2, -0.3, 0.4)
    img.SetDirection(r.GetMatrix())
    return img


def _points(img, n=50, seed=0):
    rng = np.random.default_rng(seed)
    size = np.asarray(img.GetSize())
    return [img.TransformContinuousIndexToPhysicalPoint((rng.random(3) * (size - 1)).tolist()) for _ in range(n)]


@pytest.mark.parametrize("rigid_initial", [True, False])
def test_prewarp_then_step_equals_composed_resampling(rigid_initial):
    """Resampling the pre-warped moving image with S equals resampling the original with T0∘S."""
    moving = _oblique_volume()
    fixed = sitk.Image(moving)  # the fixed grid: same geometry is enough for the identity to hold pointwise
    t0 = sitk.Euler3DTransform((0, 0, 0), 0.3, 0.1, -0.2, (3.0, -2.0, 1.5))
    if not rigid_initial:
        t0 = sitk.AffineTransform(3)
        t0.SetMatrix((1.1, 0.05, 0, 0, 0.95, 0, 0.02, 0, 1.0))
        t0.SetTranslation((2.0, 1.0, -1.0))
    step = sitk.Euler3DTransform((12.0, 1.0, 20.0), -0.1, 0.2, 0.05, (1.0, 2.0, -3.0))
    pre = prewarp_moving(moving, t0, fixed)
    assert pre.how == ("header" if rigid_initial else "resampled")
    composed = compose_fixed_to_moving(t0, step)
    # Evaluate both at fixed points: M'(S(x)) must equal M(T0(S(x))).
    interp = sitk.sitkLinear
    a = sitk.Resample(pre.image, fixed, step, interp, -1.0, sitk.sitkFloat32)
    b = sitk.Resample(moving, fixed, composed, interp, -1.0, sitk.sitkFloat32)
    a, b = sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)
    both = (a != -1.0) & (b != -1.0)
    assert both.sum() > 50
    # header pre-warp is exact; resampling twice adds interpolation error only
    tol = 1e-4 if rigid_initial else 0.35
    assert np.abs(a[both] - b[both]).mean() < tol
    if rigid_initial:
        assert np.abs(a[both] - b[both]).max() < 1e-4


def test_compose_order_and_split_known_answer():
    t0 = sitk.Euler3DTransform((0, 0, 0), 0.0, 0.0, np.pi / 2, (10.0, 0.0, 0.0))
    step = sitk.TranslationTransform(3, (1.0, 0.0, 0.0))
    composed = compose_fixed_to_moving(t0, step)
    # x=(0,0,0): step → (1,0,0); t0 rotates 90° about z → (0,1,0), then +10 in x → (10,1,0)
    np.testing.assert_allclose(composed.TransformPoint((0, 0, 0)), (10.0, 1.0, 0.0), atol=1e-9)
    assert composed.GetName() == "Euler3DTransform"
    back = step_of_composed(composed, t0)
    np.testing.assert_allclose(affine_matrix_from_sitk(back), affine_matrix_from_sitk(step), atol=1e-9)


def test_compose_with_displacement_field_keeps_components():
    field = sitk.Image([8, 8, 8], sitk.sitkVectorFloat64, 3)
    arr = np.zeros((8, 8, 8, 3))
    arr[..., 0] = 2.0
    field = sitk.GetImageFromArray(arr, isVector=True)
    dft = sitk.DisplacementFieldTransform(sitk.Image(field))
    t0 = sitk.TranslationTransform(3, (0.0, 5.0, 0.0))
    composed = compose_fixed_to_moving(t0, dft)
    np.testing.assert_allclose(composed.TransformPoint((3.0, 3.0, 3.0)), (5.0, 8.0, 3.0), atol=1e-9)
    assert step_of_composed(composed, t0).GetName() == "DisplacementFieldTransform"


def test_split_a_field_with_the_initial_transform_folded_in():
    """The deformable command writes one field with its initial transform folded in: the step's own field is
    recovered from it (known answer: fold a known field and a known rigid transform by hand, split again)."""
    rng = np.random.default_rng(2)
    grid = sitk.Image([7, 6, 5], sitk.sitkFloat32)
    grid.SetSpacing((2.0, 1.5, 3.0))
    grid.SetOrigin((-4.0, 3.0, 1.0))
    grid.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.1, -0.2, 0.3).GetMatrix())
    step_u = rng.normal(0, 2.0, (5, 6, 7, 3))
    step_img = sitk.GetImageFromArray(step_u, isVector=True)
    step_img.CopyInformation(grid)
    step = sitk.DisplacementFieldTransform(sitk.Image(step_img))
    t0 = sitk.Euler3DTransform((1, 2, 3), 0.4, 0.1, -0.3, (5.0, -2.0, 7.0))
    folded = np.zeros_like(step_u)
    for k, j, i in np.ndindex(5, 6, 7):
        x = grid.TransformIndexToPhysicalPoint((i, j, k))
        folded[k, j, i] = np.subtract(t0.TransformPoint(step.TransformPoint(x)), x)
    folded_img = sitk.GetImageFromArray(folded, isVector=True)
    folded_img.CopyInformation(grid)
    back = step_of_composed(sitk.DisplacementFieldTransform(folded_img), t0)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back.GetDisplacementField()), step_u, atol=1e-9)


def test_linear_transform_types():
    assert linear_transform(np.diag([1.0, 1.0, 1.0, 1.0])).GetName() == "Euler3DTransform"
    assert linear_transform(np.diag([1.2, 1.0, 1.0, 1.0])).GetName() == "AffineTransform"
    assert linear_transform(np.diag([-1.0, 1.0, 1.0, 1.0])).GetName() == "AffineTransform"  # reflection


@pytest.mark.parametrize("steps", VALID_CHAINS)
def test_valid_chains_accepted(steps):
    assert check_chain(steps) == steps


@pytest.mark.parametrize("steps,why", [(("deformable", "rigid-search"), "never before"),
                                       (("rigid-search", "organ-points"), "point sets"),
                                       (("rigid-search", "partial-prereg"), "")])
def test_invalid_chains_refused_naming_valid_ones(steps, why):
    with pytest.raises(InputError) as exc:
        check_chain(steps)
    assert "rigid-search,deformable" in str(exc.value) and why in str(exc.value)


def test_unavailable_step_refused():
    with pytest.raises(InputError, match="not available"):
        check_chain(("rigid-search", "deformable"), available=("rigid-search", "partial-prereg"))


def test_rigid_search_initial_transform_known_answer(tmp_path):
    """The written transform is T0∘S and recovers the non-identity truth; the step's own is T0⁻¹∘truth."""
    fixed, moving, truth = known_pair_2d(angle_deg=20.0, shift_mm=(6.0, -4.0))
    sitk.WriteImage(fixed, str(tmp_path / "f.nii.gz"))
    sitk.WriteImage(moving, str(tmp_path / "m.nii.gz"))
    center = fixed.TransformContinuousIndexToPhysicalPoint([s / 2 for s in fixed.GetSize()])
    t0 = rigid_2d(-35.0, (10.0, 3.0), center)  # far from the truth: the step has real work to do
    sitk.WriteTransform(t0, str(tmp_path / "t0.tfm"))
    out = tmp_path / "t.h5"
    proc = subprocess.run(CLI + ["rigid-search", "--fixed", str(tmp_path / "f.nii.gz"), "--moving", str(tmp_path / "m.nii.gz"),
                                 "--initial-transform", str(tmp_path / "t0.tfm"), "--output", str(out), "--json",
                                 "--output-diagnostics", str(tmp_path / "d.json"),
                                 "--device", "cpu", "--quiet", "--output-report", str(tmp_path / "r.html")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    estimate = sitk.ReadTransform(str(out))
    assert corner_error_mm(fixed, estimate, truth) < 1.5
    info = json.loads((tmp_path / "d.json").read_text())["diagnostics"]["initial_transform"]
    assert info["prewarp"] == "header"
    step = np.array(info["step_fixed_to_moving_lps"])
    expected_step = np.linalg.inv(affine_matrix_from_sitk(t0, 2)) @ affine_matrix_from_sitk(truth, 2)
    assert np.rad2deg(abs(np.arctan2(expected_step[1, 0], expected_step[0, 0]))) > 40  # non-identity step
    np.testing.assert_allclose(step[:2, :2], expected_step[:2, :2], atol=0.02)
    # --output-report: one self-contained page with the checkerboard and the edge overlay
    page = (tmp_path / "r.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2 and "http" not in page.replace("http-equiv", "")


@pytest.mark.slow
def test_rigid_search_then_real_deformable_known_answer(tmp_path):
    """The real chain (rigid-search, then the deformable command from its result) on a 3D case whose answer is
    a rotation+shift and a smooth field: the composed transform recovers the answer, and better than the rigid
    step alone (the deformable step did real work, composed after the rigid one, not instead of it)."""
    pytest.importorskip("torch")
    fixed, moving, moving_to_fixed, _ = known_deformable_pair_3d(amplitude_mm=4.0)
    sitk.WriteImage(fixed, str(tmp_path / "f.nii.gz"))
    sitk.WriteImage(moving, str(tmp_path / "m.nii.gz"))
    out, steps = tmp_path / "chain.h5", tmp_path / "steps"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(CLI + ["pipeline", "--fixed", str(tmp_path / "f.nii.gz"), "--moving", str(tmp_path / "m.nii.gz"),
                                 "--steps", "rigid-search,deformable", "--output", str(out), "--output-dir", str(steps),
                                 "--step-options", "rigid-search:--device cpu --rotations 300,60,3",
                                 "--step-options", "deformable:--device cpu --spacing 4 --io-steps 60",
                                 "--json", "--quiet", "--output-report", str(tmp_path / "r.html")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["step_methods"] == ["global_rigid", "deformable"]
    # the review page of the real composed result: checkerboard, edges and the Jacobian map of its field
    assert (tmp_path / "r.html").read_text().count('src="data:image/png;base64,iVBOR') == 3
    ys = inside_points(moving, n=300)  # a correct fixed→moving estimate T satisfies T(W(y)) = y

    def error(t):
        return float(np.mean([np.linalg.norm(np.subtract(t.TransformPoint(moving_to_fixed.TransformPoint(y)), y))
                              for y in ys]))

    chain = sitk.ReadTransform(str(out))
    rigid = sitk.ReadTransform(str(steps / "01_rigid-search.composed.h5"))
    e_identity, e_rigid, e_chain = error(sitk.Transform(3, sitk.sitkIdentity)), error(rigid), error(chain)
    assert e_identity > 10.0  # the answer is far from the identity
    assert 1.5 < e_rigid < 5.0  # the rigid step finds the pose; the smooth field is left to the next step
    assert e_chain < 1.2 and e_chain < 0.5 * e_rigid, (e_rigid, e_chain)
    # the deformable step's own transform is a field that moves points by millimetres (not the identity)
    own = sitk.ReadTransform(str(steps / "02_deformable.step.h5"))
    xs = [moving_to_fixed.TransformPoint(y) for y in ys[:50]]
    assert np.mean([np.linalg.norm(np.subtract(own.TransformPoint(x), x)) for x in xs]) > 1.0
    # and the rigid result followed by it is the composed one
    np.testing.assert_allclose([rigid.TransformPoint(own.TransformPoint(x)) for x in xs],
                               [chain.TransformPoint(x) for x in xs], atol=1e-3)


def test_initial_transform_dimension_mismatch_is_input_error(tmp_path):
    fixed, moving, _ = known_pair_2d()
    sitk.WriteImage(fixed, str(tmp_path / "f.nii.gz"))
    sitk.WriteImage(moving, str(tmp_path / "m.nii.gz"))
    sitk.WriteTransform(sitk.Euler3DTransform(), str(tmp_path / "t0.tfm"))
    proc = subprocess.run(CLI + ["rigid-search", "--fixed", str(tmp_path / "f.nii.gz"), "--moving", str(tmp_path / "m.nii.gz"),
                                 "--initial-transform", str(tmp_path / "t0.tfm"), "--output", str(tmp_path / "t.h5")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "3D transform for 2D" in proc.stderr
    assert not (tmp_path / "t.h5").exists()


@pytest.mark.slow
def test_histology_initial_transform_known_answer(tmp_path):
    """histology from an initial transform, linear and as a displacement field: the written field (one 2D displacement field, fixed→moving, T0
    folded in) recovers the known rotation+shift, landmarks go both ways through it, and the method's own step
    was the remainder after T0 (not the whole rotation again)."""
    pytest.importorskip("torch")
    from RegistrationSuiteLib.methods.histology.landmarks import read_landmarks, write_landmarks

    fixed, moving, matrix, offset = slide_pair_rgb(angle_deg=40.0)
    for name, rgb in (("f.png", fixed), ("m.png", moving)):
        sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / name))
    points = np.array([[60.0, 90.0], [96.0, 96.0], [130.0, 70.0], [80.0, 125.0]])
    write_landmarks(points, tmp_path / "fl.csv")
    write_landmarks(points @ matrix.T + offset, tmp_path / "ml.csv")
    t0 = rigid_2d(28.0, (2.0, 1.0), (96.0, 96.0))  # 12° short of the truth: the step has work left
    sitk.WriteTransform(t0, str(tmp_path / "t0.tfm"))
    expected = points @ matrix.T + offset
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run_and_check(t0_file: str, tag: str) -> dict:
        out = {k: str(tmp_path / f"{tag}{k}") for k in ("t.h5", "o.csv", "of.csv", "d.json")}
        proc = subprocess.run(CLI + ["histology", "--fixed", str(tmp_path / "f.png"), "--moving", str(tmp_path / "m.png"),
                                     "--initial-transform", str(tmp_path / t0_file), "--output", out["t.h5"],
                                     "--fixed-landmarks", str(tmp_path / "fl.csv"), "--output-landmarks", out["o.csv"],
                                     "--moving-landmarks", str(tmp_path / "ml.csv"),
                                     "--output-fixed-landmarks", out["of.csv"], "--working-size", "192",
                                     "--output-diagnostics", out["d.json"], "--json", "--quiet"],
                              capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr
        tx = sitk.ReadTransform(out["t.h5"])
        tx = tx.GetNthTransform(0) if isinstance(tx, sitk.CompositeTransform) else tx
        assert tx.Downcast().GetName() == "DisplacementFieldTransform"
        np.testing.assert_allclose([tx.TransformPoint(tuple(p)) for p in points], expected, atol=1.5)
        np.testing.assert_allclose(read_landmarks(out["o.csv"]), expected, atol=1.5)
        np.testing.assert_allclose(read_landmarks(out["of.csv"]), points, atol=1.5)
        d = json.loads(Path(out["d.json"]).read_text())["diagnostics"]
        assert d["initial_transform"]["prewarp"] == "resampled"
        assert abs(abs(d["rotation_deg"]) - 12.0) < 4.0  # the step found the remaining 12°, not 40°: T0 was applied
        return d

    run_and_check("t0.tfm", "")
    # the same T0 given as a displacement field (a non-linear transform type) gives the same answer
    t0_field = sitk.TransformToDisplacementField(t0, sitk.sitkVectorFloat64, (52, 52), (-6.0, -6.0), (4.0, 4.0))
    sitk.WriteTransform(sitk.DisplacementFieldTransform(t0_field), str(tmp_path / "t0_field.h5"))
    run_and_check("t0_field.h5", "field-")

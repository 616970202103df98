"""``--output-qa`` in ``deformable``, ``organ-points`` and ``pipeline``: a valid PNG of the expected size whose
"after" half shows the inputs aligned by the delivered transform, checked up front with the other outputs
(never an input, nothing written on bad input). The registrations are replaced by known, non-identity answers:
these tests check the outputs, not the methods."""

import os

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.cli.main import main
from RegistrationSuiteLib.result import RegistrationResult

SHIFT_MM = (6.0, -4.0, 0.0)  # fixed → moving: p ↦ p + SHIFT_MM
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _oblique_grid(size, spacing, pixel=sitk.sitkFloat32):
    img = sitk.Image(size, pixel)
    img.SetSpacing(spacing)
    img.SetOrigin((-30.0, 12.0, 4.0))
    c, s = np.cos(np.deg2rad(20)), np.sin(np.deg2rad(20))
    img.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    return img


def _fixed_labels():
    """Two boxes (labels 1 and 2) on an oblique, anisotropic grid."""
    img = _oblique_grid((48, 40, 10), (1.5, 2.0, 3.0), sitk.sitkUInt8)
    arr = np.zeros((10, 40, 48), np.uint8)
    arr[2:8, 8:22, 6:20] = 1
    arr[3:9, 18:34, 26:42] = 2
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


def _moving_of(fixed, labels):
    """``moving(y) = fixed(y - SHIFT_MM)`` on another grid (other spacing), so ``p ↦ p + SHIFT_MM`` aligns them."""
    grid = _oblique_grid((52, 46, 16), (1.8, 2.2, 2.5), fixed.GetPixelID())
    grid.SetOrigin((-36.0, 2.0, -4.0))
    shift = sitk.TranslationTransform(3, tuple(-v for v in SHIFT_MM))
    return sitk.Resample(fixed, grid, shift, sitk.sitkNearestNeighbor if labels else sitk.sitkLinear, 0.0,
                         fixed.GetPixelID())


def _images():
    labels = _fixed_labels()
    fixed = sitk.SmoothingRecursiveGaussian(sitk.Cast(labels, sitk.sitkFloat32) * 60.0, 2.0)
    return fixed, _moving_of(fixed, labels=False)


def _field_transform(fixed):
    """The known answer as a displacement field on the fixed grid (what deformable/organ-points deliver)."""
    arr = np.zeros(fixed.GetSize()[::-1] + (3,))
    arr[...] = SHIFT_MM
    field = sitk.GetImageFromArray(arr, isVector=True)
    field.CopyInformation(fixed)
    return sitk.DisplacementFieldTransform(field)


def _expected_png_size(fixed):
    """What :func:`common.qa_picture` draws: the fixed middle slice (rows = y) upscaled to >= 320 rows, as a
    checkerboard and an overlay side by side, before above after."""
    ny, nx = fixed.GetSize()[1], fixed.GetSize()[0]
    factor = max(1.0, 320 / ny)
    return 2 * int(round(nx * factor)), 2 * int(round(ny * factor))


def _check_qa(path, fixed):
    """Valid PNG of the expected size; in the overlay (fixed in red, moving in green) the moving image matches
    the fixed one much better after than before."""
    assert path.read_bytes()[:8] == PNG_MAGIC
    qa = sitk.ReadImage(str(path))
    assert qa.GetSize() == _expected_png_size(fixed) and qa.GetNumberOfComponentsPerPixel() == 3
    rgb = sitk.GetArrayFromImage(qa).astype(float)
    h, w = rgb.shape[0] // 2, rgb.shape[1] // 2
    overlay_before, overlay_after = rgb[:h, w:], rgb[h:, w:]
    before = np.mean(np.abs(overlay_before[..., 0] - overlay_before[..., 1]))
    after = np.mean(np.abs(overlay_after[..., 0] - overlay_after[..., 1]))
    assert before > 10 and after < before / 4, (before, after)


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fixed, moving = _images()
    sitk.WriteImage(fixed, "fixed.nii.gz")
    sitk.WriteImage(moving, "moving.nii.gz")
    labels = _fixed_labels()
    sitk.WriteImage(labels, "fixed_labels.nii.gz")
    sitk.WriteImage(_moving_of(labels, labels=True), "moving_labels.nii.gz")
    return tmp_path


@pytest.fixture
def fake_deformable(monkeypatch):
    import RegistrationSuiteLib.methods.deformable as deformable

    def register(fixed, moving, config, **kw):
        d = {"similarity": {"name": "lncc", "before": 0.2, "after": 0.9}, "folding_fraction": 0.0,
             "jacobian_min": 1.0, "jacobian_max": 1.0}
        return RegistrationResult("deformable", _field_transform(fixed), timings={"total": 0.1}, diagnostics=d)
    monkeypatch.setattr(deformable, "register_deformable", register)


@pytest.fixture
def fake_organ_points(monkeypatch):
    import RegistrationSuiteLib.methods.organ_point_cloud as opc

    def register(fixed, moving, config, **kw):
        grid = sitk.ReadImage(str(fixed))
        d = {"labels": [1, 2], "skipped_labels": [], "iterations": 3, "sigma_mm": 1.0}
        return RegistrationResult("organ_point_cloud", _field_transform(grid), timings={"total": 0.1}, diagnostics=d)
    monkeypatch.setattr(opc, "register_organ_point_cloud", register)


@pytest.fixture
def fake_rigid(monkeypatch):
    import RegistrationSuiteLib.methods.global_rigid as gr

    def register(fixed, moving, config=None, **kw):
        return RegistrationResult("global_rigid", sitk.TranslationTransform(3, SHIFT_MM), score=0.5, confidence=0.1,
                                  timings={"total": 0.1})
    monkeypatch.setattr(gr, "register_global_rigid", register)


def _commands():
    return {
        "deformable": ["deformable", "--fixed", "fixed.nii.gz", "--moving", "moving.nii.gz", "--output", "t.h5",
                       "--output-jacobian", "j.nii.gz", "--output-inverse", "i.h5"],
        "organ-points": ["organ-points", "--fixed", "fixed_labels.nii.gz", "--moving", "moving_labels.nii.gz",
                         "--output", "t.h5", "--output-resampled-labels", "r.nii.gz"],
        "pipeline": ["pipeline", "--fixed", "fixed.nii.gz", "--moving", "moving.nii.gz", "--steps", "rigid-search",
                     "--output", "t.h5", "--output-resampled", "r.nii.gz"],
    }


@pytest.mark.parametrize("command", ["deformable", "organ-points", "pipeline"])
def test_output_qa_written_with_the_set(files, fake_deformable, fake_organ_points, fake_rigid, capsys, command):
    argv = _commands()[command]
    code = main(argv + ["--output-qa", "q.png", "--quiet"])
    assert code == 0, capsys.readouterr().err
    fixed = sitk.ReadImage(argv[argv.index("--fixed") + 1])
    _check_qa(files / "q.png", fixed)
    assert (files / "t.h5").exists()


@pytest.mark.parametrize("command", ["deformable", "organ-points", "pipeline"])
def test_output_qa_never_overwrites_an_input(files, capsys, monkeypatch, command):
    """``q.png`` is a link to the moving input: refused up front (exit 2, one line), nothing written."""
    import RegistrationSuiteLib.methods.deformable as deformable
    import RegistrationSuiteLib.methods.global_rigid as gr
    import RegistrationSuiteLib.methods.organ_point_cloud as opc

    def boom(*a, **k):
        raise AssertionError("the registration ran although an output was invalid")
    for module, name in ((deformable, "register_deformable"), (opc, "register_organ_point_cloud"),
                         (gr, "register_global_rigid")):
        monkeypatch.setattr(module, name, boom)
    argv = _commands()[command]
    moving = argv[argv.index("--moving") + 1]
    os.symlink(files / moving, files / "q.png")
    listing, before = sorted(os.listdir(files)), (files / moving).read_bytes()
    code = main(argv + ["--output-qa", "q.png"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and "--output-qa" in err[0] and "refusing to overwrite an input" in err[0], err
    assert sorted(os.listdir(files)) == listing and (files / moving).read_bytes() == before


@pytest.mark.parametrize("command", ["deformable", "organ-points", "pipeline"])
def test_nothing_written_on_bad_input(files, capsys, command):
    """The real commands: the unreadable moving file is refused (exit 2, one line) before anything is written."""
    (files / "broken.nii.gz").write_bytes(b"not an image")
    argv = ["broken.nii.gz" if a in ("moving.nii.gz", "moving_labels.nii.gz") else a for a in _commands()[command]]
    listing = sorted(os.listdir(files))
    code = main(argv + ["--output-qa", "q.png", "--quiet"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and "broken.nii.gz" in err[0], err
    assert sorted(os.listdir(files)) == listing


def test_organ_points_refuses_output_qa_for_point_files(files, monkeypatch, capsys):
    import RegistrationSuiteLib.methods.organ_point_cloud as opc

    def boom(*a, **k):
        raise AssertionError("the registration ran although --output-qa cannot be drawn for point files")
    monkeypatch.setattr(opc, "register_organ_point_cloud", boom)
    (files / "fixed.csv").write_text("x,y,z,label\n0,0,0,1\n1,0,0,1\n0,1,0,2\n")
    listing = sorted(os.listdir(files))
    code = main(["organ-points", "--fixed", "fixed.csv", "--moving", "moving_labels.nii.gz", "--output", "t.h5",
                 "--output-qa", "q.png"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and err == [err[0]] and "--output-qa needs label volumes" in err[0], err
    assert sorted(os.listdir(files)) == listing


def test_pipeline_step_cannot_take_output_qa(files, capsys):
    code = main(["pipeline", "--fixed", "fixed.nii.gz", "--moving", "moving.nii.gz", "--steps", "rigid-search",
                 "--output", "t.h5", "--step-options", "rigid-search:--output-qa s.png"])
    assert code == 2 and "--output-qa is set by the pipeline itself" in capsys.readouterr().err

"""Review images and quality figures: PNG encoding, Jacobian/folding known answers, previews per dimension."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.cohort.png import encode_png
from RegistrationSuiteLib.cohort.previews import render_pair_previews, render_single_image
from RegistrationSuiteLib.cohort.quality import doubtful_reasons, folding_percent

from tiny_cases import known_pair_2d, organ_labels


def test_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(encode_png(rgb))
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a.png")))
    np.testing.assert_array_equal(back, rgb)


def _linear_field(shape, slope, spacing=(2.0, 1.0, 1.5)):
    """u_x = slope · x (mm): det J = 1 + slope everywhere."""
    img = sitk.Image(list(shape), sitk.sitkFloat32)
    img.SetSpacing(spacing)
    x = np.arange(shape[0]) * spacing[0]
    arr = np.zeros(tuple(reversed(shape)) + (3,))
    arr[..., 0] = slope * x[None, None, :]
    field = sitk.GetImageFromArray(arr, isVector=True)
    field.CopyInformation(img)
    return sitk.DisplacementFieldTransform(field)


@pytest.mark.parametrize("slope,expected", [(0.5, 0.0), (-2.0, 100.0)])
def test_folding_percent_known_answer(slope, expected):
    assert folding_percent(_linear_field((10, 8, 6), slope)) == pytest.approx(expected)


def test_folding_none_for_linear_and_found_inside_composite():
    assert folding_percent(sitk.Euler3DTransform()) is None
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(sitk.TranslationTransform(3, (1.0, 0, 0)))
    composite.AddTransform(_linear_field((10, 8, 6), -2.0))
    assert folding_percent(composite) == pytest.approx(100.0)


def test_doubtful_reasons_from_any_place():
    assert doubtful_reasons({"doubtful": ["a"]}) == ["a"]
    assert doubtful_reasons({"diagnostics": {"doubtful": ["b"]}}) == ["b"]
    assert doubtful_reasons({"warnings": ["doubtful result: c", "other"]}) == ["doubtful result: c"]
    assert doubtful_reasons({"warnings": []}) == []


def test_previews_3d_three_planes_and_jacobian(tmp_path):
    rng = np.random.default_rng(1)
    fixed = sitk.GetImageFromArray(rng.random((12, 20, 16)).astype(np.float32))
    fixed.SetSpacing((1.0, 1.0, 3.0))  # anisotropic: drawn with square millimetres
    moving = sitk.GetImageFromArray(rng.random((14, 18, 16)).astype(np.float32))
    out = render_pair_previews(fixed, moving, _linear_field((16, 20, 12), 0.2, (1.0, 1.0, 3.0)), tmp_path)
    assert set(out) == {"checkerboard", "edges", "jacobian"}
    cb = sitk.GetArrayFromImage(sitk.ReadImage(str(out["checkerboard"])))
    # three planes side by side (4-pixel gaps), each scaled to square millimetres with its longer side 220 px:
    # axial 20 x 16 mm → 220 x 176, coronal 36 x 16 mm → 220 x 98, sagittal 36 x 20 mm → 220 x 122
    assert cb.shape == (220, 176 + 98 + 122 + 2 * 4, 3)
    jac = sitk.GetArrayFromImage(sitk.ReadImage(str(out["jacobian"]))).astype(float)
    # det J = 1.2 (expansion): reddish, not white, not black
    inner = jac[jac.shape[0] // 2, 5]
    assert inner[0] == 255 and inner[2] < 230


def test_previews_2d_one_plane_and_checkerboard_alternates(tmp_path):
    fixed, moving, truth = known_pair_2d()
    out = render_pair_previews(fixed, moving, truth, tmp_path)
    assert set(out) == {"checkerboard", "edges"}
    cb = sitk.GetArrayFromImage(sitk.ReadImage(str(out["checkerboard"])))
    assert cb.ndim == 3 and cb.shape[1] < 2 * cb.shape[0]  # one plane (the slide)


@pytest.mark.slow
def test_organ_points_output_report(tmp_path):
    """``--output-report`` on organ-points (label volumes): one self-contained page with the checkerboard, the
    edge overlay and the Jacobian map of its field; point-file inputs are refused before the run."""
    import subprocess
    import sys

    sitk.WriteImage(organ_labels(), str(tmp_path / "f.nii.gz"))
    sitk.WriteImage(organ_labels(shift_vox=3), str(tmp_path / "m.nii.gz"))
    cli = [sys.executable, "-m", "RegistrationSuiteLib", "organ-points", "--device", "cpu", "--points-per-organ", "300"]
    proc = subprocess.run(cli + ["--fixed", "f.nii.gz", "--moving", "m.nii.gz", "--output", "t.h5", "--output-report",
                                 "r.html", "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "r.html").read_text()
    assert page.count('src="data:image/png;base64,iVBOR') == 3 and "Jacobian" in page
    assert "http://" not in page and "https://" not in page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.nii.gz", "m.nii.gz", "r.html", "t.h5"]  # no leftovers
    (tmp_path / "p.csv").write_text("x,y,z,label\n0,0,0,1\n1,0,0,1\n0,1,0,2\n")
    proc = subprocess.run(cli + ["--fixed", "p.csv", "--moving", "p.csv", "--output", "t2.h5", "--output-report",
                                 "r2.html"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--output-report needs label volumes" in proc.stderr
    assert not (tmp_path / "t2.h5").exists() and not (tmp_path / "r2.html").exists()


def test_single_image_preview_for_a_pair_with_one_unreadable_input(tmp_path):
    """The report of a failed pair whose moving file is unreadable shows the fixed image alone, three planes."""
    from RegistrationSuiteLib.cohort.report import write_report

    rng = np.random.default_rng(4)
    fixed = sitk.GetImageFromArray(rng.random((12, 20, 16)).astype(np.float32))
    fixed.SetSpacing((1.0, 1.0, 3.0))
    sitk.WriteImage(fixed, str(tmp_path / "f.nii.gz"))
    png = sitk.GetArrayFromImage(sitk.ReadImage(str(render_single_image(tmp_path / "f.nii.gz", tmp_path / "one.png"))))
    assert png.shape == (220, 176 + 98 + 122 + 2 * 4, 3)  # the pair previews' three planes, square millimetres
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    d = tmp_path / "D"
    (d / "p").mkdir(parents=True)
    (d / "p" / "pair.json").write_text(json.dumps({"id": "p", "status": "failed", "fixed": str(tmp_path / "f.nii.gz"),
                                                    "moving": str(tmp_path / "broken.nii.gz"), "message": "bad"}))
    (d / "q").mkdir()
    (d / "q" / "pair.json").write_text(json.dumps({"id": "q", "status": "failed", "fixed": str(tmp_path / "broken.nii.gz"),
                                                    "moving": str(tmp_path / "broken.nii.gz"), "message": "bad"}))
    page = write_report(d).read_text()
    p_part, q_part = page.split('id="pair-p"')[1].split('id="pair-q"')
    assert p_part.count("data:image/png;base64,") == 1 and "the fixed image alone" in p_part
    assert "data:image/png" not in q_part and "no preview of the pair" in q_part  # nothing readable: a note


def _report_images(page: str) -> int:
    return page.count('src="data:image/png;base64,iVBOR')


def test_deformable_output_report(tmp_path):
    """``--output-report`` on deformable: the page shows the checkerboard, the edge overlay and the Jacobian map
    of the delivered field, and nothing else is left beside the outputs; a non-HTML name is refused up front."""
    import subprocess
    import sys

    from tiny_cases import known_deformable_pair_3d

    fixed, moving, _, _ = known_deformable_pair_3d()
    sitk.WriteImage(fixed, str(tmp_path / "f.nii.gz"))
    sitk.WriteImage(moving, str(tmp_path / "m.nii.gz"))
    cli = [sys.executable, "-m", "RegistrationSuiteLib", "deformable", "--device", "cpu", "--fixed", "f.nii.gz",
           "--moving", "m.nii.gz", "--spacing", "4", "--io-steps", "10", "--quiet"]
    proc = subprocess.run(cli + ["--output", "t.h5", "--output-report", "r.html"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "r.html").read_text()
    assert _report_images(page) == 3 and "Jacobian" in page, proc.stderr
    assert "http://" not in page and "https://" not in page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.nii.gz", "m.nii.gz", "r.html", "t.h5"]
    proc = subprocess.run(cli + ["--output", "t2.h5", "--output-report", "r.png"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--output-report" in proc.stderr
    assert not (tmp_path / "t2.h5").exists() and not (tmp_path / "r.png").exists()


def test_histology_output_report(tmp_path):
    """``--output-report`` on histology (RGB slides): one page with the slide's checkerboard, edge overlay and
    Jacobian map; a non-HTML page name is refused before the run, nothing written."""
    import subprocess
    import sys

    from tiny_cases import slide_pair_rgb

    fixed, moving, _, _ = slide_pair_rgb()
    for name, arr in (("f.png", fixed), ("m.png", moving)):
        sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=True), str(tmp_path / name))
    cli = [sys.executable, "-m", "RegistrationSuiteLib", "histology", "--device", "cpu", "--fixed", "f.png",
           "--moving", "m.png", "--quiet"]
    proc = subprocess.run(cli + ["--output", "t.h5", "--output-report", "r.html"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "r.html").read_text()
    assert _report_images(page) == 3 and "Jacobian" in page, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "m.png", "r.html", "t.h5"]
    proc = subprocess.run(cli + ["--output", "t2.h5", "--output-report", "f.png"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--output-report" in proc.stderr
    assert not (tmp_path / "t2.h5").exists()

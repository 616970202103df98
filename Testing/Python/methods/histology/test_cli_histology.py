"""``registration-suite histology``: end to end (outputs, landmark transfer both ways), and every bad input
refused with one line, exit code 2 and nothing written."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.cli.main import main
from RegistrationSuiteLib.methods.histology.landmarks import read_landmarks, write_landmarks

from .conftest import DAB_OD, HE_OD, about_centre, moving_density, rotation, stain, tissue_density

CLI = [sys.executable, "-m", "RegistrationSuiteLib"]
POINTS = np.array([[60.0, 100.0], [128.0, 128.0], [180.0, 90.0], [100.0, 170.0]])


def _png(path, rgb):
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))
    return str(path)


@pytest.fixture
def pair(tmp_path):
    d = tissue_density(256)
    matrix = rotation(40.0)
    offset = about_centre(matrix, (128, 128), (6.0, -4.0))
    inputs = tmp_path / "in"
    inputs.mkdir()
    fixed = _png(inputs / "fixed.png", stain(d, HE_OD))
    moving = _png(inputs / "moving.png", stain(moving_density(d, matrix, offset), DAB_OD, 1.2))
    write_landmarks(POINTS, inputs / "fixed.csv")
    write_landmarks(POINTS @ matrix.T + offset, inputs / "moving.csv")
    out = tmp_path / "out"
    out.mkdir()
    return fixed, moving, inputs, out, matrix, offset


def test_end_to_end_outputs_and_landmarks(pair):
    fixed, moving, inputs, out, matrix, offset = pair
    args = ["histology", "--fixed", fixed, "--moving", moving, "--output", str(out / "t.h5"),
            "--fixed-landmarks", str(inputs / "fixed.csv"), "--output-landmarks", str(out / "in_moving.csv"),
            "--moving-landmarks", str(inputs / "moving.csv"), "--output-fixed-landmarks", str(out / "in_fixed.csv"),
            "--output-resampled", str(out / "warped.png"), "--output-checkerboard", str(out / "check.png"),
            "--working-size", "256", "--json"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(CLI + args, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["method"] == "histology" and summary["transform_type"] == "DisplacementFieldTransform"
    assert any("1 unit = 1" in w for w in summary["warnings"])
    in_moving = read_landmarks(out / "in_moving.csv")
    np.testing.assert_allclose(in_moving, POINTS @ matrix.T + offset, atol=1.5)
    np.testing.assert_allclose(read_landmarks(out / "in_fixed.csv"), POINTS, atol=1.5)
    tx = sitk.ReadTransform(str(out / "t.h5"))  # sitk-readable, fixed → moving
    np.testing.assert_allclose(tx.TransformPoint(tuple(POINTS[1])), POINTS[1] @ matrix.T + offset, atol=1.5)
    warped = sitk.ReadImage(str(out / "warped.png"))
    assert warped.GetNumberOfComponentsPerPixel() == 3 and warped.GetSize() == (256, 256)
    assert sitk.ReadImage(str(out / "check.png")).GetSize() == (256, 256)


def test_field_image_output(pair):
    fixed, moving, _, out, matrix, offset = pair
    code = main(["histology", "--fixed", fixed, "--moving", moving, "--output", str(out / "field.mha"),
                 "--working-size", "128", "--io-steps", "0", "--quiet"])
    assert code == 0
    field = sitk.ReadImage(str(out / "field.mha"))
    assert field.GetNumberOfComponentsPerPixel() == 2 and field.GetDimension() == 2
    tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    np.testing.assert_allclose(tx.TransformPoint(tuple(POINTS[1])), POINTS[1] @ matrix.T + offset, atol=2.0)


def _refused(capsys, out, argv, match):
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(err) == 1 and match in err[0], err
    assert list(out.iterdir()) == []


def _base(pair, **extra):
    fixed, moving, _, out, _, _ = pair
    argv = ["histology", "--fixed", fixed, "--moving", moving, "--output", str(out / "t.h5"), "--io-steps", "0",
            "--working-size", "128", "--quiet"]
    for k, v in extra.items():
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is None else [str(v)])
    return argv


def test_missing_file(pair, capsys):
    argv = _base(pair)
    argv[argv.index("--moving") + 1] = "nope.png"
    _refused(capsys, pair[3], argv, "moving: file not found")


def test_landmarks_wrong_columns(pair, capsys):
    bad = pair[2] / "bad.csv"
    bad.write_text("id,a,b\n0,1,2\n")
    _refused(capsys, pair[3], _base(pair, fixed_landmarks=bad, output_landmarks=pair[3] / "l.csv"),
             "expected columns X,Y")


def test_landmarks_outside_image(pair, capsys):
    bad = pair[2] / "far.csv"
    write_landmarks(np.array([[10.0, 10.0], [900.0, 5.0]]), bad)
    _refused(capsys, pair[3], _base(pair, fixed_landmarks=bad, output_landmarks=pair[3] / "l.csv"),
             "outside the 256x256 image")


def test_landmark_options_go_together(pair, capsys):
    _refused(capsys, pair[3], _base(pair, fixed_landmarks=pair[2] / "fixed.csv"), "go together")


def test_level_out_of_range(pair, capsys):
    _refused(capsys, pair[3], _base(pair, level=2), "--level 2 requested but fixed.png has a single level")


def test_resolution_without_pixel_size(pair, capsys):
    _refused(capsys, pair[3], _base(pair, resolution_um=2.0), "needs a pixel size in the file")


def test_no_tissue(pair, capsys):
    blank = _png(pair[2] / "blank.png", np.full((256, 256, 3), 240, np.uint8))
    argv = _base(pair)
    argv[argv.index("--moving") + 1] = blank
    _refused(capsys, pair[3], argv, "moving: no tissue found")


def test_wildly_different_resolution(pair, capsys):
    big = _png(pair[2] / "big.png", stain(tissue_density(1280), HE_OD))
    argv = _base(pair)
    argv[argv.index("--moving") + 1] = big
    _refused(capsys, pair[3], argv, "sizes differ by a factor 5.0")


def test_multipage_tiff(pair, capsys):
    tifffile = pytest.importorskip("tifffile")
    stack = pair[2] / "stack.tif"
    tifffile.imwrite(str(stack), np.random.default_rng(0).integers(0, 255, (4, 64, 64), dtype=np.uint8),
                     photometric="minisblack")
    argv = _base(pair)
    argv[argv.index("--fixed") + 1] = str(stack)
    _refused(capsys, pair[3], argv, "is not a single 2D plane")


def test_unreadable_pyramid(pair, capsys):
    pytest.importorskip("tifffile", reason="pyramids are read with tifffile (pip install 'registration-suite[histology]')")
    bad = pair[2] / "broken.svs"
    bad.write_bytes(b"II*\x00\x08\x00\x00\x00" + b"\xff" * 40)
    argv = _base(pair)
    argv[argv.index("--fixed") + 1] = str(bad)
    _refused(capsys, pair[3], argv, "fixed: cannot read")


def test_unknown_model(pair, capsys):
    _refused(capsys, pair[3], _base(pair, model="mm-net"), "--model: model: no model named 'mm-net'")


def test_model_file_of_another_kind(pair, capsys):
    import torch

    from RegistrationSuiteLib.models.model_file import ModelFile, save_model

    other = pair[2] / "other.pt"
    save_model(ModelFile(kind="deformable_field", network_name="x", network_config={}, state_dict={"w": torch.zeros(2)},
                         card={k: None for k in ("name", "summary", "training_data", "data_licence", "command", "seed",
                                                 "metrics")}), other)
    _refused(capsys, pair[3], _base(pair, model=str(other)), "histology_multimag")


def test_model_with_instance_optimisation_refused(pair, capsys, tiny_model):
    _refused(capsys, pair[3], _base(pair, model=str(tiny_model), io_steps=5), "--io-steps: the instance optimisation")


def test_io_size_too_small(pair, capsys):
    _refused(capsys, pair[3], _base(pair, io_steps=5, io_size=16), "io_size: expected an integer >= 32")


def test_unknown_io_similarity(pair, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse choices: usage line and exit 2
        main(_base(pair, io_steps=5, io_similarity="mi"))
    assert exc.value.code == 2 and list(pair[3].iterdir()) == []


def test_bad_output_suffix(pair, capsys):
    argv = _base(pair)
    argv[argv.index("--output") + 1] = str(pair[3] / "t.png")
    _refused(capsys, pair[3], argv, "--output: expected a transform")


def test_output_qa_is_the_checkerboard(pair):
    """``--output-qa`` means what it means in the other commands' option lists: the QA picture, here the
    fixed / warped-moving checkerboard (a valid PNG the size of the fixed slide)."""
    out = pair[3]
    argv = _base(pair, output_qa=out / "qa.png")
    assert main(argv) == 0
    data = (out / "qa.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    qa = sitk.ReadImage(str(out / "qa.png"))
    assert qa.GetSize() == (256, 256) and qa.GetNumberOfComponentsPerPixel() == 3
    fixed = sitk.GetArrayFromImage(sitk.ReadImage(pair[0]))
    rgb = sitk.GetArrayFromImage(qa)
    assert np.array_equal(rgb[:32, :32], fixed[:32, :32]) and not np.array_equal(rgb, fixed)  # squares alternate


def test_output_qa_never_an_input(pair, capsys):
    _refused(capsys, pair[3], _base(pair, output_qa=pair[0]), "refusing to overwrite an input")


def test_output_qa_nothing_written_on_bad_input(pair, capsys):
    argv = _base(pair, output_qa=pair[3] / "qa.png")
    argv[argv.index("--moving") + 1] = "nope.png"
    _refused(capsys, pair[3], argv, "moving: file not found")

"""Outputs of the CLI: checked before the work, never an input, written as a set, relative paths, the demo's
listing, the short ``--json``, and exit-4 messages that are whole and say how to get the traceback."""

import json
import os
import stat

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.cli import common, main as cli_main, rigid_search
from RegistrationSuiteLib.cli.main import main
from RegistrationSuiteLib.geometry import sitk_affine_from_matrix
from RegistrationSuiteLib.result import RegistrationResult


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """Small fixed/moving files in a temporary working folder (relative paths work there)."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for name in ("fixed", "moving"):
        img = sitk.GetImageFromArray((rng.random((12, 14, 16)) * 200).astype(np.uint8))
        img.SetSpacing((2.0, 2.0, 2.0))
        sitk.WriteImage(img, f"{name}.nii.gz")
    return tmp_path


def _fake_result(matrix=None):
    m = np.eye(4) if matrix is None else matrix
    return RegistrationResult("global_rigid", sitk_affine_from_matrix(m), score=0.4, confidence=0.001,
                              timings={"total": 1.0}, diagnostics={"doubtful": ["confidence low"], "big": list(range(500))})


def _no_registration(monkeypatch):
    """Make the registration an error so a test proves the refusal came *before* it."""
    import RegistrationSuiteLib.methods.global_rigid as gr

    def boom(*a, **k):
        raise AssertionError("the registration ran although an output was invalid")
    monkeypatch.setattr(gr, "register_global_rigid", boom)


@pytest.mark.parametrize("extra, message", [
    (["--output-resampled", "r.xyz"], "--output-resampled: file must end with"),
    (["--output-resampled", "moving.nii.gz"], "refusing to overwrite an input"),
    (["--output-resampled", "fixed.nii.gz"], "refusing to overwrite an input"),
    (["--output-scene", "nofolder/s.mrb"], "--output-scene: folder does not exist"),
    (["--output-qa", "q.jpg"], "--output-qa: file must end with one of .png"),
    (["--output-resampled", "r.png"], "holds 2D images only"),
])
def test_rigid_search_outputs_checked_before_registering(inputs, monkeypatch, capsys, extra, message):
    _no_registration(monkeypatch)
    before = (inputs / "moving.nii.gz").read_bytes()
    code = main(["rigid-search", "--fixed", "fixed.nii.gz", "--moving", "moving.nii.gz", "--output", "t.h5"] + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert (inputs / "moving.nii.gz").read_bytes() == before and not (inputs / "t.h5").exists()


def test_output_symlinked_to_input_refused(inputs, monkeypatch, capsys):
    _no_registration(monkeypatch)
    os.symlink(inputs / "moving.nii.gz", inputs / "link.nii.gz")
    code = main(["rigid-search", "--fixed", "fixed.nii.gz", "--moving", "moving.nii.gz", "--output", "t.h5",
                 "--output-resampled", "link.nii.gz"])
    assert code == 2 and "is the input --moving" in capsys.readouterr().err


@pytest.mark.parametrize("command, extra", [
    ("deformable", ["--output-jacobian", "fixed.nii.gz"]),
    ("histology", ["--output-resampled", "moving.nii.gz"]),
    ("organ-points", ["--output-resampled-labels", "moving.nii.gz"]),
    ("organ-points", ["--output-points", "fixed.csv"]),
    ("partial-prereg", ["--output-resampled", "./moving.nii.gz"]),
])
def test_every_command_refuses_to_overwrite_an_input(inputs, capsys, command, extra):
    (inputs / "fixed.csv").write_text("x,y,z,label\n0,0,0,1\n")
    fixed = "fixed.csv" if "fixed.csv" in extra else "fixed.nii.gz"
    before = (inputs / extra[1]).read_bytes()
    code = main([command, "--fixed", fixed, "--moving", "moving.nii.gz", "--output", "t.h5"] + extra)
    assert code == 2 and "refusing to overwrite an input" in capsys.readouterr().err
    assert (inputs / extra[1]).read_bytes() == before


@pytest.mark.parametrize("command", ["deformable", "histology"])
def test_field_image_output_never_an_input(inputs, capsys, command):
    before = (inputs / "moving.nii.gz").read_bytes()
    code = main([command, "--fixed", "fixed.nii.gz", "--moving", "moving.nii.gz", "--output", "moving.nii.gz"])
    assert code == 2 and "refusing to overwrite an input" in capsys.readouterr().err
    assert (inputs / "moving.nii.gz").read_bytes() == before


def test_outputs_written_as_a_set_and_failure_names_the_output(inputs, monkeypatch, capsys):
    import RegistrationSuiteLib.methods.global_rigid as gr

    monkeypatch.setattr(gr, "register_global_rigid", lambda *a, **k: _fake_result())

    def broken_qa(*a, **k):
        raise RuntimeError("disk full\nsecond line")
    monkeypatch.setattr(common, "qa_picture", broken_qa)
    code = main(["rigid-search", "--fixed", "fixed.nii.gz", "--moving", "moving.nii.gz", "--output", "t.h5",
                 "--output-resampled", "r.nii.gz", "--output-qa", "q.png"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 4 and "--output-qa" in err and "disk full second line" in err and "--debug" in err
    assert sorted(os.listdir(inputs)) == ["fixed.nii.gz", "moving.nii.gz"]  # nothing kept, no temporary left


def test_resampled_keeps_pixel_type_short_json_and_full_diagnostics(inputs, monkeypatch, capsys):
    import RegistrationSuiteLib.methods.global_rigid as gr

    shift = np.eye(4)
    shift[:3, 3] = [2.0, 0.0, 0.0]  # one voxel along x
    monkeypatch.setattr(gr, "register_global_rigid", lambda *a, **k: _fake_result(shift))
    code = main(["rigid-search", "--fixed", "fixed.nii.gz", "--moving", "moving.nii.gz", "--output", "t.h5",
                 "--output-resampled", "r.nii.gz", "--output-qa", "q.png", "--output-diagnostics", "d.json",
                 "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out.strip())
    assert summary["doubtful"] == ["confidence low"]
    assert "diagnostics" not in summary and len(out) < 2000
    assert {"fixed_to_moving_lps", "score", "confidence", "timings", "outputs"} <= set(summary)
    assert len(json.loads((inputs / "d.json").read_text())["diagnostics"]["big"]) == 500
    resampled = sitk.ReadImage("r.nii.gz")
    assert resampled.GetPixelID() == sitk.sitkUInt8
    moving = sitk.GetArrayFromImage(sitk.ReadImage("moving.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(resampled)[:, :, :-1], moving[:, :, 1:])
    qa = sitk.ReadImage("q.png")
    assert qa.GetNumberOfComponentsPerPixel() == 3
    mode = stat.S_IMODE(os.stat("r.nii.gz").st_mode)
    assert mode == 0o666 & ~_umask()


def _umask():
    old = os.umask(0)
    os.umask(old)
    return old


def test_exit_4_message_whole_with_debug_hint(monkeypatch, capsys):
    def crash(args):
        raise RuntimeError("ITK failed writing /some/long/path/to/a/file.nii.gz\nitk::ERROR: details")
    monkeypatch.setattr(rigid_search, "run", crash)
    code = main(["rigid-search", "--fixed", "f", "--moving", "m", "--output", "t.h5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli_main.EXIT_BUG and len(err) == 1
    assert "/some/long/path/to/a/file.nii.gz itk::ERROR: details" in err[0] and "rerun with --debug" in err[0]


@pytest.mark.parametrize("device, ok", [("cuda:1", True), ("CPU", True), ("gpu", False)])
def test_device_option_same_everywhere(device, ok, capsys):
    from RegistrationSuiteLib.cli.main import build_parser

    for command in ("rigid-search", "partial-prereg", "organ-points", "deformable", "histology", "demo"):
        argv = [command, "--fixed", "f", "--moving", "m", "--output", "t.h5", "--device", device]
        if command == "demo":
            argv = ["demo", "--device", device]
        if ok:
            assert build_parser().parse_args(argv).device == device.lower()
        else:
            with pytest.raises(SystemExit):
                build_parser().parse_args(argv)


def test_demo_relative_output_dir_lists_every_file(tmp_path, monkeypatch, capsys):
    """The README's command: a relative --output-dir, scene included; the last line names every file."""
    pytest.importorskip("slicer", reason="the demo's scene needs slicer-core")
    import RegistrationSuiteLib.methods.global_rigid as gr
    from RegistrationSuiteLib.sample_data import known_rigid_case, load_sample

    _, truth = known_rigid_case(load_sample("T1"))
    monkeypatch.setattr(gr, "register_global_rigid", lambda *a, **k: _fake_result(truth))
    monkeypatch.chdir(tmp_path)
    code = main(["demo", "--output-dir", "demo-output", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "ERR|" not in err and "vtk" not in err.lower()
    files = sorted(os.listdir(tmp_path / "demo-output"))
    assert "scene.mrb" in files and "transform_fixed_to_moving.h5" in files and len(files) == 7
    last = out.strip().splitlines()[-1]
    assert all(f in last for f in files), last
    assert stat.S_IMODE(os.stat(tmp_path / "demo-output" / "scene.mrb").st_mode) == 0o666 & ~_umask()


def test_panel_summary_says_doubtful():
    """The modules' result label (RegistrationSuiteWidgets.results, no Qt needed) flags a doubtful result."""
    import importlib.util
    from pathlib import Path

    widgets = Path(__file__).resolve().parents[3] / "RegistrationSuite" / "RegistrationSuite" / "RegistrationSuiteWidgets"
    path = widgets / "results.py"
    spec = importlib.util.spec_from_file_location("results_for_test", path)
    results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results)
    text = results.formatResultSummary(_fake_result(), 2.0)
    assert "DOUBTFUL" in text.splitlines()[1]
    good = _fake_result()
    good.diagnostics["doubtful"] = []
    assert "DOUBTFUL" not in results.formatResultSummary(good, 2.0)

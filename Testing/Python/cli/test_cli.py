"""The command-line contract: help, end to end on shipped data, one-line errors, no partial outputs."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.cli.main import main
from RegistrationSuiteLib.geometry import Grid, affine_matrix_from_sitk, apply_affine
from RegistrationSuiteLib.sample_data import known_rigid_case, load_sample, sample_path

CLI = [sys.executable, "-m", "RegistrationSuiteLib"]


@pytest.fixture(scope="module")
def sample_case(tmp_path_factory):
    """Shipped T2 as moving, shipped T1 rotated 25° and shifted as fixed; known fixed→moving."""
    d = tmp_path_factory.mktemp("case")
    fixed, truth = known_rigid_case(load_sample("T1"))
    sitk.WriteImage(fixed, str(d / "fixed.nii.gz"))
    return d, d / "fixed.nii.gz", sample_path("T2"), truth


def _corner_error(fixed_path, estimate, truth):
    corners = Grid.from_image(sitk.ReadImage(str(fixed_path))).corners()
    return np.linalg.norm(apply_affine(estimate, corners) - apply_affine(truth, corners), axis=1).mean()


@pytest.mark.parametrize("command", [[], ["rigid-search"], ["demo"], ["organ-points"]])
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main(command + ["--help"])
    assert exc.value.code == 0
    assert "usage: registration-suite" in capsys.readouterr().out


def test_building_the_parser_does_not_import_torch():
    """Every command builds every sub-parser: help texts must not pull in torch (1 s of start-up per run)."""
    code = ("import sys\nfrom RegistrationSuiteLib.cli.main import build_parser\nbuild_parser()\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_python_m_entry_point():
    out = subprocess.run(CLI + ["--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "registration-suite" in out.stdout


def test_rigid_search_end_to_end(sample_case, tmp_path):
    d, fixed, moving, truth = sample_case
    out_t, out_r, out_s = tmp_path / "t.h5", tmp_path / "r.nii.gz", tmp_path / "s.mrb"
    proc = subprocess.run(
        CLI + ["rigid-search", "--fixed", str(fixed), "--moving", str(moving), "--output", str(out_t),
               "--output-resampled", str(out_r), "--output-scene", str(out_s), "--json", "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"score", "confidence", "timings", "fixed_to_moving_lps"} <= set(summary)
    estimate = affine_matrix_from_sitk(sitk.ReadTransform(str(out_t)))
    np.testing.assert_allclose(estimate, np.array(summary["fixed_to_moving_lps"]), atol=1e-5)
    assert _corner_error(fixed, estimate, truth) < 5.0
    resampled = sitk.ReadImage(str(out_r))
    assert resampled.GetSize() == sitk.ReadImage(str(fixed)).GetSize()
    assert out_s.stat().st_size > 1000 and "[" in proc.stderr  # progress was shown on stderr


def _run_cli(args, tmp_path):
    proc = subprocess.run(CLI + args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("[")]
    return proc, lines


def test_missing_file_one_line_error_no_output(tmp_path):
    out = tmp_path / "t.h5"
    proc, lines = _run_cli(["rigid-search", "--fixed", "nope.nii.gz", "--moving", str(sample_path("T2")),
                            "--output", str(out)], tmp_path)
    assert proc.returncode == 2
    assert lines == [lines[0]] and "fixed: file not found" in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()


def test_dimension_mismatch(tmp_path):
    img2d = sitk.GetImageFromArray(np.random.default_rng(0).random((20, 20)).astype(np.float32))
    sitk.WriteImage(img2d, str(tmp_path / "a.nii.gz"))
    proc, lines = _run_cli(["rigid-search", "--fixed", "a.nii.gz", "--moving", str(sample_path("T2")),
                            "--output", "t.h5"], tmp_path)
    assert proc.returncode == 2 and len(lines) == 1 and "2D" in lines[0] and "3D" in lines[0]
    assert not (tmp_path / "t.h5").exists()


def test_bad_output_suffix_rejected_before_running(tmp_path):
    proc, lines = _run_cli(["rigid-search", "--fixed", str(sample_path("T1")), "--moving", str(sample_path("T2")),
                            "--output", "t.nii.gz"], tmp_path)
    assert proc.returncode == 2 and "must end with" in lines[0]


def test_nan_image_rejected(tmp_path):
    arr = sitk.GetArrayFromImage(load_sample("T1"))
    arr[10, 10, 10] = np.nan
    img = sitk.GetImageFromArray(arr)
    sitk.WriteImage(img, str(tmp_path / "nan.mha"))
    proc, lines = _run_cli(["rigid-search", "--fixed", "nan.mha", "--moving", str(sample_path("T2")),
                            "--output", "t.h5"], tmp_path)
    assert proc.returncode == 2 and "NaN/Inf" in lines[0] and not (tmp_path / "t.h5").exists()


def test_empty_mask_rejected(tmp_path):
    mask = sitk.Image(load_sample("T1").GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(load_sample("T1"))
    sitk.WriteImage(mask, str(tmp_path / "m.nii.gz"))
    proc, lines = _run_cli(["rigid-search", "--fixed", str(sample_path("T1")), "--moving", str(sample_path("T2")),
                            "--fixed-mask", "m.nii.gz", "--output", "t.h5"], tmp_path)
    assert proc.returncode == 2 and "mask is empty" in lines[0]


def test_debug_shows_traceback(tmp_path):
    proc, _ = _run_cli(["rigid-search", "--fixed", "nope.nii.gz", "--moving", "x", "--output", "t.h5", "--debug"],
                       tmp_path)
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_interrupt_mid_run_leaves_no_output(sample_case, tmp_path):
    _, fixed, moving, _ = sample_case
    out_t, out_r = tmp_path / "t.h5", tmp_path / "r.nii.gz"
    proc = subprocess.Popen(
        CLI + ["rigid-search", "--fixed", str(fixed), "--moving", str(moving), "--output", str(out_t),
               "--output-resampled", str(out_r), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a pytest started as a background job ignores SIGINT, and the child would inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # wait until the search reports progress, then interrupt it
    deadline = time.monotonic() + 120
    line = ""
    while time.monotonic() < deadline and "[" not in line:
        line = proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "cancelled" in err
    assert sorted(os.listdir(tmp_path)) == []

"""``registration-suite organ-points`` end to end on synthetic label volumes, and its bad inputs."""

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.io.points import read_points

CLI = [sys.executable, "-m", "RegistrationSuiteLib", "organ-points"]


def _labels(shift_vox=(0, 0, 0)):
    """Two ellipsoid 'organs' (labels 1 and 2) on a 2 mm grid; ``shift_vox`` moves organ 2 only."""
    z, y, x = np.mgrid[0:40, 0:48, 0:56].astype(float)
    arr = np.zeros(z.shape, np.uint8)
    arr[((x - 18) / 9) ** 2 + ((y - 24) / 11) ** 2 + ((z - 20) / 8) ** 2 <= 1] = 1
    sx, sy, sz = shift_vox
    arr[((x - 38 - sx) / 8) ** 2 + ((y - 24 - sy) / 9) ** 2 + ((z - 20 - sz) / 10) ** 2 <= 1] = 2
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 2.0, 2.0))
    img.SetOrigin((-50.0, 20.0, 5.0))
    return img


def test_organ_points_end_to_end_direction(tmp_path):
    sitk.WriteImage(_labels(), str(tmp_path / "fixed.nii.gz"))
    sitk.WriteImage(_labels(shift_vox=(3, 0, 0)), str(tmp_path / "moving.nii.gz"))  # organ 2 moves +6 mm in x
    out = subprocess.run(
        CLI + ["--fixed", "fixed.nii.gz", "--moving", "moving.nii.gz", "--output", "t.h5", "--points-per-organ",
               "400", "--output-points", "p.csv", "--output-resampled-labels", "r.nii.gz", "--json",
               "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["transform_type"] == "DisplacementFieldTransform"
    field = sitk.ReadTransform(str(tmp_path / "t.h5"))
    # fixed → moving: a point at organ 2's centre maps about +6 mm in x; organ 1's centre barely moves
    c2 = np.array(sitk.ReadImage(str(tmp_path / "fixed.nii.gz")).TransformContinuousIndexToPhysicalPoint((38, 24, 20)))
    c1 = np.array(sitk.ReadImage(str(tmp_path / "fixed.nii.gz")).TransformContinuousIndexToPhysicalPoint((18, 24, 20)))
    assert np.asarray(field.TransformPoint(tuple(c2)))[0] - c2[0] == pytest.approx(6.0, abs=2.0)
    assert abs(np.asarray(field.TransformPoint(tuple(c1)))[0] - c1[0]) < 2.0
    pts = read_points(tmp_path / "p.csv")
    assert set(np.unique(pts.labels)) == {1, 2}
    resampled = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "r.nii.gz")))
    fixed = sitk.GetArrayFromImage(_labels())
    dice = 2 * np.sum((resampled == 2) & (fixed == 2)) / (np.sum(resampled == 2) + np.sum(fixed == 2))
    assert dice > 0.85


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lambda-mm", "0"], "lambda"),
        (["--beta-mm", "-3"], "beta"),
        (["--labels", "1,x"], "--labels"),
        (["--labels", "7,8"], "label"),
    ],
)
def test_organ_points_bad_input(tmp_path, extra, message):
    sitk.WriteImage(_labels(), str(tmp_path / "f.nii.gz"))
    sitk.WriteImage(_labels(), str(tmp_path / "m.nii.gz"))
    out = subprocess.run(CLI + ["--fixed", "f.nii.gz", "--moving", "m.nii.gz", "--output", "t.h5", *extra],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = [l for l in out.stderr.splitlines() if l.strip() and not l.startswith("[")]
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and message.lower() in lines[0].lower() and "Traceback" not in out.stderr
    assert not (tmp_path / "t.h5").exists()


def test_organ_points_matrix_files(tmp_path):
    sitk.WriteImage(_labels(), str(tmp_path / "f.nii.gz"))
    np.savetxt(tmp_path / "S.csv", [[1.0, 2.0], [0.0, 1.0]], delimiter=",")  # not symmetric
    out = subprocess.run(CLI + ["--fixed", "f.nii.gz", "--moving", "f.nii.gz", "--output", "t.h5",
                                "--labels", "1,2", "--coherence", "S.csv"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "symmetric" in out.stderr


@pytest.mark.parametrize("extra, spread", [([], True), (["--sampling", "random"], False), (["--sampling", "spread"], True)])
def test_organ_points_sampling_option_reaches_the_config(extra, spread):
    import argparse

    from RegistrationSuiteLib.cli import organ_points

    parser = argparse.ArgumentParser()
    organ_points.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["organ-points", "--fixed", "f.nii.gz", "--moving", "m.nii.gz", "--output", "t.h5", *extra])
    assert organ_points.build_config(args).spread_sampling is spread
    with pytest.raises(SystemExit):
        parser.parse_args(["organ-points", "--fixed", "f", "--moving", "m", "--output", "t.h5", "--sampling", "grid"])

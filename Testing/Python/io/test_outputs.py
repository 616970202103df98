"""Atomic outputs keep the user's umask; an OutputSet writes all of its outputs or none."""

import gzip
import os
import stat

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.io import read_image, write_image
from RegistrationSuiteLib.io import outputs as outputs_mod
from RegistrationSuiteLib.io.outputs import OutputSet, OutputWriteError


def _image():
    return sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_created_like_open_under_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_image(_image(), tmp_path / "a.nii.gz")
        with open(tmp_path / "ref.txt", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "a.nii.gz").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "ref.txt").st_mode) == 0o666 & ~umask


def test_failure_keeps_nothing_and_restores_replaced_files(tmp_path, monkeypatch):
    (tmp_path / "b.txt").write_text("previous")
    outs = OutputSet()
    outs.add("--a", tmp_path / "a.txt")
    outs.add("--b", tmp_path / "b.txt")
    for opt in ("--a", "--b"):
        with outs.stage(opt) as tmp:
            open(tmp, "w").write("new " + opt)
    real_replace = os.replace
    failed = []

    def failing_replace(src, dst):
        # moving the staged b.txt (not the backup of the old one) into place fails, once
        if os.path.basename(src) == "b.txt" and os.path.basename(dst) == "b.txt" and not failed:
            failed.append(src)
            raise OSError("no space left")
        return real_replace(src, dst)
    monkeypatch.setattr(outputs_mod.os, "replace", failing_replace)
    with pytest.raises(OutputWriteError, match="--b"):
        outs.commit()
    assert sorted(os.listdir(tmp_path)) == ["b.txt"]  # a.txt taken back, no temporary folder left
    assert (tmp_path / "b.txt").read_text() == "previous"


def test_writer_error_names_the_option_and_nothing_is_placed(tmp_path):
    with OutputSet() as outs:
        outs.add("--output", tmp_path / "t.txt")
        outs.add("--output-qa", tmp_path / "q.png")
        with outs.stage("--output") as tmp:
            open(tmp, "w").write("t")
        with pytest.raises(OutputWriteError, match="--output-qa: could not write"):
            with outs.stage("--output-qa"):
                raise RuntimeError("writer failed")
    assert os.listdir(tmp_path) == []


def test_same_file_twice_refused(tmp_path):
    outs = OutputSet({"--moving": str(tmp_path / "m.nii.gz")})
    outs.add("--a", tmp_path / "x.nii.gz")
    with pytest.raises(InputError, match="give each output its own file"):
        outs.add("--b", tmp_path / "sub" / ".." / "x.nii.gz")
    with pytest.raises(InputError, match="is the input --moving"):
        outs.add("--c", tmp_path / "m.nii.gz")


def _nifti(tmp_path, name="x.nii", nan_at=None):
    arr = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "plain.nii"))
    raw = bytearray((tmp_path / "plain.nii").read_bytes())
    if nan_at is not None:
        raw[352 + 4 * nan_at: 356 + 4 * nan_at] = np.float32(np.nan).tobytes()
    return raw


def test_truncated_gzip_nifti_refused(tmp_path):
    raw = bytes(_nifti(tmp_path))
    (tmp_path / "t.nii.gz").write_bytes(gzip.compress(raw)[:-40])
    assert sitk.ReadImage(str(tmp_path / "t.nii.gz")).GetSize() == (8, 7, 6)  # ITK alone accepts it
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_image(tmp_path / "t.nii.gz", "moving")


def test_truncated_plain_nifti_refused(tmp_path):
    raw = _nifti(tmp_path)
    (tmp_path / "t.nii").write_bytes(bytes(raw[:-100]))
    with pytest.raises(InputError, match="truncated"):
        read_image(tmp_path / "t.nii", "fixed")


@pytest.mark.parametrize("name", ["n.nii", "n.nii.gz"])
def test_nan_voxels_in_nifti_refused_although_the_reader_zeroes_them(tmp_path, name):
    raw = bytes(_nifti(tmp_path, nan_at=17))
    (tmp_path / name).write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    assert not np.isnan(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name)))).any()
    with pytest.raises(InputError, match="1 NaN/Inf voxels"):
        read_image(tmp_path / name, "fixed")


def test_intact_nifti_accepted_with_its_pixel_type(tmp_path):
    img = sitk.Cast(_image(), sitk.sitkInt16)
    write_image(img, tmp_path / "ok.nii.gz")
    assert read_image(tmp_path / "ok.nii.gz").pixel_id == sitk.sitkInt16

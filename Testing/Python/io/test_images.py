"""Image input validation: every bad input named in the foundation issue gives a clear InputError."""

import os

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.io import atomic_output, read_image, read_mask, write_image, write_transform, read_transform


def _image(arr, spacing=None):
    img = sitk.GetImageFromArray(np.asarray(arr))
    if spacing:
        img.SetSpacing(spacing)
    return img


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"fixed: file not found"):
        read_image(tmp_path / "nope.nii.gz", "fixed")


def test_unreadable_file(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(InputError, match=r"moving: cannot read image"):
        read_image(bad, "moving")


def test_empty_folder_is_not_a_dicom_series(tmp_path):
    with pytest.raises(InputError, match="no DICOM series"):
        read_image(tmp_path, "fixed")


def test_4d_image_rejected(tmp_path):
    path = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.Image([4, 4, 4, 3], sitk.sitkFloat32), str(path))
    with pytest.raises(InputError, match=r"expected a 2D or 3D scalar image, got a 4D image"):
        read_image(path, "fixed")


def test_3d_vector_image_rejected():
    vec = sitk.Image([5, 5, 5], sitk.sitkVectorFloat32, 3)
    with pytest.raises(InputError, match=r"expected a scalar image, got 3 components"):
        read_image(vec, "moving")


def test_2d_rgb_converted_to_luminance_with_note(tmp_path):
    rgb = np.zeros((8, 9, 3), np.uint8)
    rgb[..., 0] = 255
    rgb[2:5, 3:6] = 0
    path = tmp_path / "rgb.png"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))
    loaded = read_image(path, "fixed")
    arr = sitk.GetArrayFromImage(loaded.image)
    assert loaded.image.GetDimension() == 2 and arr.shape == (8, 9)
    assert arr[0, 0] == pytest.approx(0.299 * 255, rel=1e-4) and arr[3, 4] == 0
    assert any("luminance" in w for w in loaded.warnings)


def test_jpeg_print_resolution_is_not_taken_as_pixel_size(tmp_path):
    """A JPEG written at 72 dpi reads back from ITK with 0.353 mm spacing; read_image puts it on the pixel grid
    (spacing 1, noted) like a JPEG without a density. A NRRD keeps its spacing."""
    rng = np.random.default_rng(0)
    arr = (rng.random((40, 50)) * 255).astype(np.uint8)
    img = _image(arr, spacing=(25.4 / 72, 25.4 / 72))
    jpg, nrrd = tmp_path / "slide.jpg", tmp_path / "slide.nrrd"
    sitk.WriteImage(img, str(jpg))
    sitk.WriteImage(img, str(nrrd))
    assert sitk.ReadImage(str(jpg)).GetSpacing()[0] == pytest.approx(25.4 / 72)  # what ITK's reader gives
    loaded = read_image(jpg, "moving")
    assert loaded.image.GetSpacing() == (1.0, 1.0) and loaded.image.GetOrigin() == (0.0, 0.0)
    assert loaded.image.GetSize() == (50, 40)
    assert any("print setting" in w and "moving" in w for w in loaded.warnings)
    kept = read_image(nrrd, "moving")
    assert kept.image.GetSpacing()[0] == pytest.approx(25.4 / 72) and not kept.warnings
    plain = tmp_path / "plain.jpg"
    sitk.WriteImage(_image(arr), str(plain))
    assert read_image(plain, "fixed").warnings == []  # no density: nothing to say


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_rejected(value):
    arr = np.random.default_rng(0).random((6, 6, 6)).astype(np.float32)
    arr[2, 3, 1] = value
    with pytest.raises(InputError, match=r"1 NaN/Inf voxels"):
        read_image(_image(arr), "fixed")


def test_constant_image_rejected_unless_allowed():
    const = _image(np.full((5, 5, 5), 7.0, np.float32))
    with pytest.raises(InputError, match="constant"):
        read_image(const, "moving")
    assert read_image(const, "mask", allow_constant=True).image.GetSize() == (5, 5, 5)


def test_image_too_small():
    with pytest.raises(InputError, match="too small"):
        read_image(_image(np.arange(5, dtype=np.float32).reshape(1, 1, 5)), "fixed")


def test_input_image_not_modified():
    arr = np.random.default_rng(1).random((4, 5, 6)).astype(np.float64)
    img = _image(arr.copy(), (2.0, 1.5, 3.0))
    out = read_image(img, "fixed").image
    assert out.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), arr)
    assert img.GetSpacing() == (2.0, 1.5, 3.0)


def test_empty_mask_and_dimension_mismatch():
    ref = _image(np.ones((6, 6, 6), np.float32))
    with pytest.raises(InputError, match="mask is empty"):
        read_mask(_image(np.zeros((6, 6, 6), np.uint8)), ref, "fixed mask")
    with pytest.raises(InputError, match="dimension 2D does not match"):
        read_mask(_image(np.ones((6, 6), np.uint8)), ref, "fixed mask")


def test_mask_resampled_to_reference_grid():
    ref = _image(np.ones((10, 10, 10), np.float32), (1.0, 1.0, 1.0))
    coarse = np.zeros((5, 5, 5), np.uint8)
    coarse[1:3, 1:3, 1:3] = 3
    mask = read_mask(_image(coarse, (2.0, 2.0, 2.0)), ref)
    arr = sitk.GetArrayFromImage(mask)
    assert mask.GetSize() == (10, 10, 10) and set(np.unique(arr)) == {0, 1}
    assert arr[3, 3, 3] == 1 and arr[8, 8, 8] == 0


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"partial")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_atomic_output_keeps_previous_file_on_failure(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(ValueError):
        with atomic_output(target) as tmp:
            open(tmp, "w").write("new")
            raise ValueError
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["t.txt"]


@pytest.mark.parametrize("suffix", [".h5", ".tfm", ".txt"])
def test_transform_round_trip(tmp_path, suffix):
    tx = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, 6.0))
    path = tmp_path / f"t{suffix}"
    write_transform(tx, path)
    back = read_transform(path)
    for p in [(0, 0, 0), (10, -20, 30)]:
        np.testing.assert_allclose(back.TransformPoint(p), tx.TransformPoint(p), atol=1e-6)


def test_transform_bad_suffix_and_missing(tmp_path):
    with pytest.raises(InputError, match="must end with"):
        write_transform(sitk.Euler3DTransform(), tmp_path / "t.nii")
    with pytest.raises(InputError, match="file not found"):
        read_transform(tmp_path / "none.h5")


def test_write_png_rescales_float(tmp_path):
    img = _image(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))
    write_image(img, tmp_path / "a.png")
    back = sitk.ReadImage(str(tmp_path / "a.png"))
    assert back.GetPixelID() == sitk.sitkUInt8
    assert sitk.GetArrayFromImage(back).max() == 255

"""Slide reading: plain images, pyramidal TIFF level choice and pixel sizes, and the errors."""

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.methods.histology.slides import read_slide

from .conftest import HE_OD, stain, tissue_density


@pytest.fixture
def rgb():
    return stain(tissue_density(128), HE_OD)


def test_png_has_no_pixel_size_and_level0_frame(tmp_path, rgb):
    path = tmp_path / "s.png"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))
    slide = read_slide(path, "fixed")
    assert slide.unit == "px" and slide.pixel_size == 1.0 and slide.size == (128, 128)
    assert "1 unit = 1 pixel" in slide.notes[0]
    np.testing.assert_array_equal(slide.pixels, rgb)
    with pytest.raises(InputError, match="fixed: --level 2 requested"):
        read_slide(path, "fixed", level=2)
    with pytest.raises(InputError, match="--resolution-um needs a pixel size"):
        read_slide(path, "fixed", resolution_um=4.0)


def _write_pyramid(path, rgb, um_per_px, levels=3):
    tifffile = pytest.importorskip("tifffile")
    with tifffile.TiffWriter(str(path)) as tif:
        opts = dict(photometric="rgb", tile=(64, 64), resolutionunit="CENTIMETER")
        tif.write(rgb, subifds=levels - 1, resolution=(1e4 / um_per_px, 1e4 / um_per_px), **opts)
        for k in range(1, levels):
            f = 2 ** k
            small = rgb[: rgb.shape[0] // f * f, : rgb.shape[1] // f * f].reshape(
                rgb.shape[0] // f, f, rgb.shape[1] // f, f, 3).mean(axis=(1, 3)).astype(np.uint8)
            tif.write(small, subfiletype=1, resolution=(1e4 / (um_per_px * f), 1e4 / (um_per_px * f)), **opts)


def test_pyramidal_tiff_level_from_resolution(tmp_path):
    big = np.repeat(np.repeat(stain(tissue_density(128), HE_OD), 4, 0), 4, 1)  # 512 x 512
    path = tmp_path / "pyr.tif"
    _write_pyramid(path, big, 0.5)
    slide = read_slide(path, "moving", resolution_um=1.2)  # levels at 0.5, 1.0, 2.0 µm: 1.0 is the coarsest <= 1.2
    assert slide.levels == 3 and slide.level == 1 and slide.unit == "um"
    assert slide.pixel_size == pytest.approx(0.5) and slide.size == (256, 256)
    np.testing.assert_allclose(slide.spacing, [1.0, 1.0])
    np.testing.assert_allclose(slide.origin, [0.25, 0.25])  # centre of level-0 pixels 0 and 1
    assert "level 1 of 3" in slide.notes[0]
    assert read_slide(path, "moving", target_size=128).level == 2
    assert read_slide(path, "moving", level=0).size == (512, 512)
    with pytest.raises(InputError, match=r"--level 5 out of range; pyr.tif has levels 0..2"):
        read_slide(path, "moving", level=5)


def test_multipage_stack_is_refused(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "stack.tif"
    tifffile.imwrite(str(path), np.zeros((5, 64, 64), np.uint8) + np.arange(5, dtype=np.uint8)[:, None, None])
    with pytest.raises(InputError, match="fixed: stack.tif is not a single 2D plane"):
        read_slide(path, "fixed")


def test_damaged_tiff_is_one_line_error(tmp_path):
    path = tmp_path / "bad.tif"
    path.write_bytes(b"II*\x00" + b"\x00" * 20)
    with pytest.raises(InputError, match="fixed: cannot read"):
        read_slide(path, "fixed")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_slide(tmp_path / "nope.png", "fixed")


def test_header_geometry_of_nrrd(tmp_path, rgb):
    """Slides exported from Slicer (NRRD, LPS): pixel size and origin come from the header (unit mm)."""
    image = sitk.GetImageFromArray(rgb, isVector=True)
    image.SetSpacing((0.5, 0.5))
    image.SetOrigin((10.0, -5.0))
    sitk.WriteImage(image, str(tmp_path / "s.nrrd"))
    slide = read_slide(tmp_path / "s.nrrd", "fixed")
    assert slide.unit == "mm" and slide.pixel_size == 0.5
    np.testing.assert_allclose(slide.level0_to_physical(np.array([[0.0, 0.0], [4.0, 2.0]])), [[10, -5], [12, -4]])
    np.testing.assert_allclose(slide.origin, [10.0, -5.0])
    image.SetDirection((-1.0, 0.0, 0.0, -1.0))  # a Slicer (RAS) slide exported to LPS
    sitk.WriteImage(image, str(tmp_path / "f.nrrd"))
    flipped = read_slide(tmp_path / "f.nrrd", "fixed")
    np.testing.assert_array_equal(flipped.pixels, rgb[::-1, ::-1])
    corner = image.TransformIndexToPhysicalPoint((127, 127))  # the flipped array's pixel (0, 0)
    np.testing.assert_allclose(flipped.level0_to_physical(np.zeros((1, 2)))[0], corner)
    image.SetDirection((0.0, 1.0, 1.0, 0.0))
    sitk.WriteImage(image, str(tmp_path / "r.nrrd"))
    with pytest.raises(InputError, match="fixed: r.nrrd has rotated axes"):
        read_slide(tmp_path / "r.nrrd", "fixed")

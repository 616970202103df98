"""Known-answer registration of synthetic multi-stain slides (direction, mirror, scale) and the errors."""

import numpy as np
import pytest

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.methods.histology import HistologyConfig, register_histology, transfer_landmarks
from RegistrationSuiteLib.methods.histology.slides import from_array

from .conftest import DAB_OD, HE_OD, about_centre, moving_density, rotation, stain, tissue_density

POINTS = np.array([[60.0, 100.0], [128.0, 128.0], [180.0, 90.0], [100.0, 170.0]])
FAST = dict(io_steps=0, working_size=256, search_size=96)


@pytest.mark.parametrize("mirrored", [False, True])
def test_rotation_mirror_scale_recovered_fixed_to_moving(mirrored):
    d = tissue_density(256)
    matrix = 1.04 * rotation(70.0, mirrored)
    offset = about_centre(matrix, (128, 128), (9.0, -6.0))
    fixed = from_array(stain(d, HE_OD), name="fixed")
    moving = from_array(stain(moving_density(d, matrix, offset), DAB_OD, 1.2), name="moving")
    result = register_histology(fixed, moving, HistologyConfig(**FAST))
    expected = POINTS @ matrix.T + offset
    predicted = transfer_landmarks(result, POINTS)
    assert np.abs(predicted - expected).max() < 1.0  # pixels; a reversed direction is off by > 50 px
    assert result.diagnostics["mirrored"] is mirrored
    assert result.diagnostics["rotation_deg"] == pytest.approx(70.0, abs=1.0)
    assert result.diagnostics["ncc_after"] > result.diagnostics["ncc_before"]
    if not mirrored:  # a reflection is its own inverse up to scale: only the rotation tells directions apart
        reverse = POINTS @ np.linalg.inv(matrix).T - np.linalg.inv(matrix) @ offset
        assert np.abs(predicted - reverse).max() > 50


def test_dark_background_slides_are_inverted():
    """Bright tissue on a black background (dark-field / fluorescence-like, e.g. the FAIR HNSP images): treated
    as absorbing tissue on glass, so the mask finds the tissue (not the background) and the known rotation is
    recovered. Without the inversion the mask is the background and the search fails."""
    from RegistrationSuiteLib.methods.histology.preprocess import dark_background, tissue_mask
    import torch

    d = tissue_density(256)
    matrix = rotation(35.0)
    offset = about_centre(matrix, (128, 128), (7.0, -5.0))
    bright_f = stain(d, HE_OD)
    dark_f = 255 - bright_f
    dark_m = 255 - stain(moving_density(d, matrix, offset), DAB_OD, 1.2)
    as_t = lambda a: torch.from_numpy(a.astype(np.float32) / 255).permute(2, 0, 1)  # noqa: E731
    assert dark_background(as_t(dark_f)) and not dark_background(as_t(bright_f))
    dark_mask, bright_mask = tissue_mask(as_t(dark_f)), tissue_mask(as_t(bright_f))
    assert (dark_mask == bright_mask).float().mean() > 0.98 and bright_mask.float().mean() < 0.8
    result = register_histology(from_array(dark_f, name="fixed"), from_array(dark_m, name="moving"),
                                HistologyConfig(**FAST, mirror="no"))
    assert np.abs(transfer_landmarks(result, POINTS) - (POINTS @ matrix.T + offset)).max() < 1.0
    assert result.diagnostics["rotation_deg"] == pytest.approx(35.0, abs=1.0)


def test_physical_units_with_different_pixel_sizes():
    """Fixed at 2 µm/px, moving at 1 µm/px (twice as many pixels): the mapping is in µm."""
    d = tissue_density(256)
    matrix, offset = rotation(-30.0), np.zeros(2)
    offset = about_centre(matrix, (128, 128), (5.0, 3.0))
    md = moving_density(d, matrix, offset)
    md2 = np.kron(md, np.ones((2, 2)))  # 512 px at 1 µm = the same 512 µm
    fixed = from_array(stain(d, HE_OD), pixel_size_um=2.0, name="fixed")
    moving = from_array(stain(md2, DAB_OD), pixel_size_um=1.0, name="moving")
    result = register_histology(fixed, moving, HistologyConfig(**FAST))
    assert result.unit == "um"
    got = transfer_landmarks(result, POINTS)  # moving level-0 pixels (1 µm)
    # fixed pixel x (2 µm) is at 2x µm; in moving pixel units of the upsampled image: 2 (A x + t) + 0.5.
    expected = 2.0 * (POINTS @ matrix.T + offset) + 0.5
    assert np.abs(got - expected).max() < 2.0


def test_blank_slide_is_no_tissue():
    blank = np.full((128, 128, 3), 245, np.uint8)
    tissue = from_array(stain(tissue_density(128), HE_OD), name="fixed")
    with pytest.raises(InputError, match="moving: no tissue found"):
        register_histology(tissue, from_array(blank, name="moving"), HistologyConfig(**FAST))


def test_wildly_different_sizes_without_pixel_size():
    small = from_array(stain(tissue_density(64), HE_OD), name="fixed")
    big = from_array(stain(tissue_density(512), HE_OD), name="moving")
    with pytest.raises(InputError, match="sizes differ by a factor 8.0 and the files carry no pixel size"):
        register_histology(small, big, HistologyConfig(**FAST))


def test_header_geometry_mapping_in_lps_mm(tmp_path):
    """NRRD slides (as the Slicer module exports them): the transform maps fixed LPS mm to moving LPS mm."""
    import SimpleITK as sitk

    d = tissue_density(256)
    matrix = rotation(25.0)
    offset = about_centre(matrix, (128, 128), (4.0, 7.0))
    paths = []
    for name, arr, origin in (("fixed", stain(d, HE_OD), (10.0, -5.0)),
                              ("moving", stain(moving_density(d, matrix, offset), DAB_OD), (-3.0, 20.0))):
        image = sitk.GetImageFromArray(arr, isVector=True)
        image.SetSpacing((0.25, 0.25))
        image.SetOrigin(origin)
        paths.append(str(tmp_path / f"{name}.nrrd"))
        sitk.WriteImage(image, paths[-1])
    result = register_histology(paths[0], paths[1], HistologyConfig(**FAST))
    assert result.unit == "mm"
    pixel = POINTS[1]
    expected_px = matrix @ pixel + offset
    got = result.transform.TransformPoint(tuple(np.array([10.0, -5.0]) + 0.25 * pixel))
    np.testing.assert_allclose(got, np.array([-3.0, 20.0]) + 0.25 * expected_px, atol=0.25)

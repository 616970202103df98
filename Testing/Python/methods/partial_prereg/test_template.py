"""Template canvas: scaling into 128³ (or smaller), exact physical↔canvas mapping, fingerprint, errors."""

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.geometry import apply_affine
from RegistrationSuiteLib.methods.partial_prereg.template import (
    build_template,
    load_template,
    nifti_bytes_to_image,
    template_fingerprint,
    template_from_image,
)


def _blob(size=(60, 40, 30), spacing=(1.0, 1.5, 2.0)):
    """An ellipsoid (foreground) in a larger zero image, anisotropic spacing, non-zero origin."""
    z, y, x = np.mgrid[: size[2], : size[1], : size[0]]
    c = np.array(size[::-1]) / 2.0
    arr = (((z - c[0]) / 8) ** 2 + ((y - c[1]) / 10) ** 2 + ((x - c[2]) / 20) ** 2 < 1).astype(np.float32) * 100
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((10.0, -20.0, 5.0))
    return img


def test_build_scales_longest_foreground_edge_into_canvas():
    img = _blob()
    tp = build_template(img, name="blob", canvas_size=64, margin_mm=2.0)
    assert tp.image.GetSize() == (64, 64, 64) and tp.canvas_size == 64
    fg = np.argwhere(sitk.GetArrayViewFromImage(img) > 5)[:, ::-1]
    ext = (fg.max(0) - fg.min(0) + 1) * np.array(img.GetSpacing())
    assert tp.spacing_mm == pytest.approx((ext.max() + 4.0) / 64)
    # the canvas centre is the foreground box centre, in physical space
    centre_box = np.array(img.TransformContinuousIndexToPhysicalPoint(((fg.max(0) + fg.min(0)) / 2.0).tolist()))
    np.testing.assert_allclose(apply_affine(tp.canvas_to_physical(), np.array([[31.5] * 3]))[0], centre_box, atol=1e-3)
    np.testing.assert_allclose(tp.physical_to_canvas() @ tp.canvas_to_physical(), np.eye(4), atol=1e-9)
    # the foreground survives resampling, and the background is the image minimum
    arr = tp.array()
    assert arr.max() > 50 and arr[0, 0, 0] == 0.0


def test_fingerprint_survives_file_round_trip(tmp_path):
    tp = build_template(_blob(), name="blob", canvas_size=48, pixel_type=sitk.sitkUInt8)
    tp.write(tmp_path / "t.nii.gz")
    again = load_template(tmp_path / "t.nii.gz", name="blob")
    assert again.sha256 == tp.sha256 == template_fingerprint(nifti_bytes_to_image(tp.to_bytes()))


def test_shipped_template_is_the_documented_canvas():
    tp = load_template()
    assert tp.image.GetSize() == (128, 128, 128) and 1.3 < tp.spacing_mm < 1.6
    assert tp.name == "icbm152_2009a_t1_128"
    mask = sitk.GetArrayFromImage(tp.foreground_mask())
    assert 0.2 < mask.mean() < 0.45  # the brain fills a good part of the canvas


def test_bad_templates():
    with pytest.raises(InputError, match="cubic canvas"):
        template_from_image(sitk.Image([40, 40, 41], sitk.sitkFloat32), "t")
    img = sitk.Image([40, 40, 40], sitk.sitkFloat32)
    img.SetSpacing((1.0, 1.0, 2.0))
    with pytest.raises(InputError, match="isotropic"):
        template_from_image(img, "t")
    with pytest.raises(InputError, match="3D"):
        build_template(sitk.Image([40, 40], sitk.sitkFloat32), name="t")
    with pytest.raises(InputError, match="no foreground"):
        build_template(sitk.Image([40, 40, 40], sitk.sitkFloat32), name="t")
    with pytest.raises(InputError, match="file not found"):
        load_template("/nonexistent.nii.gz")

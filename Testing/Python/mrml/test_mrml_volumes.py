"""Volume nodes ↔ SimpleITK images (real vtkMRMLScene and nodes from slicer-core)."""

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.geometry import LPS_TO_RAS

slicer = pytest.importorskip("slicer", reason="needs the MRML libraries (pip install slicer-core)")

from RegistrationSuiteLib.mrml.volumes import (  # noqa: E402
    ijk_to_ras_matrix,
    image_from_volume_node,
    slice_position_lps,
    volume_node_from_image,
)


def oblique_image(size=(7, 6, 5), spacing=(0.7, 1.3, 2.9), origin=(12.0, -30.5, 4.25), seed=0, dtype=np.float32):
    """An image with unequal sizes, anisotropic spacing and an oblique direction (a rotation)."""
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray((rng.normal(size=size[::-1]) * 100).astype(dtype))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    rotation = np.array(sitk.Euler3DTransform((0, 0, 0), 0.3, -0.2, 0.5).GetMatrix()).reshape(3, 3)
    image.SetDirection(tuple(rotation.ravel()))
    return image


def assert_same_image(a: sitk.Image, b: sitk.Image):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-12)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-12)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


def test_node_ijk_to_ras_matches_image_index_to_lps(headless_scene):
    image = oblique_image()
    node = volume_node_from_image(image, headless_scene, "oblique")
    ijk_to_ras = ijk_to_ras_matrix(node)
    for index in [(0, 0, 0), (6, 5, 4), (3, 1, 2), (1, 5, 0)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = ijk_to_ras @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], (LPS_TO_RAS[:3, :3] @ lps), atol=1e-9)
    # Voxel (i, j, k) of the node is voxel (x, y, z) of the image.
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), sitk.GetArrayFromImage(image))
    assert node.GetDisplayNode() is not None


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8, np.float64])
def test_round_trip_keeps_voxels_type_and_geometry(headless_scene, dtype):
    image = oblique_image(dtype=dtype)
    node = volume_node_from_image(image, headless_scene, "v")
    back = image_from_volume_node(node)
    assert back.GetPixelID() == image.GetPixelID()
    assert_same_image(back, image)


def test_labelmap_round_trip_and_float_labels_rounded(headless_scene):
    labels = sitk.Cast(oblique_image() > 0, sitk.sitkFloat32) * 3.0
    node = volume_node_from_image(labels, headless_scene, "labels", labelmap=True)
    assert node.IsA("vtkMRMLLabelMapVolumeNode")
    back = image_from_volume_node(node)
    assert back.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(labels).astype(np.int16))


def test_image_from_node_does_not_modify_node(headless_scene):
    node = volume_node_from_image(oblique_image(), headless_scene, "v")
    voxels, matrix, mtime = slicer.util.arrayFromVolume(node).copy(), ijk_to_ras_matrix(node), node.GetMTime()
    image = image_from_volume_node(node)
    image[0, 0, 0] = 12345.0  # the image owns its voxels
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels)
    np.testing.assert_array_equal(ijk_to_ras_matrix(node), matrix)
    assert node.GetMTime() == mtime


def test_2d_image_becomes_single_slice_volume_and_comes_back_2d(headless_scene):
    image = sitk.GetImageFromArray(np.arange(35, dtype=np.float32).reshape(5, 7))
    image.SetSpacing((0.5, 1.5))
    image.SetOrigin((3.0, -4.0))
    c, s = np.cos(0.4), np.sin(0.4)
    image.SetDirection((c, -s, s, c))
    node = volume_node_from_image(image, headless_scene, "slice", slice_z=-12.5)
    assert node.GetImageData().GetDimensions() == (7, 5, 1)
    assert slice_position_lps(node) == pytest.approx(-12.5)
    ras = ijk_to_ras_matrix(node) @ np.array([6.0, 4.0, 0.0, 1.0])
    lps = image.TransformIndexToPhysicalPoint((6, 4))
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], -12.5], atol=1e-12)
    back = image_from_volume_node(node)
    assert_same_image(back, image)
    assert image_from_volume_node(node, squeeze_single_slice=False).GetSize() == (7, 5, 1)


def test_update_existing_node(headless_scene):
    node = volume_node_from_image(oblique_image(), headless_scene, "v")
    count = headless_scene.GetNumberOfNodes()
    other = oblique_image(size=(3, 4, 5), spacing=(1, 1, 1), origin=(0, 0, 0), seed=3)
    assert volume_node_from_image(other, None, node=node) is node
    assert headless_scene.GetNumberOfNodes() == count
    assert_same_image(image_from_volume_node(node), other)


def test_errors_name_the_argument(headless_scene):
    vector = sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3)
    with pytest.raises(InputError, match="scalar"):
        volume_node_from_image(vector, headless_scene, "vec")
    transform_node = headless_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    with pytest.raises(InputError, match="fixed: expected a scalar or labelmap volume node"):
        image_from_volume_node(transform_node, name="fixed")
    empty = headless_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no voxels"):
        image_from_volume_node(empty)

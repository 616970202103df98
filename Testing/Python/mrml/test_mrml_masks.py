"""Registration masks from labelmap volume nodes and segmentation nodes."""

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError

slicer = pytest.importorskip("slicer", reason="needs the MRML libraries (pip install slicer-core)")

from RegistrationSuiteLib.mrml.masks import mask_from_node  # noqa: E402
from RegistrationSuiteLib.mrml.scene import module_logic  # noqa: E402
from RegistrationSuiteLib.mrml.volumes import volume_node_from_image  # noqa: E402


def grid_image(size=(12, 10, 8), spacing=(1.0, 1.5, 2.0), origin=(-5.0, 3.0, 10.0), value=0):
    image = sitk.Image(list(size), sitk.sitkUInt8)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    rotation = np.array(sitk.Euler3DTransform((0, 0, 0), 0.0, 0.0, 0.4).GetMatrix()).reshape(3, 3)
    image.SetDirection(tuple(rotation.ravel()))
    return image + value


def two_label_image():
    labels = grid_image()
    labels[2:6, 3:7, 1:4] = 1  # x, y, z ranges (SimpleITK index order)
    labels[8:10, 1:3, 5:7] = 2
    return labels


def segmentation_from_labels(scene, labels):
    """A real segmentation node made by the Segmentations module logic, segments renamed "Label_1", "Label_2"
    (import names them after the labelmap's colour table)."""
    labelmap = volume_node_from_image(labels, scene, "labels", labelmap=True)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    assert module_logic("Segmentations", scene).ImportLabelmapToSegmentationNode(labelmap, segmentation)
    for i in range(segmentation.GetSegmentation().GetNumberOfSegments()):
        segmentation.GetSegmentation().GetNthSegment(i).SetName(f"Label_{i + 1}")
    return segmentation


def test_labelmap_mask_is_binary_uint8_on_reference(headless_scene):
    labels = two_label_image()
    node = volume_node_from_image(labels, headless_scene, "labels", labelmap=True)
    mask = mask_from_node(node)
    assert mask.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(labels) > 0)
    reference = grid_image(size=(6, 6, 6), spacing=(2.0, 2.0, 2.0))
    on_reference = mask_from_node(node, reference)
    expected = sitk.Resample(labels > 0, reference, sitk.Transform(), sitk.sitkNearestNeighbor)
    assert on_reference.GetSize() == (6, 6, 6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_reference), sitk.GetArrayFromImage(expected))


def test_segmentation_mask_any_segment_and_named_segment(headless_scene):
    labels = two_label_image()
    segmentation = segmentation_from_labels(headless_scene, labels)
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)]
    assert names == ["Label_1", "Label_2"]
    reference = labels  # same grid: exact comparison
    any_segment = mask_from_node(segmentation, reference)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(any_segment), sitk.GetArrayFromImage(labels) > 0)
    second = mask_from_node(segmentation, reference, segment_name="Label_2")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(second), sitk.GetArrayFromImage(labels) == 2)
    # Without a reference: the segmentation's own (cropped) geometry, same physical voxels.
    own = mask_from_node(segmentation, segment_name="Label_1")
    assert int(sitk.GetArrayFromImage(own).sum()) == int((sitk.GetArrayFromImage(labels) == 1).sum())
    first_voxel = labels.TransformIndexToPhysicalPoint((2, 3, 1))
    assert own[own.TransformPhysicalPointToIndex(first_voxel)] == 1


def test_segmentation_is_not_modified(headless_scene):
    segmentation = segmentation_from_labels(headless_scene, two_label_image())
    mtime = segmentation.GetMTime()
    count = headless_scene.GetNumberOfNodes()
    mask_from_node(segmentation, segment_name="Label_1")
    assert segmentation.GetMTime() == mtime
    assert headless_scene.GetNumberOfNodes() == count


def test_closed_surface_segmentation_converted_on_a_copy(headless_scene):
    import vtk

    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(0.0, 0.0, 0.0)
    sphere.SetRadius(6.0)
    sphere.SetThetaResolution(24)
    sphere.SetPhiResolution(24)
    sphere.Update()
    surface_name = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    labelmap_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    segmentation = headless_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "surface")
    segmentation.GetSegmentation().SetSourceRepresentationName(surface_name)  # before adding: no conversion
    segmentation.AddSegmentFromClosedSurfaceRepresentation(sphere.GetOutput(), "ball")
    assert not segmentation.GetSegmentation().ContainsRepresentation(labelmap_name)
    reference = grid_image(size=(20, 20, 20), spacing=(1.0, 1.0, 1.0), origin=(-10.0, -10.0, -10.0))
    mask = mask_from_node(segmentation, reference)
    volume_mm3 = sitk.GetArrayFromImage(mask).sum()
    assert abs(volume_mm3 - 4.0 / 3.0 * np.pi * 6.0**3) < 0.15 * 4.0 / 3.0 * np.pi * 6.0**3
    assert not segmentation.GetSegmentation().ContainsRepresentation(labelmap_name)


def test_mask_errors(headless_scene):
    segmentation = segmentation_from_labels(headless_scene, two_label_image())
    with pytest.raises(InputError, match="no segment named 'liver'.*'Label_1', 'Label_2'"):
        mask_from_node(segmentation, segment_name="liver")
    empty = volume_node_from_image(grid_image(), headless_scene, "empty", labelmap=True)
    with pytest.raises(InputError, match="fixed mask: mask is empty"):
        mask_from_node(empty, name="fixed mask")
    with pytest.raises(InputError, match="segment_name applies to segmentation nodes"):
        mask_from_node(empty, segment_name="x")
    transform = headless_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    with pytest.raises(InputError, match="expected a labelmap volume or segmentation node"):
        mask_from_node(transform)
    slice_2d = sitk.Image([5, 5], sitk.sitkFloat32)
    labels = volume_node_from_image(two_label_image(), headless_scene, "l3", labelmap=True)
    with pytest.raises(InputError, match="3D but its image is 2D"):
        mask_from_node(labels, slice_2d)

"""Organ point clouds from real MRML nodes (segmentations, labelmaps, models, markups) and transformed copies."""

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.geometry import LPS_TO_RAS

slicer = pytest.importorskip("slicer", reason="needs the MRML libraries (pip install slicer-core)")

from RegistrationSuiteLib.mrml.masks import mask_from_node  # noqa: E402
from RegistrationSuiteLib.mrml.points import (  # noqa: E402
    apply_grid_transform_copy,
    points_from_labelmap_node,
    points_from_markups_node,
    points_from_model_nodes,
    points_from_nodes,
    points_from_segmentation_node,
    segment_labels,
)
from RegistrationSuiteLib.mrml.scene import module_logic  # noqa: E402
from RegistrationSuiteLib.mrml.transforms import set_grid_transform_from_sitk  # noqa: E402
from RegistrationSuiteLib.mrml.volumes import image_from_volume_node, volume_node_from_image  # noqa: E402

F3 = LPS_TO_RAS[:3, :3]
SPACING = (1.5, 1.2, 2.0)
#: label → (centre LPS mm, semi-axes mm): a sphere and two ellipsoids
ORGANS = {
    2: (np.array([-12.0, 4.0, 30.0]), np.array([7.0, 7.0, 7.0])),
    5: (np.array([4.0, 6.0, 32.0]), np.array([5.0, 8.0, 6.0])),
    9: (np.array([-4.0, -10.0, 28.0]), np.array([9.0, 4.5, 6.0])),
}


def organ_image(size=(34, 32, 22), shifts=None):
    """uint8 label image with oblique direction and anisotropic spacing; organs defined in LPS mm, each moved
    by ``shifts[label]`` (mm, LPS) if given (the grid stays the same)."""
    image = sitk.Image(list(size), sitk.sitkUInt8)
    image.SetSpacing(SPACING)
    rotation = np.array(sitk.Euler3DTransform((0, 0, 0), 0.2, -0.15, 0.35).GetMatrix()).reshape(3, 3)
    image.SetDirection(tuple(rotation.ravel()))
    centre = np.mean([c for c, _ in ORGANS.values()], axis=0)
    image.SetOrigin(tuple(centre - rotation @ (np.array(size) * SPACING / 2)))
    k, j, i = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float)
    lps = ijk * SPACING @ rotation.T + np.array(image.GetOrigin())
    voxels = np.zeros(len(lps), np.uint8)
    for label, (c, axes) in ORGANS.items():
        c = c + (np.zeros(3) if shifts is None else np.asarray(shifts[label], dtype=float))
        voxels[(((lps - c) / axes) ** 2).sum(axis=1) <= 1.0] = label
    out = sitk.GetImageFromArray(voxels.reshape(size[::-1]))
    out.CopyInformation(image)
    return out


@pytest.fixture
def organs(headless_scene):
    image = organ_image()
    labelmap = volume_node_from_image(image, headless_scene, "organs", labelmap=True)
    segmentation = headless_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "organ segmentation")
    assert module_logic("Segmentations", headless_scene).ImportLabelmapToSegmentationNode(labelmap, segmentation)
    return headless_scene, image, labelmap, segmentation


def chamfer(a, b):
    """Largest distance from a point of ``a`` to ``b`` and back (mm)."""
    d = np.linalg.norm(a[:, None, :] - b[None], axis=-1)
    return max(d.min(axis=1).max(), d.min(axis=0).max())


def test_segmentation_points_match_core_on_same_image(organs):
    from RegistrationSuiteLib.surfaces import labels_to_points

    scene, image, _, segmentation = organs
    assert [(e.label, e.source) for e in segment_labels(segmentation)] == [(2, "labelmap value"), (5, "labelmap value"),
                                                                           (9, "labelmap value")]
    mtime = segmentation.GetMTime()
    points = points_from_segmentation_node(segmentation, points_per_organ=150, seed=3)
    expected = labels_to_points(image, [2, 5, 9], 150, 3)
    assert points.counts() == expected.counts()
    voxel = float(np.linalg.norm(SPACING))
    for label in (2, 5, 9):
        a, b = points.points[points.labels == label], expected.points[expected.labels == label]
        assert chamfer(a, b) < voxel, label
    # Same voxels (the merged labelmap keeps the oblique geometry) and same sampler: the very same points.
    np.testing.assert_allclose(points.points, expected.points, atol=1e-6)
    np.testing.assert_array_equal(points.labels, expected.labels)
    assert segmentation.GetMTime() == mtime  # input untouched


def test_labelmap_node_points_equal_core_points(organs):
    from RegistrationSuiteLib.surfaces import labels_to_points

    _, image, labelmap, _ = organs
    points = points_from_labelmap_node(labelmap, labels=[5, 9], points_per_organ=120, seed=1)
    expected = labels_to_points(image, [5, 9], 120, 1)
    np.testing.assert_allclose(points.points, expected.points, atol=1e-6)
    np.testing.assert_array_equal(points.labels, expected.labels)


def test_closed_surface_points_lie_on_the_organs_in_lps(organs):
    scene, _, _, segmentation = organs
    closed = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    assert not segmentation.GetSegmentation().ContainsRepresentation(closed)
    points = points_from_segmentation_node(segmentation, labels=[2, 9], points_per_organ=200, representation="surface")
    assert not segmentation.GetSegmentation().ContainsRepresentation(closed)  # converted on a copy
    assert points.counts() == {2: 200, 9: 200}
    voxel = max(SPACING)
    for label in (2, 9):
        centre, axes = ORGANS[label]
        p = points.points[points.labels == label]
        np.testing.assert_allclose(p.mean(axis=0), centre, atol=voxel / 2)  # LPS, not RAS
        radius = np.sqrt((((p - centre) / axes) ** 2).sum(axis=1))  # 1 on the ellipsoid
        assert np.all(np.abs(radius - 1.0) * axes.min() < voxel), label
    again = points_from_segmentation_node(segmentation, labels=[2, 9], points_per_organ=200, representation="surface")
    np.testing.assert_array_equal(again.points, points.points)  # seeded


def test_closed_surface_source_is_used_as_is(organs):
    scene, _, _, segmentation = organs
    surface_only = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "surfaces")
    surface_only.GetSegmentation().DeepCopy(segmentation.GetSegmentation())
    closed = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    assert surface_only.GetSegmentation().CreateRepresentation(closed)
    surface_only.GetSegmentation().SetSourceRepresentationName(closed)
    points = points_from_nodes(surface_only, points_per_organ=50)  # "auto": the source representation
    assert points.counts() == {2: 50, 5: 50, 9: 50}
    centre, axes = ORGANS[5]
    radius = np.sqrt((((points.points[points.labels == 5] - centre) / axes) ** 2).sum(axis=1))
    assert np.all(np.abs(radius - 1.0) * axes.min() < max(SPACING))


def test_segment_label_rules(organs):
    scene, _, _, segmentation = organs
    seg = segmentation.GetSegmentation()
    names = ["liver", "Label_4", "spleen"]
    for i, name in enumerate(names):
        seg.GetNthSegment(i).SetName(name)
        seg.GetNthSegment(i).SetLabelValue(1)  # as after moving segments to separate layers: no distinct values
    assert [e.label for e in segment_labels(segmentation)] == [1, 2, 3]  # index + 1: names not all numbered
    seg.GetNthSegment(0).SetName("Segment_7")
    seg.GetNthSegment(2).SetName("12")
    labels = segment_labels(segmentation)
    assert [(e.label, e.source) for e in labels] == [(7, "name"), (4, "name"), (12, "name")]
    seg.GetNthSegment(2).SetTag("label", "30")
    assert [e.label for e in segment_labels(segmentation, {"Segment_7": 8})] == [8, 4, 30]
    with pytest.raises(InputError, match="both get label 4"):
        segment_labels(segmentation, {"Segment_7": 4})
    with pytest.raises(InputError, match="integer organ label"):
        segment_labels(segmentation, {seg.GetNthSegmentID(1): "kidney"})


def test_model_nodes_to_lps_points(headless_scene):
    import vtk
    from vtk.util import numpy_support

    models = []
    for i, centre_ras in enumerate(([10.0, -5.0, 3.0], [-20.0, 8.0, 40.0])):
        source = vtk.vtkSphereSource()
        source.SetCenter(*centre_ras)
        source.SetRadius(4.0 + i)
        source.SetThetaResolution(24)
        source.SetPhiResolution(24)
        source.Update()
        node = headless_scene.AddNewNodeByClass("vtkMRMLModelNode", f"organ {i}")
        node.SetAndObservePolyData(source.GetOutput())
        models.append(node)
    all_points = points_from_model_nodes(models, [3, 8], points_per_organ=None)
    vertices = slicer.util.arrayFromModelPoints(models[1])
    np.testing.assert_allclose(all_points.points[all_points.labels == 8], vertices * np.diag(F3), atol=1e-6)
    sampled = points_from_model_nodes(models, [3, 8], points_per_organ=100, seed=2)
    assert sampled.counts() == {3: 100, 8: 100}
    np.testing.assert_allclose(sampled.points[sampled.labels == 3].mean(axis=0), [-10.0, 5.0, 3.0], atol=0.5)
    assert points_from_model_nodes(models, points_per_organ=None).counts().keys() == {1, 2}  # position + 1
    # a "label" point array (two organs in one model) wins over the position
    poly = models[0].GetPolyData()
    labels = np.where(numpy_support.vtk_to_numpy(poly.GetPoints().GetData())[:, 2] > 3.0, 6, 7).astype(np.int32)
    array = numpy_support.numpy_to_vtk(labels, deep=True)
    array.SetName("label")
    poly.GetPointData().AddArray(array)
    assert set(points_from_nodes(models[0], points_per_organ=None).counts()) == {6, 7}
    with pytest.raises(InputError, match="one label per model"):
        points_from_model_nodes(models, [1])


def test_markups_points(headless_scene):
    markups = headless_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "landmarks")
    markups.AddControlPoint(1.0, 2.0, 3.0)
    markups.AddControlPoint(-4.0, 5.0, -6.0)
    points = points_from_markups_node(markups, label=4)
    np.testing.assert_allclose(points.points, [[-1.0, -2.0, 3.0], [4.0, -5.0, -6.0]])
    assert points.labels.tolist() == [4, 4]


def centroid(mask):
    """Physical (LPS) centroid of the non-zero voxels of ``mask``."""
    index = np.argwhere(sitk.GetArrayFromImage(mask) > 0)[:, ::-1].astype(float).mean(axis=0)
    return np.array(mask.TransformContinuousIndexToPhysicalPoint(index.tolist()))


def constant_field_transform(scene, displacement_lps, name="T"):
    """A grid transform node whose FromParent (fixed → moving) displaces every LPS point by ``displacement_lps``."""
    field = np.zeros((12, 12, 12, 3))
    field[...] = displacement_lps
    image = sitk.GetImageFromArray(field, isVector=True)
    image.SetSpacing((6.0, 6.0, 6.0))
    image.SetOrigin((-40.0, -40.0, -10.0))
    return set_grid_transform_from_sitk(None, sitk.DisplacementFieldTransform(image), scene, name)


def test_transformed_copies_move_moving_into_fixed_space(organs):
    import vtk

    scene, image, labelmap, segmentation = organs
    shift = np.array([3.0, -1.5, 4.0])  # fixed → moving, LPS: the copy must move by -shift
    transform = constant_field_transform(scene, shift)
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", "model")
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(5.0, 5.0, 20.0)
    sphere.Update()
    model.SetAndObservePolyData(sphere.GetOutput())
    before = {n.GetID(): n.GetMTime() for n in (segmentation, model, labelmap)}
    seg_voxels = sitk.GetArrayFromImage(mask_from_node(segmentation))

    seg_copy = apply_grid_transform_copy(segmentation, transform, scene)
    model_copy, = apply_grid_transform_copy([model], transform, scene)
    labelmap_copy = apply_grid_transform_copy(labelmap, transform, name="labels moved")

    for node in (seg_copy, model_copy, labelmap_copy):
        assert node.GetScene() is scene and node.GetParentTransformNode() is None
    assert seg_copy.GetName() == "organ segmentation registered" and labelmap_copy.GetName() == "labels moved"
    moved = slicer.util.arrayFromModelPoints(model_copy) - slicer.util.arrayFromModelPoints(model)
    np.testing.assert_allclose(moved * np.diag(F3), np.tile(-shift, (len(moved), 1)), atol=1e-4)
    original_centroid, original_count = centroid(image > 0), int(sitk.GetArrayFromImage(image > 0).sum())
    for copy in (seg_copy, labelmap_copy):  # resampled: centroids move by -shift, to within half a voxel
        mask = mask_from_node(copy)
        np.testing.assert_allclose(centroid(mask) - original_centroid, -shift, atol=0.6)
        assert abs(int(sitk.GetArrayFromImage(mask).sum()) - original_count) < 0.02 * original_count  # not cropped
    image_copy = image_from_volume_node(labelmap_copy)
    assert set(np.unique(sitk.GetArrayFromImage(image_copy)).tolist()) <= {0, 2, 5, 9}  # labels not blurred
    assert {n.GetID(): n.GetMTime() for n in (segmentation, model, labelmap)} == before
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask_from_node(segmentation)), seg_voxels)
    assert segmentation.GetParentTransformNode() is None and model.GetParentTransformNode() is None


def test_transformed_copy_rejects_bad_input_without_adding_nodes(organs):
    scene, _, _, segmentation = organs
    count = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="transform node"):
        apply_grid_transform_copy(segmentation, segmentation, scene)
    with pytest.raises(InputError, match="segmentation, model, volume or markups"):
        apply_grid_transform_copy(scene.AddNewNodeByClass("vtkMRMLTextNode"), segmentation, scene)
    assert scene.GetNumberOfNodes() == count + 1  # only the text node added here

"""GlobalRigidSearchLogic and resample_volume on real MRML nodes.

Only the core registration function is replaced (``unittest.mock.patch``) by one returning a known
RegistrationResult; scene, nodes and every conversion are real. An end-to-end test with the real method
lives with the method's tests.
"""

from unittest import mock

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError, RegistrationCancelled, RegistrationFailed
from RegistrationSuiteLib.geometry import LPS_TO_RAS, Grid, affine_matrix_from_sitk, apply_affine
from RegistrationSuiteLib.result import RegistrationResult

slicer = pytest.importorskip("slicer", reason="needs the MRML libraries (pip install slicer-core)")

from RegistrationSuiteLib.mrml.logic import GlobalRigidSearchLogic, resample_volume  # noqa: E402
from RegistrationSuiteLib.mrml.scene import module_logic  # noqa: E402
from RegistrationSuiteLib.mrml.transforms import set_linear_transform  # noqa: E402
from RegistrationSuiteLib.mrml.volumes import (  # noqa: E402
    image_from_volume_node,
    ijk_to_ras_matrix,
    volume_node_from_image,
)

CORE = "RegistrationSuiteLib.methods.global_rigid.register_global_rigid"
F3 = LPS_TO_RAS[:3, :3]


def blob_image(size=(20, 18, 16), spacing=(1.2, 1.0, 1.5), origin=(-10.0, 5.0, 2.0), seed=0, dim=3):
    """A smooth image (Gaussian blobs) with unequal sizes and anisotropic spacing."""
    size, spacing, origin = size[:dim], spacing[:dim], origin[:dim]
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    voxels = np.zeros(size[::-1])
    for _ in range(4):
        centre = [rng.uniform(0.3, 0.7) * n for n in size[::-1]]
        voxels += np.exp(-sum((g - c) ** 2 for g, c in zip(grids, centre)) / 12.0)
    image = sitk.GetImageFromArray((100 * voxels).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def known_result(fixed_image, dim=3):
    if dim == 3:
        tx = sitk.Euler3DTransform(Grid.from_image(fixed_image).center().tolist(), 0.05, -0.1, 0.15, (2.0, -1.0, 1.5))
    else:
        tx = sitk.Euler2DTransform(Grid.from_image(fixed_image).center().tolist(), 0.2, (2.0, -1.0))
    return RegistrationResult("global_rigid", tx, Grid.from_image(fixed_image), score=0.9, confidence=0.8)


def snapshot(node):
    """Everything about a node the logic must not change."""
    state = {"mtime": node.GetMTime(), "parent": node.GetTransformNodeID()}
    if node.IsA("vtkMRMLVolumeNode"):
        state["voxels"] = slicer.util.arrayFromVolume(node).copy()
        state["ijk_to_ras"] = ijk_to_ras_matrix(node)
    if node.IsA("vtkMRMLTransformNode"):
        state["matrix"] = slicer.util.arrayFromTransformMatrix(node).copy()
    return state


def assert_unchanged(node, state):
    after = snapshot(node)
    assert after.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


@pytest.fixture
def volumes(headless_scene):
    fixed_image = blob_image(seed=0)
    fixed = volume_node_from_image(fixed_image, headless_scene, "fixed")
    moving = volume_node_from_image(blob_image(size=(15, 17, 12), seed=1), headless_scene, "moving")
    return headless_scene, fixed, moving, fixed_image


def test_register_creates_linear_node_with_references(volumes):
    scene, fixed, moving, fixed_image = volumes
    result = known_result(fixed_image)
    states = {n.GetID(): snapshot(n) for n in (fixed, moving)}
    progress, cancel = mock.Mock(), mock.Mock(return_value=False)
    with mock.patch(CORE, create=True, return_value=result) as core:
        out = GlobalRigidSearchLogic().register(fixed, moving, config="cfg", progress=progress, cancel=cancel)
    assert out is result
    (fixed_arg, moving_arg, config_arg), kwargs = core.call_args
    assert config_arg == "cfg" and kwargs["progress"] is progress and kwargs["cancel"] is cancel
    assert kwargs["fixed_mask"] is None and kwargs["moving_mask"] is None
    np.testing.assert_array_equal(sitk.GetArrayFromImage(fixed_arg), sitk.GetArrayFromImage(fixed_image))
    assert fixed_arg.GetOrigin() == pytest.approx(fixed_image.GetOrigin())
    node = scene.GetNodeByID(result.diagnostics["output_transform_node_id"])
    assert node.IsA("vtkMRMLLinearTransformNode") and node.GetName() == "GlobalRigidSearch transform"
    assert node.GetNodeReference(slicer.vtkMRMLTransformNode.GetFixedNodeReferenceRole()) is fixed
    assert node.GetNodeReference(slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()) is moving
    # ToParent maps a moving RAS point onto the fixed RAS point it corresponds to.
    fixed_lps = np.array([[1.0, 12.0, 9.0], [-4.0, 20.0, 14.0]])
    moving_lps = apply_affine(result.fixed_to_moving_matrix, fixed_lps)
    to_parent = slicer.util.arrayFromTransformMatrix(node)
    np.testing.assert_allclose(apply_affine(to_parent, moving_lps @ F3), fixed_lps @ F3, atol=1e-9)
    for n in (fixed, moving):
        assert_unchanged(n, states[n.GetID()])
    assert result.warnings == []


def test_register_updates_passed_output_node_in_place(volumes):
    scene, fixed, moving, fixed_image = volumes
    output = set_linear_transform(None, np.eye(4), scene, "mine")
    moving.SetAndObserveTransformNodeID(output.GetID())  # the usual rerun: moving under the output
    count = scene.GetNumberOfNodes()
    result = known_result(fixed_image)
    with mock.patch(CORE, create=True, return_value=result):
        GlobalRigidSearchLogic().register(fixed, moving, outputTransformNode=output)
    assert scene.GetNumberOfNodes() == count
    assert output.GetName() == "mine" and result.diagnostics["output_transform_node_id"] == output.GetID()
    moving_to_fixed_lps = np.linalg.inv(result.fixed_to_moving_matrix)
    expected = LPS_TO_RAS @ moving_to_fixed_lps @ LPS_TO_RAS
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(output), expected, atol=1e-9)
    assert result.warnings == []  # the moving volume's parent is the output itself


@pytest.mark.parametrize("error", [RegistrationCancelled("cancelled"), RegistrationFailed("no overlap")])
def test_failure_adds_no_node_and_keeps_output_node(volumes, error):
    scene, fixed, moving, _ = volumes
    output = set_linear_transform(None, np.diag([2.0, 1.0, 1.0, 1.0]), scene, "previous")
    states = {n.GetID(): snapshot(n) for n in (fixed, moving, output)}
    count = scene.GetNumberOfNodes()
    for passed in (None, output):
        with mock.patch(CORE, create=True, side_effect=error), pytest.raises(type(error)):
            GlobalRigidSearchLogic().register(fixed, moving, outputTransformNode=passed)
    assert scene.GetNumberOfNodes() == count
    for n in (fixed, moving, output):
        assert_unchanged(n, states[n.GetID()])
    assert output.GetNodeReferenceID(slicer.vtkMRMLTransformNode.GetFixedNodeReferenceRole()) is None


def test_masks_reach_the_method_on_their_image_grid(volumes):
    scene, fixed, moving, fixed_image = volumes
    labels = sitk.Image(fixed_image.GetSize(), sitk.sitkUInt8)
    labels.CopyInformation(fixed_image)
    labels[4:12, 3:10, 2:9] = 1
    fixed_mask = volume_node_from_image(labels, scene, "fixed mask", labelmap=True)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "moving mask")
    assert module_logic("Segmentations").ImportLabelmapToSegmentationNode(fixed_mask, segmentation)
    states = {n.GetID(): snapshot(n) for n in (fixed_mask, segmentation)}
    with mock.patch(CORE, create=True, return_value=known_result(fixed_image)) as core:
        GlobalRigidSearchLogic().register(fixed, moving, fixedMaskNode=fixed_mask, movingMaskNode=segmentation)
    kwargs = core.call_args.kwargs
    np.testing.assert_array_equal(sitk.GetArrayFromImage(kwargs["fixed_mask"]), sitk.GetArrayFromImage(labels))
    moving_mask = kwargs["moving_mask"]
    assert moving_mask.GetSize() == image_from_volume_node(moving).GetSize()
    expected = sitk.Resample(labels, image_from_volume_node(moving), sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(moving_mask), sitk.GetArrayFromImage(expected))
    for n in (fixed_mask, segmentation):
        assert_unchanged(n, states[n.GetID()])


def test_invalid_inputs_fail_before_the_method_runs(volumes):
    scene, fixed, moving, _ = volumes
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    with mock.patch(CORE, create=True) as core:
        with pytest.raises(InputError, match="fixedVolumeNode: expected a scalar volume node"):
            GlobalRigidSearchLogic().register(transform, moving)
        with pytest.raises(InputError, match="outputTransformNode: expected a transform node"):
            GlobalRigidSearchLogic().register(fixed, moving, outputTransformNode=moving)
        two_d = volume_node_from_image(blob_image(dim=2), scene, "slice")
        with pytest.raises(InputError, match="fixed is 3D and moving 2D"):
            GlobalRigidSearchLogic().register(fixed, two_d)
    core.assert_not_called()


def test_ignored_parent_transform_is_reported(volumes):
    scene, fixed, moving, fixed_image = volumes
    other = set_linear_transform(None, np.eye(4), scene, "other")
    fixed.SetAndObserveTransformNodeID(other.GetID())
    result = known_result(fixed_image)
    with mock.patch(CORE, create=True, return_value=result):
        GlobalRigidSearchLogic().register(fixed, moving)
    assert len(result.warnings) == 1 and "'fixed' is under transform 'other'" in result.warnings[0]


def test_2d_single_slice_volumes_register_in_2d(headless_scene):
    fixed_image, moving_image = blob_image(dim=2, seed=0), blob_image(dim=2, seed=1)
    fixed = volume_node_from_image(fixed_image, headless_scene, "f2", slice_z=3.0)
    moving = volume_node_from_image(moving_image, headless_scene, "m2", slice_z=-4.0)
    result = known_result(fixed_image, dim=2)
    with mock.patch(CORE, create=True, return_value=result) as core:
        GlobalRigidSearchLogic().register(fixed, moving)
    assert core.call_args.args[0].GetDimension() == 2
    node = headless_scene.GetNodeByID(result.diagnostics["output_transform_node_id"])
    fixed_point = np.array([1.0, 7.0])
    moving_point = apply_affine(result.fixed_to_moving_matrix, fixed_point[None])[0]
    moving_ras = F3 @ np.array([*moving_point, -4.0])
    fixed_ras = apply_affine(slicer.util.arrayFromTransformMatrix(node), moving_ras[None])[0]
    np.testing.assert_allclose(fixed_ras, F3 @ np.array([*fixed_point, 3.0]), atol=1e-9)


def test_resample_volume_recovers_fixed(volumes):
    scene, fixed, _, fixed_image = volumes
    result = known_result(fixed_image)
    # A moving image made from the fixed one with the known transform: resampling must undo it.
    moving_image = sitk.Resample(fixed_image, fixed_image, result.transform.GetInverse(), sitk.sitkLinear, 0.0)
    moving = volume_node_from_image(moving_image, scene, "moved")
    transform = set_linear_transform(None, affine_matrix_from_sitk(result.transform), scene)
    count = scene.GetNumberOfNodes()
    output = resample_volume(moving, fixed, transform)
    assert scene.GetNumberOfNodes() > count and output.GetName() == "moved resampled"
    resampled = image_from_volume_node(output)
    assert resampled.GetSize() == fixed_image.GetSize()
    direct = sitk.Resample(moving_image, fixed_image, result.transform, sitk.sitkLinear, 0.0)
    np.testing.assert_allclose(sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(direct), atol=1e-4)
    interior = (slice(4, -4),) * 3
    a, b = sitk.GetArrayFromImage(resampled)[interior], sitk.GetArrayFromImage(fixed_image)[interior]
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99  # twice interpolated, yet the fixed image again
    # Reusing the output node, labelmaps with nearest neighbour.
    labels = volume_node_from_image(sitk.Cast(moving_image > 50, sitk.sitkUInt8), scene, "labels", labelmap=True)
    again = resample_volume(labels, fixed, transform, outputNode=output)
    assert again is output
    assert set(np.unique(slicer.util.arrayFromVolume(output))) <= {0, 1}
    with pytest.raises(InputError, match="interpolation"):
        resample_volume(moving, fixed, transform, interpolation="cubic")


def test_resample_single_slice_volumes(headless_scene):
    fixed_image = blob_image(dim=2, seed=0)
    fixed = volume_node_from_image(fixed_image, headless_scene, "f2", slice_z=0.0)
    shift = np.eye(3)
    shift[:2, 2] = [2.4, -1.0]  # fixed→moving, mm
    moving_image = sitk.Resample(fixed_image, fixed_image, sitk.TranslationTransform(2, (-2.4, 1.0)), sitk.sitkLinear)
    moving = volume_node_from_image(moving_image, headless_scene, "m2", slice_z=0.0)
    transform = set_linear_transform(None, shift, headless_scene)
    resampled = image_from_volume_node(resample_volume(moving, fixed, transform))
    assert resampled.GetDimension() == 2
    diff = sitk.GetArrayFromImage(resampled)[3:-3, 3:-3] - sitk.GetArrayFromImage(fixed_image)[3:-3, 3:-3]
    assert np.abs(diff).max() < 0.05 * sitk.GetArrayFromImage(fixed_image).max()


def test_failing_resample_restores_passed_transform_and_moving(volumes):
    """Issue 8 §2.8: a run that fails after writing the passed output transform (here: the resampled volume)
    restores the transform, leaves the moving volume where it was and removes nothing the user passed."""
    scene, fixed, moving, fixed_image = volumes
    output = set_linear_transform(None, np.diag([2.0, 1.0, 1.0, 1.0]), scene, "previous")
    state, moving_state = restorable(output), restorable(moving)
    resampled = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "resampled")
    count = scene.GetNumberOfNodes()
    with mock.patch(CORE, create=True, return_value=known_result(fixed_image)), \
            mock.patch("RegistrationSuiteLib.mrml.logic.resample_volume", side_effect=RuntimeError("disk full")), \
            pytest.raises(RuntimeError, match="disk full"):
        GlobalRigidSearchLogic().register(fixed, moving, outputTransformNode=output, outputVolumeNode=resampled,
                                          placeMovingUnderTransform=True)
    assert restorable(output) == state
    assert restorable(moving) == moving_state
    assert output.GetNodeReferenceID(slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()) is None
    assert scene.GetNumberOfNodes() == count
    # Without a passed output, the node created for the run is removed again.
    with mock.patch(CORE, create=True, return_value=known_result(fixed_image)), \
            mock.patch("RegistrationSuiteLib.mrml.logic.resample_volume", side_effect=RuntimeError("disk full")), \
            pytest.raises(RuntimeError):
        GlobalRigidSearchLogic().register(fixed, moving, outputVolumeNode=resampled)
    assert scene.GetNumberOfNodes() == count


def test_register_with_outputs_places_moving_and_resamples(volumes):
    scene, fixed, moving, fixed_image = volumes
    resampled = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "resampled")
    with mock.patch(CORE, create=True, return_value=known_result(fixed_image)):
        result = GlobalRigidSearchLogic().register(fixed, moving, outputVolumeNode=resampled,
                                                   placeMovingUnderTransform=True)
    node = scene.GetNodeByID(result.diagnostics["output_transform_node_id"])
    assert moving.GetParentTransformNode() is node
    assert resampled.GetImageData().GetDimensions() == fixed.GetImageData().GetDimensions()


def restorable(node):
    """What a rollback restores (a restore modifies the node, so its modification time is not compared)."""
    return {k: np.asarray(v).tolist() for k, v in snapshot(node).items() if k != "mtime"}

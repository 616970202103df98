"""OrganPointCloudLogic on real MRML nodes (segmentations, labelmaps, models).

Only the core registration function is replaced (``unittest.mock.patch``) by one returning a known
displacement field; scene, nodes, point extraction, output node, file and copies are real.
"""

from unittest import mock

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError, RegistrationCancelled
from RegistrationSuiteLib.geometry import LPS_TO_RAS
from RegistrationSuiteLib.io.points import LabeledPoints
from RegistrationSuiteLib.methods.organ_point_cloud.config import OrganPointCloudConfig
from RegistrationSuiteLib.result import RegistrationResult

slicer = pytest.importorskip("slicer", reason="needs the MRML libraries (pip install slicer-core)")

from test_mrml_points import ORGANS, centroid, organ_image  # noqa: E402

from RegistrationSuiteLib.mrml.masks import mask_from_node  # noqa: E402
from RegistrationSuiteLib.mrml.organ_logic import (  # noqa: E402
    OrganPointCloudLogic,
    OrganRow,
    config_with_organs,
    organ_names,
    organ_row,
    organ_rows_from_table,
    organ_table_rows,
    parse_matrix,
)
from RegistrationSuiteLib.mrml.points import segment_labels  # noqa: E402
from RegistrationSuiteLib.mrml.scene import module_logic  # noqa: E402
from RegistrationSuiteLib.mrml.transforms import save_transform_node, set_linear_transform  # noqa: E402
from RegistrationSuiteLib.mrml.volumes import volume_node_from_image  # noqa: E402

CORE = "RegistrationSuiteLib.methods.organ_point_cloud.register_organ_point_cloud"
F3 = LPS_TO_RAS[:3, :3]
OFFSET = np.array([2.0, -1.0, 1.5])  # fixed → moving displacement at CENTRE (LPS mm)
GRADIENT = 0.01 * np.array([[1.0, 0.5, 0.0], [0.0, -1.0, 0.5], [0.5, 0.0, 1.0]])
CENTRE = np.mean([c for c, _ in ORGANS.values()], axis=0)


def known_field():
    """A smooth displacement field (LPS, fixed → moving) u(p) = OFFSET + GRADIENT (p − CENTRE), oblique grid."""
    size = (16, 14, 12)
    spacing = np.array([3.0, 3.5, 4.0])
    rotation = np.array(sitk.Euler3DTransform((0, 0, 0), 0.1, 0.0, -0.2).GetMatrix()).reshape(3, 3)
    origin = CENTRE - rotation @ (np.array(size) * spacing / 2)
    k, j, i = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    lps = np.stack([i, j, k], axis=-1) * spacing @ rotation.T + origin
    field = sitk.GetImageFromArray(OFFSET + (lps - CENTRE) @ GRADIENT.T, isVector=True)
    field.SetSpacing(tuple(spacing))
    field.SetOrigin(tuple(origin))
    field.SetDirection(tuple(rotation.ravel()))
    return field


def known_result():
    return RegistrationResult("organ_point_cloud", sitk.DisplacementFieldTransform(known_field()),
                              diagnostics={"iterations": 7})


def segmentation_from(scene, image, name):
    labelmap = volume_node_from_image(image, scene, f"{name} labels", labelmap=True)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    assert module_logic("Segmentations", scene).ImportLabelmapToSegmentationNode(labelmap, segmentation)
    scene.RemoveNode(labelmap)
    return segmentation


def sphere_model(scene, centre_ras, radius, name):
    import vtk

    source = vtk.vtkSphereSource()
    source.SetCenter(*centre_ras)
    source.SetRadius(radius)
    source.Update()
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
    node.SetAndObservePolyData(source.GetOutput())
    return node


def snapshot(node):
    """Everything about a node the logic must not change (MTime read last: the first read of a transformed
    model's mesh bumps it)."""
    state = {"parent": node.GetTransformNodeID()}
    if node.IsA("vtkMRMLSegmentationNode"):
        state["voxels"] = sitk.GetArrayFromImage(mask_from_node(node))
    if node.IsA("vtkMRMLModelNode"):
        state["points"] = slicer.util.arrayFromModelPoints(node).copy()
    if node.IsA("vtkMRMLVolumeNode"):
        state["voxels"] = slicer.util.arrayFromVolume(node).copy()
    state["mtime"] = node.GetMTime()
    return state


def assert_unchanged(node, state):
    after = snapshot(node)
    for key, value in state.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


@pytest.fixture
def segmentations(headless_scene):
    image = organ_image()
    fixed = segmentation_from(headless_scene, image, "fixed organs")
    moving = segmentation_from(headless_scene, image, "moving organs")
    return headless_scene, image, fixed, moving


def test_register_segmentations_end_to_end(segmentations, tmp_path):
    scene, image, fixed, moving = segmentations
    states = {n.GetID(): snapshot(n) for n in (fixed, moving)}
    result = known_result()
    config = OrganPointCloudConfig(points_per_organ=60, lambda_mm=8.0, beta_mm={2: 20.0, 5: 25.0, 9: 30.0}, seed=4)
    organs = [OrganRow(2, "sphere", lambda_mm=5.0), (5, "ellipsoid", None, 12.0, True), {"label": 9, "include": False}]
    progress, cancel = mock.Mock(), mock.Mock(return_value=False)
    with mock.patch(CORE, create=True, return_value=result) as core:
        out = OrganPointCloudLogic().register(fixed, moving, config, progress=progress, cancel=cancel, organs=organs,
                                              transformedMovingCopy=True)
    assert out is result
    (fixed_arg, moving_arg, used), kwargs = core.call_args
    assert kwargs == {"progress": progress, "cancel": cancel}
    assert used.labels == [2, 5] and used.lambda_mm == {2: 5.0, 5: 8.0} and used.beta_mm == {2: 20.0, 5: 12.0}
    assert used.seed == 4 and config.labels is None  # the caller's config is not modified
    # Labelmap-based segmentations reach the core as label images (sampled as the CLI samples files), with the
    # included segments only and their labels, at the original voxels.
    for arg in (fixed_arg, moving_arg):
        assert isinstance(arg, sitk.Image)
        on_grid = sitk.GetArrayFromImage(sitk.Resample(arg, image, sitk.Transform(), sitk.sitkNearestNeighbor))
        original = sitk.GetArrayFromImage(image)
        np.testing.assert_array_equal(on_grid, np.where(np.isin(original, [2, 5]), original, 0))

    node = scene.GetNodeByID(result.diagnostics["output_transform_node_id"])
    assert node.IsA("vtkMRMLGridTransformNode") and node.GetName() == "OrganPointCloud transform"
    assert node.GetTransformFromParent().IsA("vtkOrientedGridTransform")  # stored as FromParent
    assert node.GetNodeReference(slicer.vtkMRMLTransformNode.GetFixedNodeReferenceRole()) is fixed
    assert node.GetNodeReference(slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()) is moving

    # Saved to .h5, SimpleITK reads back the same DisplacementFieldTransform (LPS, fixed → moving).
    path = save_transform_node(node, tmp_path / "organs.h5")
    read = sitk.ReadTransform(str(path))
    if isinstance(read, sitk.CompositeTransform):
        read = read.GetNthTransform(0)
    read = read.Downcast()
    assert isinstance(read, sitk.DisplacementFieldTransform)
    field, expected = read.GetDisplacementField(), known_field()
    np.testing.assert_allclose(sitk.GetArrayFromImage(field), sitk.GetArrayFromImage(expected), atol=1e-5)
    np.testing.assert_allclose(field.GetOrigin(), expected.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(field.GetDirection(), expected.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(field.GetSpacing(), expected.GetSpacing(), atol=1e-6)
    probe = CENTRE + np.array([3.0, -4.0, 2.0])
    np.testing.assert_allclose(read.TransformPoint(probe.tolist()), probe + OFFSET + GRADIENT @ (probe - CENTRE),
                               atol=1e-4)

    # The transformed copy is in the fixed space: moved by about -u (moving → fixed).
    copy_id, = result.diagnostics["transformed_moving_node_ids"]
    copy = scene.GetNodeByID(copy_id)
    assert copy.IsA("vtkMRMLSegmentationNode") and copy.GetParentTransformNode() is None
    before = centroid(image > 0)
    np.testing.assert_allclose(centroid(mask_from_node(copy)), before - OFFSET - GRADIENT @ (before - CENTRE),
                               atol=0.6)
    for n in (fixed, moving):
        assert_unchanged(n, states[n.GetID()])
    assert moving.GetParentTransformNode() is None and result.warnings == []


def test_labelmaps_and_passed_output_node(headless_scene):
    image = organ_image()
    fixed = volume_node_from_image(image, headless_scene, "fixed", labelmap=True)
    moving = volume_node_from_image(image, headless_scene, "moving", labelmap=True)
    output = headless_scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "mine")
    moving.SetAndObserveTransformNodeID(output.GetID())  # the usual rerun: moving under the output
    count = headless_scene.GetNumberOfNodes()
    config = OrganPointCloudConfig(labels=[5, 9], points_per_organ=40)
    with mock.patch(CORE, create=True, return_value=known_result()) as core:
        result = OrganPointCloudLogic().register(fixed, moving, config, outputTransformNode=output)
    fixed_arg, _, used = core.call_args[0]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(fixed_arg), sitk.GetArrayFromImage(image))
    assert fixed_arg.GetDirection() == pytest.approx(image.GetDirection()) and used.labels == [5, 9]
    assert headless_scene.GetNumberOfNodes() == count  # updated in place, no copy asked
    assert result.diagnostics["output_transform_node_id"] == output.GetID() and output.GetName() == "mine"
    assert slicer.util.arrayFromGridTransform(output).shape == (12, 14, 16, 3)
    assert result.warnings == []


def test_model_lists_reference_every_model_and_copy_each(headless_scene):
    fixed = [sphere_model(headless_scene, [10.0, 0.0, 30.0], 6.0, "f1"),
             sphere_model(headless_scene, [-5.0, 8.0, 28.0], 4.0, "f2")]
    moving = [sphere_model(headless_scene, [11.0, 1.0, 30.0], 6.0, "m1"),
              sphere_model(headless_scene, [-4.0, 8.0, 29.0], 4.0, "m2")]
    other = set_linear_transform(None, np.eye(4), headless_scene, "other")
    fixed[1].SetAndObserveTransformNodeID(other.GetID())
    states = {n.GetID(): snapshot(n) for n in fixed + moving}
    config = OrganPointCloudConfig(points_per_organ=30)
    with mock.patch(CORE, create=True, return_value=known_result()) as core:
        result = OrganPointCloudLogic().register(fixed, moving, config, transformedMovingCopy=True)
    moving_arg = core.call_args[0][1]
    assert isinstance(moving_arg, LabeledPoints) and moving_arg.counts() == {1: 30, 2: 30}  # labels by position
    radius = np.linalg.norm(moving_arg.points[moving_arg.labels == 1] - [-11.0, -1.0, 30.0], axis=1)  # LPS centre
    assert np.all((radius > 0.85 * 6.0) & (radius < 6.0 + 1e-6))  # on the (faceted) sphere
    node = headless_scene.GetNodeByID(result.diagnostics["output_transform_node_id"])
    role = slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()
    assert [node.GetNthNodeReferenceID(role, i) for i in range(node.GetNumberOfNodeReferences(role))] == [
        m.GetID() for m in moving]
    copies = [headless_scene.GetNodeByID(i) for i in result.diagnostics["transformed_moving_node_ids"]]
    assert [c.GetName() for c in copies] == ["m1 registered", "m2 registered"]
    p_ras = slicer.util.arrayFromModelPoints(moving[0])
    q_ras = slicer.util.arrayFromModelPoints(copies[0])
    # moving → fixed: q + u(q) = p  (LPS)
    q = q_ras * np.diag(F3)
    np.testing.assert_allclose(q + OFFSET + (q - CENTRE) @ GRADIENT.T, p_ras * np.diag(F3), atol=1e-3)
    assert len(result.warnings) == 1 and "fixed model 'f2' is under transform 'other'" in result.warnings[0]
    for n in fixed + moving:
        assert_unchanged(n, states[n.GetID()])


@pytest.mark.parametrize("error", [RegistrationCancelled("stop"), RuntimeError("boom")])
def test_failure_or_cancel_adds_no_node(headless_scene, error):
    fixed = [sphere_model(headless_scene, [0.0, 0.0, 0.0], 5.0, "f")]
    moving = [sphere_model(headless_scene, [1.0, 0.0, 0.0], 5.0, "m")]
    count = headless_scene.GetNumberOfNodes()
    with mock.patch(CORE, create=True, side_effect=error):
        with pytest.raises(type(error)):
            OrganPointCloudLogic().register(fixed, moving, OrganPointCloudConfig(points_per_organ=20),
                                            transformedMovingCopy=True)
    assert headless_scene.GetNumberOfNodes() == count


def test_bad_inputs_are_rejected_before_the_core(headless_scene):
    volume = volume_node_from_image(organ_image(), headless_scene, "scalar")  # not a labelmap
    model = sphere_model(headless_scene, [0.0, 0.0, 0.0], 5.0, "m")
    linear = set_linear_transform(None, np.eye(4), headless_scene, "linear")
    other = sphere_model(headless_scene, [0.0, 0.0, 0.0], 5.0, "other")
    count = headless_scene.GetNumberOfNodes()
    logic = OrganPointCloudLogic()
    with mock.patch(CORE, create=True) as core:
        with pytest.raises(InputError, match="fixedNode: expected a segmentation node"):
            logic.register(volume, [model])
        with pytest.raises(InputError, match="linear transform node"):
            logic.register([model], [other], outputTransformNode=linear)
        with pytest.raises(InputError, match="no organ label in common"):
            _register_without_common_label(logic, model, other)
        core.assert_not_called()
    assert headless_scene.GetNumberOfNodes() == count


def _register_without_common_label(logic, fixed_model, moving_model):
    """The fixed model is organ 1 (position), the moving one organ 3 (its ``label`` point array)."""
    from vtk.util import numpy_support

    labels = numpy_support.numpy_to_vtk(np.full(moving_model.GetPolyData().GetNumberOfPoints(), 3, np.int32), deep=True)
    labels.SetName("label")
    moving_model.GetPolyData().GetPointData().AddArray(labels)
    logic.register([fixed_model], [moving_model], OrganPointCloudConfig(points_per_organ=20))


@pytest.mark.slow
def test_real_core_brings_shifted_organs_back(headless_scene):
    """End to end with the real MO-BCPD (small and seeded, ~5 s): each organ of the moving segmentation is
    shifted differently; the transformed copy lands on the fixed organs."""
    shifts = {2: [2.0, 1.0, 0.0], 5: [-1.5, 2.0, 1.0], 9: [1.0, -1.0, -1.5]}
    fixed_image, moving_image = organ_image(), organ_image(shifts=shifts)
    fixed = segmentation_from(headless_scene, fixed_image, "fixed organs")
    moving = segmentation_from(headless_scene, moving_image, "moving organs")
    config = OrganPointCloudConfig(points_per_organ=80, lambda_mm=5.0, beta_mm=15.0, max_iterations=40, rank=20,
                                   grid_spacing_mm=4.0, device="cpu", seed=0)
    result = OrganPointCloudLogic().register(fixed, moving, config, transformedMovingCopy=True)
    node = headless_scene.GetNodeByID(result.diagnostics["output_transform_node_id"])
    assert node.IsA("vtkMRMLGridTransformNode") and result.diagnostics["labels"] == [2, 5, 9]
    copy = headless_scene.GetNodeByID(result.diagnostics["transformed_moving_node_ids"][0])
    errors = {}  # organ centroid distance to the fixed organ (mm): moving input, transformed copy
    for label in (2, 5, 9):
        segment_name = next(e.name for e in segment_labels(copy) if e.label == label)
        target = centroid(fixed_image == label)
        errors[label] = (np.linalg.norm(centroid(moving_image == label) - target),
                         np.linalg.norm(centroid(mask_from_node(copy, segment_name=segment_name)) - target))
    assert all(after < 0.7 * before for before, after in errors.values()), errors
    assert np.mean([after for _, after in errors.values()]) < 0.5 * np.mean([b for b, _ in errors.values()]), errors


def test_organ_table_restricts_matrices():
    config = OrganPointCloudConfig(
        labels=[1, 2, 3], lambda_mm={1: 4.0, 2: 5.0, 3: 6.0}, beta_mm=30.0,  # explicit: defaults change
        coherence=[[1.0, 0.5, 0.2], [0.5, 1.0, 0.3], [0.2, 0.3, 1.0]],
        label_transition=[[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.0, 0.2, 0.8]],
    )
    out = config_with_organs(config, [(3, "c", None, "", True), (1, "a", 9.0, 40.0), (2, "b", 1.0, 1.0, False)])
    assert out.labels == [3, 1] and out.lambda_mm == {3: 6.0, 1: 9.0} and out.beta_mm == {3: 30.0, 1: 40.0}
    np.testing.assert_allclose(out.coherence, [[1.0, 0.2], [0.2, 1.0]])
    np.testing.assert_allclose(out.label_transition, [[0.8, 0.0], [0.1, 0.8]] / np.array([[0.8], [0.9]]))
    assert organ_row({"label": 4.0, "lambda_mm": "7"}) == OrganRow(4, "", 7.0, None, True)
    for bad, message in [([(1, "a", None, None, False)], "at least one included"), ([(1,), (1,)], "distinct"),
                         ([(7,)], "no row for organs"), ([(1, "a", -2.0)], "positive number"),
                         ([("x",)], "integer label")]:
        with pytest.raises(InputError, match=message):
            config_with_organs(config, bad)


def test_organ_table_helpers_for_the_gui(headless_scene):
    """Rows for the module's organ table: union of both inputs' organs, earlier edits kept, unusable organs
    (in one input only) never reach the core."""
    fixed = segmentation_from(headless_scene, organ_image(), "fixed organs")  # organs 2, 5, 9
    image = organ_image()
    image = sitk.ChangeLabel(image, {9: 4})
    moving = volume_node_from_image(image, headless_scene, "moving", labelmap=True)  # organs 2, 4, 5
    rows = organ_table_rows(fixed, moving, previous=[{"label": 5, "lambda_mm": 7.0, "include": False}])
    assert [(r["label"], r["inBoth"]) for r in rows] == [(2, True), (4, False), (5, True), (9, False)]
    assert rows[2]["lambda_mm"] == 7.0 and rows[2]["include"] is False and rows[0]["name"]
    organs = organ_rows_from_table(rows)
    assert [(o.label, o.include, o.lambda_mm) for o in organs] == [(2, True, None), (5, False, 7.0)]
    assert organ_rows_from_table([]) is None
    assert organ_names(moving).keys() == {2, 4, 5} and organ_names(fixed).keys() == {2, 5, 9}
    model = sphere_model(headless_scene, [0.0, 0.0, 0.0], 3.0, "kidney")
    assert organ_names([model]) == {1: "kidney"}
    assert parse_matrix(" 1, 0.5; 0.5 ,1") == [[1.0, 0.5], [0.5, 1.0]] == parse_matrix("1 0.5\n0.5 1")
    for bad in ("", "1,0.5;0.5", "1,a;0,1"):
        with pytest.raises(ValueError, match="square matrix"):
            parse_matrix(bad)


def _child_options(scene, config):
    """The CLI options a run of ``config`` passes to its child process, and the child's parse of them."""
    from RegistrationSuiteLib.cli.main import build_parser

    image = organ_image()
    fixed = volume_node_from_image(image, scene, "fixed", labelmap=True)
    moving = volume_node_from_image(image, scene, "moving", labelmap=True)
    options = [str(o) for o in OrganPointCloudLogic().run_spec(fixed, moving, config).options]
    args = build_parser().parse_args(["organ-points", "--fixed", "f.nrrd", "--moving", "m.nrrd", "--output", "t.h5"]
                                     + options)
    return options, args


@pytest.mark.parametrize("spread", [True, False])
def test_run_spec_passes_the_sampling_to_the_cli(headless_scene, spread):
    """``spread_sampling`` becomes ``--sampling spread|random`` (before, a changed one was refused), and the child
    parses it back to the same config value."""
    from RegistrationSuiteLib.mrml.organ_logic import DEFAULT_SAMPLING

    options, args = _child_options(headless_scene, OrganPointCloudConfig(spread_sampling=spread))
    assert options.count("--sampling") == 1
    assert (args.sampling == "spread") is spread
    assert DEFAULT_SAMPLING == ("spread" if OrganPointCloudConfig().spread_sampling else "random")


@pytest.mark.parametrize("common_fov", [True, False])
def test_run_spec_passes_the_common_field_of_view_to_the_cli(headless_scene, common_fov):
    """``common_fov`` becomes ``--common-fov on|off`` (before, a changed one was refused and the child always ran
    with the CLI's default), and the child builds the same config value from it."""
    from RegistrationSuiteLib.cli.organ_points import build_config
    from RegistrationSuiteLib.mrml.organ_logic import DEFAULT_COMMON_FOV

    options, args = _child_options(headless_scene, OrganPointCloudConfig(common_fov=common_fov))
    assert options.count("--common-fov") == 1
    assert args.common_fov == ("on" if common_fov else "off")
    assert build_config(args).common_fov is common_fov
    assert DEFAULT_COMMON_FOV is OrganPointCloudConfig().common_fov is True

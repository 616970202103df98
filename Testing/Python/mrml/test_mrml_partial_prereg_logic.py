"""PartialPreregLogic (TSPM on MRML nodes) with real scenes.

Only the core function ``register_partial_prereg`` is replaced (``unittest.mock.patch``) by one returning a known
RegistrationResult; scene, nodes, conversions, table and resampling are real. The end-to-end test with the real
core (shipped samples, a shipped model) runs when the core and a model are available.
"""

import importlib
from unittest import mock

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError, RegistrationCancelled, RegistrationFailed
from RegistrationSuiteLib.geometry import LPS_TO_RAS, Grid, apply_affine
from RegistrationSuiteLib.result import RegistrationResult

slicer = pytest.importorskip("slicer", reason="needs the MRML libraries (pip install slicer-core)")

from test_mrml_logic import assert_unchanged, blob_image, snapshot  # noqa: E402

from RegistrationSuiteLib.mrml import partial_prereg_logic as ppl  # noqa: E402
from RegistrationSuiteLib.mrml.partial_prereg_logic import (  # noqa: E402
    PartialPreregLogic,
    available_models,
    diagnostics_table,
    summarize_diagnostics,
)
from RegistrationSuiteLib.mrml.transforms import set_linear_transform  # noqa: E402
from RegistrationSuiteLib.mrml.volumes import volume_node_from_image  # noqa: E402

CORE = "RegistrationSuiteLib.methods.partial_prereg.register_partial_prereg"
F3 = LPS_TO_RAS[:3, :3]
RESIDUALS = [1.0, 2.5, 3.25, 4.0, 14.0] * 8 + [40.0] * 50  # 40 inliers below the threshold, median 3.25 mm
# The layout of register_partial_prereg's diagnostics (without the bulky entries).
GOOD = {"model": "tspm_test",
        "ransac": {"consensus": True, "num_points": 90, "num_inliers": 40, "inlier_ratio": 40 / 90,
                   "threshold_mm": 15.0, "residuals_mm": RESIDUALS},
        "refinement": {"metric": "mi", "before": 0.31, "after": 0.52, "improved": True}, "doubtful": []}


def known_result(fixed_image, diagnostics=GOOD):
    tx = sitk.Euler3DTransform(Grid.from_image(fixed_image).center().tolist(), 0.1, -0.05, 0.2, (3.0, -2.0, 4.0))
    return RegistrationResult("partial_prereg", tx, Grid.from_image(fixed_image), timings={"total": 1.5},
                              diagnostics={k: dict(v) if isinstance(v, dict) else v for k, v in diagnostics.items()})


def table_dict(node):
    assert [node.GetColumnName(c) for c in range(node.GetNumberOfColumns())] == ["Name", "Value"]
    return {node.GetCellText(r, 0): node.GetCellText(r, 1) for r in range(node.GetNumberOfRows())}


@pytest.fixture
def volumes(headless_scene):
    fixed_image = blob_image(seed=0)
    fixed = volume_node_from_image(fixed_image, headless_scene, "full")
    moving = volume_node_from_image(blob_image(size=(15, 17, 5), seed=1), headless_scene, "slab")
    return headless_scene, fixed, moving, fixed_image


def test_register_writes_transform_table_and_references(volumes):
    scene, fixed, moving, fixed_image = volumes
    result = known_result(fixed_image)
    states = {n.GetID(): snapshot(n) for n in (fixed, moving)}
    progress, cancel = mock.Mock(), mock.Mock(return_value=False)
    with mock.patch(CORE, create=True, return_value=result) as core:
        out = PartialPreregLogic().register(fixed, moving, progress=progress, cancel=cancel)
    assert out is result
    (fixed_arg, moving_arg, config_arg), kwargs = core.call_args
    assert type(config_arg).__name__ == "PartialPreregConfig" and config_arg.refine == "mi"
    assert kwargs == {"model": None, "progress": progress, "cancel": cancel}
    np.testing.assert_array_equal(sitk.GetArrayFromImage(fixed_arg), sitk.GetArrayFromImage(fixed_image))
    assert moving_arg.GetSize() == (15, 17, 5)

    node = scene.GetNodeByID(result.diagnostics["output_transform_node_id"])
    assert node.IsA("vtkMRMLLinearTransformNode") and node.GetName() == "PartialVolumePreregistration transform"
    assert node.GetNodeReference(slicer.vtkMRMLTransformNode.GetFixedNodeReferenceRole()) is fixed
    assert node.GetNodeReference(slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()) is moving
    fixed_lps = np.array([[1.0, 12.0, 9.0], [-4.0, 20.0, 14.0]])
    moving_lps = apply_affine(result.fixed_to_moving_matrix, fixed_lps)
    to_parent = slicer.util.arrayFromTransformMatrix(node)  # moving → fixed, RAS
    np.testing.assert_allclose(apply_affine(to_parent, moving_lps @ F3), fixed_lps @ F3, atol=1e-9)

    rows = table_dict(scene.GetNodeByID(result.diagnostics["diagnostics_table_node_id"]))
    assert rows["Verdict"] == "plausible" and rows["RANSAC inliers"] == "40 of 90"
    assert rows["Inlier ratio"] == "0.444" and rows["Median residual (mm)"] == "3.25"
    assert (rows["Refinement metric"], rows["Metric before refinement"], rows["Metric after refinement"]) == (
        "mi (higher is better)", "0.31", "0.52")
    assert rows["Global search fallback"] == "no" and rows["Time (s)"] == "1.5" and rows["Model"] == "tspm_test"
    assert result.diagnostics["verdict"] == {"verdict": "plausible", "doubtful": False, "reasons": []}
    assert result.warnings == [] and "output_volume_node_id" not in result.diagnostics
    for n in (fixed, moving):
        assert_unchanged(n, states[n.GetID()])
    assert moving.GetParentTransformNode() is None  # the widget decides that, not the logic


def test_passed_nodes_are_updated_in_place(volumes):
    scene, fixed, moving, fixed_image = volumes
    output = set_linear_transform(None, np.eye(4), scene, "mine")
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "my table")
    table.AddEmptyRow()
    resampled = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "resampled")
    resampled.CreateDefaultDisplayNodes()
    count = scene.GetNumberOfNodes()
    result = known_result(fixed_image)
    config = PartialPreregLogic().make_config(refine="nmi", seed=3)
    with mock.patch(CORE, create=True, return_value=result) as core:
        PartialPreregLogic().register(fixed, moving, config, outputTransformNode=output, diagnosticsTableNode=table,
                                      outputVolumeNode=resampled)
    assert core.call_args.args[2] is config
    assert scene.GetNumberOfNodes() == count
    ids = result.diagnostics
    assert (ids["output_transform_node_id"], ids["diagnostics_table_node_id"], ids["output_volume_node_id"]) == (
        output.GetID(), table.GetID(), resampled.GetID())
    expected = LPS_TO_RAS @ np.linalg.inv(result.fixed_to_moving_matrix) @ LPS_TO_RAS
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(output), expected, atol=1e-9)
    assert table.GetName() == "my table" and table_dict(table)["Verdict"] == "plausible"
    assert resampled.GetImageData().GetDimensions() == fixed.GetImageData().GetDimensions()
    np.testing.assert_allclose(slicer.util.arrayFromVolume(resampled).shape, slicer.util.arrayFromVolume(fixed).shape)


@pytest.mark.parametrize("error", [RegistrationCancelled("cancelled"), RegistrationFailed("no consensus")])
def test_failure_or_cancel_adds_no_node_and_keeps_outputs(volumes, error):
    scene, fixed, moving, _ = volumes
    output = set_linear_transform(None, np.diag([2.0, 1.0, 1.0, 1.0]), scene, "previous")
    table = diagnostics_table(known_result(blob_image()), None, scene, name="previous table")
    before = table_dict(table)
    states = {n.GetID(): snapshot(n) for n in (fixed, moving, output)}
    count = scene.GetNumberOfNodes()
    for passed_output, passed_table in ((None, None), (output, table)):
        with mock.patch(CORE, create=True, side_effect=error), pytest.raises(type(error)):
            PartialPreregLogic().register(fixed, moving, outputTransformNode=passed_output,
                                          diagnosticsTableNode=passed_table)
    assert scene.GetNumberOfNodes() == count and table_dict(table) == before
    for n in (fixed, moving, output):
        assert_unchanged(n, states[n.GetID()])


def test_failing_write_removes_the_nodes_it_created(volumes):
    scene, fixed, moving, fixed_image = volumes
    count = scene.GetNumberOfNodes()
    with mock.patch(CORE, create=True, return_value=known_result(fixed_image)), \
            mock.patch.object(ppl, "diagnostics_table", side_effect=RuntimeError("disk full")), \
            pytest.raises(RuntimeError, match="disk full"):
        PartialPreregLogic().register(fixed, moving)
    assert scene.GetNumberOfNodes() == count


WITHOUT_CORE_VERDICT = {k: v for k, v in GOOD.items() if k != "doubtful"}
FAR = {**GOOD["ransac"], "residuals_mm": [9.0, 10.0, 11.0, 30.0]}


@pytest.mark.parametrize(
    "diagnostics, reason",
    [
        (GOOD, None),
        ({**GOOD, "doubtful": ["TSPM had no RANSAC consensus"]}, "TSPM had no RANSAC consensus"),
        ({**GOOD, "ransac": FAR}, None),  # the core's (empty) list is authoritative: residuals are not re-judged
        ({**GOOD, "ransac": FAR, "fallback": {"used": True}, "doubtful": ["x"]}, "x"),
        # Results without the core's own list get rules from the logic.
        (WITHOUT_CORE_VERDICT, None),
        ({**WITHOUT_CORE_VERDICT, "ransac": FAR}, "median residual is 10.0 mm"),
        ({**WITHOUT_CORE_VERDICT, "fallback": {"used": True}}, "no consensus"),
        ({**WITHOUT_CORE_VERDICT, "ransac": {"num_inliers": 20, "num_points": 100, "inlier_ratio": 0.2}},
         "only 20% of the patch predictions agree"),
        ({**WITHOUT_CORE_VERDICT, "refinement": {"metric": "mse", "before": 5.0, "after": 5.0}},
         "did not improve mse"),
        ({**WITHOUT_CORE_VERDICT, "refinement": {"metric": "none"}}, None),
        ({}, None),
    ],
)
def test_verdict(headless_scene, diagnostics, reason):
    result = known_result(blob_image(), diagnostics)
    summary = summarize_diagnostics(result)
    assert summary.doubtful == (reason is not None)
    assert reason is None or any(reason in r for r in summary.reasons), summary.reasons
    assert len(summary.reasons) <= 1, summary.reasons
    rows = table_dict(diagnostics_table(result, scene=headless_scene))
    assert rows["Verdict"] == ("doubtful" if reason else "plausible")
    assert reason is None or reason in rows["Reason"]


def test_doubtful_reasons_are_warned_once(volumes):
    scene, fixed, moving, fixed_image = volumes
    result = known_result(fixed_image, {**GOOD, "ransac": FAR, "doubtful": ["only 4% agree"]})
    result.warnings.append("doubtful result: only 4% agree")  # the core warns about its own reasons
    with mock.patch(CORE, create=True, return_value=result):
        PartialPreregLogic().register(fixed, moving)
    assert result.diagnostics["verdict"]["doubtful"]
    assert result.warnings == ["doubtful result: only 4% agree"]
    # Without the core's list the logic's own reason is warned, once.
    result = known_result(fixed_image, {**WITHOUT_CORE_VERDICT, "ransac": FAR})
    with mock.patch(CORE, create=True, return_value=result):
        PartialPreregLogic().register(fixed, moving)
    assert result.warnings == ["doubtful result: the RANSAC inliers' median residual is 10.0 mm (above 8 mm)"]


def test_invalid_inputs_fail_before_the_core_runs(volumes, tmp_path, monkeypatch):
    scene, fixed, moving, _ = volumes
    monkeypatch.setenv("REGISTRATION_SUITE_MODELS", str(tmp_path))
    two_d = volume_node_from_image(blob_image(dim=2), scene, "slice")
    other_2d = volume_node_from_image(blob_image(dim=2, seed=2), scene, "slice 2")
    count = scene.GetNumberOfNodes()
    logic = PartialPreregLogic()
    with mock.patch(CORE, create=True) as core:
        with pytest.raises(InputError, match="diagnosticsTableNode: expected a table node"):
            logic.register(fixed, moving, diagnosticsTableNode=moving)
        with pytest.raises(InputError, match="outputVolumeNode: expected a new volume node"):
            logic.register(fixed, moving, outputVolumeNode=fixed)
        with pytest.raises(InputError, match="needs 3D volumes"):
            logic.register(two_d, other_2d)
        with pytest.raises(InputError, match="no model named 'missing'"):
            logic.register(fixed, moving, model="missing")
        with pytest.raises(InputError, match="refine"):
            logic.make_config(refine="ncc")
    core.assert_not_called()
    assert scene.GetNumberOfNodes() == count


def test_models_by_name_reach_the_core_as_files(volumes, tmp_path, monkeypatch):
    scene, fixed, moving, fixed_image = volumes
    monkeypatch.setenv("REGISTRATION_SUITE_MODELS", str(tmp_path))
    (tmp_path / "mine.pt").write_bytes(b"not read by the listing")
    listed = available_models()
    assert listed[0] == ("mine", "user", tmp_path / "mine.pt")
    assert all(source == "shipped" for _, source, _ in listed[1:])
    with mock.patch(CORE, create=True, return_value=known_result(fixed_image)) as core:
        PartialPreregLogic().register(fixed, moving, model="mine")
    assert core.call_args.kwargs["model"] == tmp_path / "mine.pt"


def _real_core_and_model():
    """``(model name, None)`` when the real core and a shipped TSPM model are there, else ``(None, why)``."""
    try:
        module = importlib.import_module("RegistrationSuiteLib.methods.partial_prereg")
    except ImportError as error:
        return None, f"core not importable: {error}"
    shipped = [name for name, source, _ in available_models() if source == "shipped"]
    if not shipped:
        return None, "no shipped TSPM model"
    return (module.DEFAULT_MODEL if module.DEFAULT_MODEL in shipped else shipped[0]), None


@pytest.mark.slow
def test_real_core_finds_a_rotated_slab(headless_scene, monkeypatch, tmp_path):
    """End to end on the shipped samples: an axial T1 slab (the model's modality), rotated by 10° and shifted,
    is located in the full T2 volume."""
    monkeypatch.setenv("REGISTRATION_SUITE_MODELS", str(tmp_path))  # only shipped models
    model, why = _real_core_and_model()
    if model is None:
        pytest.skip(why)
    from RegistrationSuiteLib.geometry import rigid_about_center, rotation_from_quaternion
    from RegistrationSuiteLib.sample_data import load_sample

    t1, t2 = load_sample("T1"), load_sample("T2")  # co-registered
    depth = t1.GetSize()[2]
    slab = t1[:, :, depth // 2 - 12: depth // 2 + 12]
    center = np.array(Grid.from_image(slab).center())
    half = np.radians(15.0) / 2
    rotation = rotation_from_quaternion(np.r_[np.cos(half), np.sin(half) * np.array([0.0, 0.6, 0.8])][None])[0]
    slab_to_moved = rigid_about_center(rotation, center, [10.0, -8.0, 6.0])  # LPS: where each slab voxel goes
    moved = sitk.Image(slab)
    moved.SetDirection((slab_to_moved[:3, :3] @ np.array(slab.GetDirection()).reshape(3, 3)).ravel().tolist())
    moved.SetOrigin(apply_affine(slab_to_moved, np.array([slab.GetOrigin()]))[0].tolist())
    fixed = volume_node_from_image(t2, headless_scene, "T2")
    moving = volume_node_from_image(moved, headless_scene, "T1 slab")
    logic = PartialPreregLogic()
    result = logic.register(fixed, moving, logic.make_config(seed=0, device="cpu"), model=model)
    # The true fixed → moving: content at fixed point p (= slab point p) now lies at slab_to_moved(p).
    points = center + np.array([[0, 0, 0], [30, 0, 0], [0, 30, 0], [0, 0, 20]], dtype=float)
    identity_error = np.linalg.norm(points - apply_affine(slab_to_moved, points), axis=1).max()
    assert identity_error > 15.0  # a no-op is far outside the tolerance below
    error = apply_affine(result.fixed_to_moving_matrix, points) - apply_affine(slab_to_moved, points)
    assert np.linalg.norm(error, axis=1).max() < 5.0, result.diagnostics.get("doubtful")
    # Through the bridge: the transform node's ToParent maps each moving RAS point onto its fixed RAS point
    # (fails if LPS and RAS were swapped anywhere between the nodes and the core).
    node = headless_scene.GetNodeByID(result.diagnostics["output_transform_node_id"])
    to_parent = slicer.util.arrayFromTransformMatrix(node)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    moved_ras = apply_affine(slab_to_moved, points) @ lps_to_ras
    node_error = apply_affine(to_parent, moved_ras) - points @ lps_to_ras
    assert np.linalg.norm(node_error, axis=1).max() < 5.0
    rows = table_dict(headless_scene.GetNodeByID(result.diagnostics["diagnostics_table_node_id"]))
    assert rows["Model"] == model and rows["Global search fallback"] == "no"  # run time: the benchmark


def test_failing_write_restores_passed_nodes(volumes):
    """Issue 8 §2.8: the passed transform is written before the table; when the table (or the resampled
    volume) fails, the passed transform node, its references and the passed table are restored."""
    scene, fixed, moving, fixed_image = volumes
    output = set_linear_transform(None, np.diag([2.0, 1.0, 1.0, 1.0]), scene, "previous")
    table = diagnostics_table(known_result(blob_image()), None, scene, name="previous table")
    before = table_dict(table)
    state = restorable(output)
    count = scene.GetNumberOfNodes()
    resampled = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "resampled")
    for patched in ("diagnostics_table", "resample_volume"):
        target = ppl if patched == "diagnostics_table" else ppl.PartialPreregLogic
        with mock.patch(CORE, create=True, return_value=known_result(fixed_image)), \
                mock.patch.object(target, patched, side_effect=RuntimeError("disk full")), \
                pytest.raises(RuntimeError, match="disk full"):
            PartialPreregLogic().register(fixed, moving, outputTransformNode=output, diagnosticsTableNode=table,
                                          outputVolumeNode=resampled)
        assert restorable(output) == state
        assert table_dict(table) == before
        assert output.GetNodeReferenceID(slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()) is None
        assert scene.GetNumberOfNodes() == count + 1


def restorable(node):
    """What a rollback restores (a restore modifies the node, so its modification time is not compared)."""
    return {k: np.asarray(v).tolist() for k, v in snapshot(node).items() if k != "mtime"}


def test_run_spec_passes_the_local_search_metric_and_cache_choices(volumes):
    scene, fixed, moving, _ = volumes
    logic = PartialPreregLogic()
    default = logic.run_spec(fixed, moving, logic.make_config(device="cpu"))
    assert "--no-local-search" not in default.options and "--no-cache" not in default.options
    spec = logic.run_spec(fixed, moving, logic.make_config(device="cpu", refine="nmi", local_search=False,
                                                           cache_fixed_to_template=False))
    assert spec.options[spec.options.index("--refine") + 1] == "nmi"
    assert "--no-local-search" in spec.options and "--no-cache" in spec.options


def test_network_skipped_result_is_doubtful_with_its_reason(headless_scene):
    reason = ("the network was skipped (too small for 16³ patches); the neighbourhood of the fixed image was "
              "searched from scanner-orientation seeds instead")
    diagnostics = {k: v for k, v in GOOD.items() if k != "ransac"}
    result = known_result(blob_image(), dict(diagnostics, doubtful=[reason], network_skipped={"reason": "x"}))
    summary = summarize_diagnostics(result)
    assert summary.doubtful and summary.inliers is None and reason in summary.reasons
    rows = table_dict(diagnostics_table(result, scene=headless_scene))
    assert rows["Verdict"] == "doubtful"

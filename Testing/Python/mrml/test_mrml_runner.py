"""The child-process runner (``RegistrationSuiteLib.mrml.runner``) end to end with slicer-core.

Nodes → temporary files → the real ``python -m RegistrationSuiteLib <command> --progress-json`` in a child
process → nodes. Also: cancelling mid-run leaves the scene unchanged and no temporary files; a child that exits
non-zero (or crashes) gives one clear error; a failure while reading outputs back restores every node.
"""

import os
import stat
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="needs the MRML libraries (pip install slicer-core)")

from RegistrationSuiteLib.geometry import rotation_angle_deg  # noqa: E402
from RegistrationSuiteLib.mrml import runner as runner_module  # noqa: E402
from RegistrationSuiteLib.mrml.logic import GlobalRigidSearchLogic  # noqa: E402
from RegistrationSuiteLib.mrml.runner import (  # noqa: E402
    CANCELLED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    ChildRun,
    NodeInput,
    NodeOutput,
    RunSpec,
)
from RegistrationSuiteLib.mrml.volumes import volume_node_from_image  # noqa: E402
from RegistrationSuiteLib.sample_data import sample_path  # noqa: E402

F = np.diag([-1.0, -1.0, 1.0, 1.0])


def small_known_pair():
    """The T1 sample smoothed and shrunk to 4 mm (31×40×35) as fixed, and the same image moved by a known rigid
    transform (LPS) as moving; returns (fixed, moving, fixedToMoving LPS 4×4)."""
    t1 = sitk.ReadImage(str(sample_path("T1")), sitk.sitkFloat32)
    fixed = sitk.Shrink(sitk.SmoothingRecursiveGaussian(t1, 2.0), [2, 2, 2])
    center = fixed.TransformContinuousIndexToPhysicalPoint([s / 2 for s in fixed.GetSize()])
    fixed_to_moving = sitk.Euler3DTransform(center, 0.1, -0.15, 0.2, (4.0, -3.0, 2.0))
    moving = sitk.Resample(fixed, fixed, fixed_to_moving.GetInverse(), sitk.sitkLinear, 0.0)
    m = np.eye(4)
    m[:3, :3] = np.asarray(fixed_to_moving.GetMatrix()).reshape(3, 3)
    m[:3, 3] = np.asarray(fixed_to_moving.TransformPoint((0.0, 0.0, 0.0)))
    return fixed, moving, m


@pytest.fixture
def volumes(headless_scene):
    fixed, moving, fixed_to_moving = small_known_pair()
    fixed_node = volume_node_from_image(fixed, headless_scene, "fixed")
    moving_node = volume_node_from_image(moving, headless_scene, "moving")
    return headless_scene, fixed_node, moving_node, fixed_to_moving


def scene_state(scene):
    """What a cancelled or failed run must not change: node IDs, and every node's modification time."""
    return {scene.GetNthNode(i).GetID(): scene.GetNthNode(i).GetMTime() for i in range(scene.GetNumberOfNodes())}


def temp_folders(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_progress_lines_are_parsed_and_summary_kept(tmp_path, headless_scene):
    """A fake child writing progress lines (one split over two writes) and a summary: the run reads both."""
    script = tmp_path / "fake_python.py"
    script.write_text(
        "import json, sys, time, SimpleITK as sitk\n"
        "args = sys.argv[1:]\n"
        "out = args[args.index('--output') + 1]\n"
        "sys.stdout.write('{\"event\":\"progress\",\"fraction\":0.25,'\n"
        "                 '\"stage\":\"level 1\",\"message\":\"level 1: a\"}\\n')\n"
        "sys.stdout.write('not json from a library\\n')\n"
        "sys.stdout.write('{\"event\":\"progress\",\"fraction\":0.5,'); sys.stdout.flush(); time.sleep(0.3)\n"
        "sys.stdout.write('\"stage\":\"level 2\",\"message\":\"level 2: b\"}\\n'); sys.stdout.flush()\n"
        "sitk.WriteTransform(sitk.TranslationTransform(3, (1.0, 2.0, 3.0)), out)\n"
        "print(json.dumps({'method': 'fake', 'score': 0.5, 'timings': {'total': 1.0}, 'warnings': ['w']}))\n"
    )
    python = _wrapper(tmp_path, f'exec "{sys.executable}" "{script}" "$@"')
    fixed = volume_node_from_image(sitk.Image([4, 4, 4], sitk.sitkFloat32), headless_scene, "f")
    spec = RunSpec("anything", inputs=[NodeInput("--fixed", fixed, "volume", key="fixed")],
                   outputs=[NodeOutput("--output", "transform", key="transform", references=("fixed", "fixed"))])
    run = ChildRun(spec, python=str(python), temp_parent=tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    run.start()
    seen = []
    while run.poll() == RUNNING:
        seen.append((run.fraction, run.stage))
        time.sleep(0.02)
    assert run.state == SUCCEEDED, run.error
    assert (0.25, "level 1") in seen and run.fraction == 0.5 and run.stage == "level 2"
    assert run.outcome.result.method == "fake" and run.outcome.result.warnings == ["w"]
    node = run.outcome.nodes["transform"]
    # translation (1, 2, 3) LPS fixed→moving  ⇒  ToParent (moving→fixed, RAS) translates by (1, 2, -3)
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(node)[:3, 3], [1.0, 2.0, -3.0])
    assert temp_folders(tmp_path / "tmp") == []


def _wrapper(tmp_path, body):
    path = tmp_path / "python"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_progress_json_cli_lines(tmp_path):
    """The CLI's --progress-json: JSON progress lines on stdout, the last line the --json summary."""
    import json
    import subprocess

    fixed, moving, _ = small_known_pair()
    middle = fixed.GetSize()[2] // 2  # 2D slices: a fast run
    sitk.WriteImage(fixed[:, :, middle], str(tmp_path / "f.nrrd"))
    sitk.WriteImage(moving[:, :, middle], str(tmp_path / "m.nrrd"))
    proc = subprocess.run(
        [sys.executable, "-m", "RegistrationSuiteLib", "rigid-search", "--fixed", str(tmp_path / "f.nrrd"),
         "--moving", str(tmp_path / "m.nrrd"), "--output", str(tmp_path / "t.h5"), "--rotations", "12,10,3",
         "--device", "cpu", "--progress-json"],
        capture_output=True, text=True, timeout=600, env=runner_module.child_environment(),
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    progress = [line for line in lines[:-1] if line.get("event") == "progress"]
    assert len(progress) == len(lines) - 1 >= 3
    assert all(set(p) == {"event", "fraction", "stage", "message"} for p in progress)
    fractions = [p["fraction"] for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert lines[-1]["method"] == "global_rigid" and "event" not in lines[-1]


@pytest.mark.slow
def test_rigid_search_child_run_recovers_known_transform(volumes, tmp_path):
    """rigid-search end to end: the transform node recovers the known misalignment; optional outputs too."""
    scene, fixed, moving, fixed_to_moving = volumes
    output = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "passed output")
    resampled = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "resampled")
    from RegistrationSuiteLib.methods.global_rigid.config import GlobalRigidConfig

    spec = GlobalRigidSearchLogic().run_spec(fixed, moving, GlobalRigidConfig(num_rotations=(30, 10, 3), device="cpu"),
                                             output, outputVolumeNode=resampled, placeMovingUnderTransform=True)
    run = ChildRun(spec, temp_parent=tmp_path).start()
    assert run.wait(timeout=900) == SUCCEEDED, run.error
    assert run.outcome.nodes["transform"] is output
    moving_to_fixed_ras = slicer.util.arrayFromTransformMatrix(output)
    expected = F @ np.linalg.inv(fixed_to_moving) @ F
    assert float(rotation_angle_deg(np.linalg.inv(expected[:3, :3]) @ moving_to_fixed_ras[:3, :3])) < 1.5
    np.testing.assert_allclose(moving_to_fixed_ras[:3, 3], expected[:3, 3], atol=2.0)
    assert moving.GetParentTransformNode() is output
    role = slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()
    assert output.GetNodeReferenceID(role) == moving.GetID()
    assert resampled.GetImageData().GetDimensions() == fixed.GetImageData().GetDimensions()
    assert run.outcome.result.diagnostics["output_transform_node_id"] == output.GetID()
    assert {"export", "child", "import"} <= set(run.timings)
    assert temp_folders(tmp_path) == []


def test_cancel_mid_run_leaves_scene_unchanged_and_no_temp_files(volumes, tmp_path):
    scene, fixed, moving, _ = volumes
    output = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "passed output")
    from RegistrationSuiteLib.methods.global_rigid.config import GlobalRigidConfig

    before = scene_state(scene)
    spec = GlobalRigidSearchLogic().run_spec(fixed, moving, GlobalRigidConfig(num_rotations=(3000, 400, 40)),
                                             output, placeMovingUnderTransform=True)
    run = ChildRun(spec, temp_parent=tmp_path, cancel_grace_seconds=2.0).start()
    assert len(temp_folders(tmp_path)) == 1  # the private folder exists while the child runs
    deadline = time.monotonic() + 300
    while run.poll() == RUNNING and run.fraction == 0.0 and time.monotonic() < deadline:
        time.sleep(0.05)  # wait for the first progress line: the child is really computing
    assert run.state == RUNNING and run.fraction > 0.0
    run.cancel()
    assert run.wait(timeout=60) == CANCELLED
    assert run.outcome is None and run.error is None
    assert scene_state(scene) == before
    assert moving.GetParentTransformNode() is None
    assert temp_folders(tmp_path) == []


def test_child_exiting_nonzero_gives_one_clear_error(volumes, tmp_path):
    scene, fixed, moving, _ = volumes
    before = scene_state(scene)
    spec = GlobalRigidSearchLogic().run_spec(fixed, moving)
    spec.options += ["--min-overlap", "7"]  # argparse keeps the last: an invalid overlap → exit 2
    run = ChildRun(spec, temp_parent=tmp_path).start()
    assert run.wait(timeout=300) == FAILED
    assert run.error.exit_code == 2
    assert "\n" not in run.error.message and "min_overlap" in run.error.message
    assert "(exit code 2)" in run.error.message
    assert run.error.details.strip()  # the child's last stderr lines
    assert scene_state(scene) == before
    assert temp_folders(tmp_path) == []


def test_crashing_child_gives_one_clear_error(volumes, tmp_path):
    scene, fixed, moving, _ = volumes
    python = _wrapper(tmp_path, 'echo "about to crash" >&2\nkill -SEGV $$')
    (tmp_path / "tmp").mkdir()
    spec = GlobalRigidSearchLogic().run_spec(fixed, moving)
    before = scene_state(scene)
    run = ChildRun(spec, python=str(python), temp_parent=tmp_path / "tmp").start()
    assert run.wait(timeout=60) == FAILED
    assert run.error.message.startswith("The registration process 'rigid-search' crashed (signal 11)")
    assert "about to crash" in run.error.details
    assert scene_state(scene) == before
    assert temp_folders(tmp_path / "tmp") == []


def test_failure_while_reading_back_restores_passed_nodes(volumes, tmp_path):
    """The child succeeds, but writing an output into the scene fails: the passed transform node is restored,
    the moving volume is not left under it, and no created node remains."""
    scene, fixed, moving, _ = volumes
    output = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "passed output")
    original = np.eye(4)
    original[:3, 3] = [5.0, 6.0, 7.0]
    output.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(original))
    python = _wrapper(tmp_path, _fake_rigid_child())
    (tmp_path / "tmp").mkdir()
    spec = GlobalRigidSearchLogic().run_spec(fixed, moving, outputTransformNode=output, placeMovingUnderTransform=True,
                                             outputVolumeNode=scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"))
    spec.outputs[1].kind = "broken"
    runner_module.register_importer("broken", _broken_importer, ".nrrd")
    try:
        count = scene.GetNumberOfNodes()
        run = ChildRun(spec, python=str(python), temp_parent=tmp_path / "tmp").start()
        assert run.wait(timeout=120) == FAILED
    finally:
        runner_module.IMPORTERS.pop("broken")
        runner_module.OUTPUT_SUFFIXES.pop("broken")
    assert "cannot write the resampled volume" in run.error.message
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(output), original)
    assert moving.GetParentTransformNode() is None
    assert scene.GetNumberOfNodes() == count
    role = slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()
    assert output.GetNodeReferenceID(role) is None


def _broken_importer(entry, path, outcome):
    raise OSError("cannot write the resampled volume")


def _fake_rigid_child():
    """A stand-in child writing a known transform and a resampled file (fast: no registration)."""
    code = (
        "import json, sys, SimpleITK as sitk; a = sys.argv[1:]; "
        "sitk.WriteTransform(sitk.Euler3DTransform((0, 0, 0), 0.1, 0, 0, (1, 2, 3)), a[a.index('--output') + 1]); "
        "sitk.WriteImage(sitk.Image([3, 3, 3], sitk.sitkFloat32), a[a.index('--output-resampled') + 1]); "
        "print(json.dumps({'method': 'global_rigid'}))"
    )
    return f"exec \"{sys.executable}\" -c \"{code}\" \"$@\""


def test_export_failure_leaves_no_temp_folder(headless_scene, tmp_path):
    fixed = volume_node_from_image(sitk.Image([4, 4, 4], sitk.sitkFloat32), headless_scene, "f")
    spec = RunSpec("rigid-search", inputs=[NodeInput("--fixed", fixed, "no such kind")])
    with pytest.raises(ValueError, match="unknown input kind"):
        ChildRun(spec, temp_parent=tmp_path).start()
    assert temp_folders(tmp_path) == []


def test_python_executable_prefers_pythonslicer(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert runner_module.python_executable() == sys.executable
    fake = _wrapper(tmp_path, "exit 0")
    os.rename(fake, tmp_path / "PythonSlicer")
    assert runner_module.python_executable() == str(tmp_path / "PythonSlicer")


def test_child_environment_finds_this_package():
    env = runner_module.child_environment()
    first = env["PYTHONPATH"].split(os.pathsep)[0]
    assert os.path.isfile(os.path.join(first, "RegistrationSuiteLib", "__init__.py"))


@pytest.mark.slow
def test_organ_points_child_run_brings_shifted_organs_back(headless_scene, tmp_path):
    """organ-points end to end (segmentations → label file → CLI → grid transform node + transformed copy),
    with per-organ Λ/B from an organ table (``--lambda-mm LABEL:MM,...``)."""
    from test_mrml_organ_logic import segmentation_from
    from test_mrml_points import centroid, organ_image

    from RegistrationSuiteLib.methods.organ_point_cloud.config import OrganPointCloudConfig
    from RegistrationSuiteLib.mrml.masks import mask_from_node
    from RegistrationSuiteLib.mrml.organ_logic import OrganPointCloudLogic
    from RegistrationSuiteLib.mrml.points import segment_labels

    shifts = {2: [2.0, 1.0, 0.0], 5: [-1.5, 2.0, 1.0], 9: [1.0, -1.0, -1.5]}
    fixed_image, moving_image = organ_image(), organ_image(shifts=shifts)
    fixed = segmentation_from(headless_scene, fixed_image, "fixed organs")
    moving = segmentation_from(headless_scene, moving_image, "moving organs")
    config = OrganPointCloudConfig(points_per_organ=80, lambda_mm=5.0, beta_mm=15.0, grid_spacing_mm=4.0,
                                   device="cpu", seed=0)
    organs = [(2, "a", 5.0, 15.0, True), (5, "b", 4.0, 12.0, True), (9, "c", None, None, True)]
    spec = OrganPointCloudLogic().run_spec(fixed, moving, config, organs=organs, transformedMovingCopy=True)
    assert spec.options[spec.options.index("--lambda-mm") + 1] == "2:5.0,5:4.0,9:5.0"
    run = ChildRun(spec, temp_parent=tmp_path).start()
    assert run.wait(timeout=900) == SUCCEEDED, run.error
    node = run.outcome.nodes["transform"]
    assert node.IsA("vtkMRMLGridTransformNode") and run.outcome.result.diagnostics["labels"] == [2, 5, 9]
    role = slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()
    assert node.GetNodeReferenceID(role) == moving.GetID()
    copy = headless_scene.GetNodeByID(run.outcome.result.diagnostics["transformed_moving_node_ids"][0])
    errors = {}
    for label in (2, 5, 9):
        segment_name = next(e.name for e in segment_labels(copy) if e.label == label)
        target = centroid(fixed_image == label)
        errors[label] = (np.linalg.norm(centroid(moving_image == label) - target),
                         np.linalg.norm(centroid(mask_from_node(copy, segment_name=segment_name)) - target))
    assert all(after < 0.7 * before for before, after in errors.values()), errors
    assert temp_folders(tmp_path) == []


@pytest.mark.slow
def test_partial_prereg_child_run_writes_transform_and_table(headless_scene, tmp_path, monkeypatch):
    """partial-prereg end to end on the shipped samples: an axial T1 slab shifted by a known amount is located
    in the T2 volume; the diagnostics table is filled from the child's JSON summary."""
    from RegistrationSuiteLib.mrml.partial_prereg_logic import PartialPreregLogic, available_models
    from RegistrationSuiteLib.sample_data import load_sample

    monkeypatch.setenv("REGISTRATION_SUITE_MODELS", str(tmp_path / "no user models"))
    if not [name for name, source, _ in available_models() if source == "shipped"]:
        pytest.skip("no shipped TSPM model")
    t1, t2 = load_sample("T1"), load_sample("T2")  # co-registered
    depth = t1.GetSize()[2]
    slab = sitk.Image(t1[:, :, depth // 2 - 12: depth // 2 + 12])
    shift = np.array([6.0, -4.0, 3.0])  # LPS: the slab's content moves by +shift
    slab.SetOrigin(tuple(np.array(slab.GetOrigin()) + shift))
    fixed = volume_node_from_image(t2, headless_scene, "T2")
    moving = volume_node_from_image(slab, headless_scene, "T1 slab")
    table = headless_scene.AddNewNodeByClass("vtkMRMLTableNode", "my table")
    logic = PartialPreregLogic()
    (tmp_path / "tmp").mkdir()
    spec = logic.run_spec(fixed, moving, logic.make_config(seed=0, device="cpu"), diagnosticsTableNode=table)
    run = ChildRun(spec, temp_parent=tmp_path / "tmp").start()
    assert run.wait(timeout=1200) == SUCCEEDED, run.error
    node = run.outcome.nodes["transform"]
    assert run.outcome.nodes["table"] is table and table.GetCellText(0, 0) == "Verdict"
    fixed_to_moving_lps = F @ np.linalg.inv(slicer.util.arrayFromTransformMatrix(node)) @ F
    centre = np.array(slab.TransformContinuousIndexToPhysicalPoint([s / 2 for s in slab.GetSize()])) - shift
    np.testing.assert_allclose(fixed_to_moving_lps[:3, :3] @ centre + fixed_to_moving_lps[:3, 3], centre + shift,
                               atol=5.0)
    assert run.outcome.result.diagnostics["diagnostics_table_node_id"] == table.GetID()
    assert temp_folders(tmp_path / "tmp") == []


def test_child_environment_from_a_base_environment():
    """Inside Slicer the child starts from Slicer's startup environment, not the application's own."""
    env = runner_module.child_environment({"PATH": "/bin", "PYTHONPATH": "/somewhere"})
    parts = env["PYTHONPATH"].split(os.pathsep)
    assert parts[1:] == ["/somewhere"] and env["PATH"] == "/bin" and "HOME" not in env


def test_color_volume_export_keeps_components_and_geometry(headless_scene, tmp_path):
    """RGB slides (histology) export as vector images with the node's LPS geometry; single slices as 2D."""
    from vtk.util import numpy_support

    from RegistrationSuiteLib.mrml.runner_io import EXPORTERS

    rgb = np.random.default_rng(0).integers(0, 255, (1, 6, 8, 3)).astype(np.uint8)  # (k, j, i, c)
    node = headless_scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "slide")
    import vtk

    data = vtk.vtkImageData()
    data.SetDimensions(8, 6, 1)
    scalars = numpy_support.numpy_to_vtk(rgb.reshape(-1, 3), deep=True)
    scalars.SetNumberOfComponents(3)
    data.GetPointData().SetScalars(scalars)
    node.SetAndObserveImageData(data)
    node.SetSpacing(0.5, 0.25, 1.0)
    node.SetOrigin(-10.0, 20.0, 7.0)  # RAS
    path, meta = EXPORTERS["color_volume"](NodeInput("--fixed", node, "color_volume"), tmp_path, {})
    image = sitk.ReadImage(str(path))
    assert image.GetDimension() == 2 and image.GetNumberOfComponentsPerPixel() == 3
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), rgb[0])
    assert image.GetSpacing() == (0.5, 0.25) and image.GetOrigin() == (10.0, -20.0)  # LPS
    assert meta["slice_z"] == 7.0
    with pytest.raises(ValueError, match="one component"):
        EXPORTERS["volume"](NodeInput("--fixed", node, "volume"), tmp_path, {})

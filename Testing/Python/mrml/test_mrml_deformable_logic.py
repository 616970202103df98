"""The DeformableRegistration module's run (``RegistrationSuiteLib.mrml.deformable_logic``) end to end with
slicer-core: nodes → temporary files → the real ``python -m RegistrationSuiteLib deformable`` child process →
grid transform node (+ Jacobian and resampled volumes); the mapping's direction is checked against a known,
non-identity shift, with and without an initial transform node."""

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="needs the MRML libraries (pip install slicer-core)")

from RegistrationSuiteLib.errors import InputError  # noqa: E402
from RegistrationSuiteLib.mrml.deformable_logic import (  # noqa: E402
    JACOBIAN_COLOR_NODE_ID,
    PRESETS,
    cli_options,
    deformable_run_spec,
    make_config,
    result_lines,
)
from RegistrationSuiteLib.mrml.runner import SUCCEEDED, ChildRun  # noqa: E402
from RegistrationSuiteLib.mrml.transforms import set_linear_transform  # noqa: E402
from RegistrationSuiteLib.mrml.volumes import volume_node_from_image  # noqa: E402
from RegistrationSuiteLib.sample_data import sample_path  # noqa: E402

SHIFT_LPS = np.array([4.0, -3.0, 2.0])  # fixed point x corresponds to moving point x + SHIFT (mm, LPS)
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def shifted_pair():
    """T1 sample smoothed and shrunk to 4 mm, with an oblique direction; moving = fixed content moved so that
    fixed point x is at moving point x + SHIFT_LPS (anisotropic moving spacing)."""
    t1 = sitk.ReadImage(str(sample_path("T1")), sitk.sitkFloat32)
    small = sitk.Shrink(sitk.SmoothingRecursiveGaussian(t1, 3.0), [2, 2, 2])
    rotation = sitk.VersorTransform((0.1, 0.2, 0.3), 0.2)
    small.SetDirection(rotation.GetMatrix())
    moving_grid = sitk.Resample(small, [int(s * 0.8) for s in small.GetSize()], sitk.Transform(), sitk.sitkLinear,
                                small.GetOrigin(), [small.GetSpacing()[0] * 1.25, small.GetSpacing()[1] * 1.25,
                                                    small.GetSpacing()[2] * 1.2], small.GetDirection())
    moving_grid.SetOrigin(tuple(np.asarray(small.GetOrigin()) + np.asarray(small.GetSpacing()) * 2))
    # moving(y) = fixed(y - SHIFT): resample fixed with the transform y -> y - SHIFT
    moving = sitk.Resample(small, moving_grid, sitk.TranslationTransform(3, tuple(-SHIFT_LPS)), sitk.sitkLinear, 0.0)
    return small, moving


def centre_points_ras(node, count=27):
    """RAS points in the central third of a volume node's bounds."""
    bounds = np.zeros(6)
    node.GetRASBounds(bounds)
    lo, hi = bounds[0::2], bounds[1::2]
    ticks = [np.linspace(lo[i] + (hi[i] - lo[i]) / 3, hi[i] - (hi[i] - lo[i]) / 3, 3) for i in range(3)]
    return np.array(np.meshgrid(*ticks, indexing="ij")).reshape(3, -1).T[:count]


def mean_from_parent_displacement(transform_node, points_ras):
    """Mean of FromParent(p) - p (fixed → moving, RAS) over the points."""
    from_parent = transform_node.GetTransformFromParent()
    return np.mean([np.asarray(from_parent.TransformPoint(*p)) - p for p in points_ras], axis=0)


@pytest.fixture
def pair(headless_scene):
    fixed, moving = shifted_pair()
    return (headless_scene, volume_node_from_image(fixed, headless_scene, "fixed"),
            volume_node_from_image(moving, headless_scene, "moving"))


def test_presets_and_options():
    config = make_config("fast", similarity="lncc", model="none", spacing_mm=4.0)
    assert (config.io_steps, config.regularization, config.model) == (PRESETS["fast"][0], PRESETS["fast"][1], None)
    options = cli_options(config)
    assert options[options.index("--io-steps") + 1] == str(PRESETS["fast"][0])
    assert options[options.index("--model") + 1] == "none" and "--diffeomorphic" not in options
    assert make_config("accurate", regularization=0.7).regularization == 0.7
    with pytest.raises(InputError, match="preset"):
        make_config("slow")
    with pytest.raises(InputError, match="deformable"):  # a field the CLI run cannot pass is refused, not dropped
        cli_options(make_config("fast", min_overlap=0.5))


def test_result_lines_from_known_diagnostics():
    from RegistrationSuiteLib.result import RegistrationResult

    result = RegistrationResult("deformable", sitk.Transform(), warnings=["w1"], diagnostics={
        "folding_fraction": 0.0012, "jacobian_min": -0.25, "network": "my_net",
        "similarity": {"name": "mind", "before": -0.61, "after": -0.42}})
    assert result_lines(result, 12.34) == ["Folding: 0.120 % of voxels (Jacobian min -0.250)",
                                           "Similarity (mind): -0.6100 → -0.4200",
                                           "Model: my_net    Time: 12.3 s", "Warning: w1"]
    missing = result_lines(RegistrationResult("deformable", sitk.Transform(), diagnostics={"folding_fraction": None}))
    assert missing[0].startswith("Folding: n/a") and "none (optimisation only)" in missing[2]


def test_model_list_keeps_deformable_models_only(tmp_path):
    """Kinds are read without torch: the shipped TSPM model and another kind are left out, deformable models
    (shipped and user) and an unreadable file stay (the run checks those)."""
    import subprocess
    import sys

    import torch

    from RegistrationSuiteLib.methods.deformable.network import MODEL_KIND
    from RegistrationSuiteLib.mrml.deformable_logic import MODEL_KIND as LISTED_KIND
    from RegistrationSuiteLib.mrml.deformable_logic import deformable_models, read_model_kind

    assert LISTED_KIND == MODEL_KIND
    torch.save({"kind": MODEL_KIND, "state_dict": {"w": torch.zeros(3)}}, tmp_path / "mine.pt")
    torch.save({"kind": "tspm_patch_position", "state_dict": {"w": torch.zeros(3)}}, tmp_path / "other.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a zip")
    names = {name: source for name, source, _path in deformable_models(tmp_path)}
    # the shipped deformable models are listed; the shipped TSPM model (another kind) is left out
    assert names == {"mine": "user", "broken": "user", "deformable_mr_synthetic": "shipped",
                     "deformable_mr_multimodal": "shipped"}
    code = ("import sys; sys.modules['torch'] = None\n"
            "from RegistrationSuiteLib.mrml.deformable_logic import read_model_kind\n"
            f"print(read_model_kind({str(tmp_path / 'mine.pt')!r}), read_model_kind({str(tmp_path / 'other.pt')!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == [MODEL_KIND, "tspm_patch_position"], out.stderr[-1000:]
    assert read_model_kind(tmp_path / "broken.pt") is None


def test_run_spec_refuses_bad_nodes(pair):
    scene, fixed, moving = pair
    linear = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    with pytest.raises(InputError, match="grid transform"):
        deformable_run_spec(fixed, moving, outputTransformNode=linear)
    with pytest.raises(InputError, match="different"):
        deformable_run_spec(fixed, fixed)


@pytest.mark.slow
def test_deformable_child_run_recovers_known_shift(pair, tmp_path):
    """No initial transform: the optimisation alone finds the shift; FromParent of the grid node maps fixed
    points to moving points (RAS) by the known shift; Jacobian (coloured) and resampled volumes come back."""
    scene, fixed, moving = pair
    config = make_config("fast", similarity="lncc", spacing_mm=4.0, device="cpu")
    config.io_steps = 60
    resampled = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "resampled")
    spec = deformable_run_spec(fixed, moving, config, outputVolumeNode=resampled, jacobian=True,
                               placeMovingUnderTransform=True)
    run = ChildRun(spec, temp_parent=tmp_path).start()
    assert run.wait(timeout=600) == SUCCEEDED, (run.error, run.error and run.error.details)
    node = run.outcome.nodes["transform"]
    assert node.IsA("vtkMRMLGridTransformNode")
    expected_ras = SHIFT_LPS * LPS_TO_RAS
    found = mean_from_parent_displacement(node, centre_points_ras(fixed))
    assert np.linalg.norm(found - expected_ras) < 1.5, (found, expected_ras)  # identity would be 5.4 mm off
    role = slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()
    assert node.GetNodeReferenceID(role) == moving.GetID()
    assert node.GetNodeReferenceID(slicer.vtkMRMLTransformNode.GetFixedNodeReferenceRole()) == fixed.GetID()
    assert moving.GetParentTransformNode() is node
    jacobian = run.outcome.nodes["jacobian"]
    assert jacobian.GetDisplayNode().GetColorNodeID() == JACOBIAN_COLOR_NODE_ID
    values = slicer.util.arrayFromVolume(jacobian)
    assert 0.5 < float(np.median(values)) < 1.5  # a shift barely changes volumes
    assert resampled.GetImageData().GetDimensions() == fixed.GetImageData().GetDimensions()
    d = run.outcome.result.diagnostics
    assert d["similarity"]["name"] == "lncc" and d["network"] is None
    assert d["similarity"]["after"] != d["similarity"]["before"]
    text = "\n".join(result_lines(run.outcome.result, run.outcome.seconds))
    assert "Folding:" in text and "none (optimisation only)" in text and "n/a" not in text.split("\n")[1]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_initial_transform_node_is_exported_and_folded_in(pair, tmp_path):
    """An initial linear node holding the whole shift (as a GlobalRigidSearch output: moving → fixed) and a few
    steps, with a fixed mask: the output already contains the shift, so the node's export direction is right
    (reversed, the output would hold the opposite shift)."""
    scene, fixed, moving = pair
    initial = set_linear_transform(None, np.r_[np.c_[np.eye(3), SHIFT_LPS], [[0, 0, 0, 1]]], scene, "rigid")
    config = make_config("fast", similarity="lncc", spacing_mm=4.0, device="cpu")
    config.io_steps = 6
    fixed_image = slicer.util.arrayFromVolume(fixed)
    mask = volume_node_from_image(sitk.BinaryThreshold(shifted_pair()[0], float(np.percentile(fixed_image, 60)), 1e9),
                                  scene, "fixed mask", labelmap=True)  # the brighter 40 %: a fixed mask passes too
    spec = deformable_run_spec(fixed, moving, config, initialTransformNode=initial, fixedMaskNode=mask)
    assert spec.inputs[2].option == "--initial-transform" and spec.inputs[3].value is mask
    run = ChildRun(spec, temp_parent=tmp_path).start()
    assert run.wait(timeout=600) == SUCCEEDED, (run.error, run.error and run.error.details)
    found = mean_from_parent_displacement(run.outcome.nodes["transform"], centre_points_ras(fixed))
    assert np.linalg.norm(found - SHIFT_LPS * LPS_TO_RAS) < 1.0, found
    assert moving.GetParentTransformNode() is None and "jacobian" not in run.outcome.nodes

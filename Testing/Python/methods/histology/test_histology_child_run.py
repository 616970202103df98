"""The HistologyRegistration module's run (``mrml.histology_logic``) end to end with slicer-core: RGB slide
nodes → files → ``registration-suite histology`` in a child process → grid transform, markups, RGB volume."""

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="needs the MRML libraries (pip install slicer-core)")

from RegistrationSuiteLib.mrml.histology_logic import run_spec, vector_volume_node_from_image  # noqa: E402
from RegistrationSuiteLib.mrml.runner import SUCCEEDED, ChildRun  # noqa: E402

from .conftest import DAB_OD, HE_OD, about_centre, moving_density, rotation, stain, tissue_density  # noqa: E402

POINTS = np.array([[60.0, 100.0], [128.0, 128.0], [180.0, 90.0]])


def _slide_node(scene, rgb, name):
    image = sitk.GetImageFromArray(rgb, isVector=True)
    image.SetSpacing((0.5, 0.5))  # mm, LPS; origin 0
    return vector_volume_node_from_image(image, scene, name)


@pytest.mark.slow
def test_child_run_gives_grid_transform_markups_and_rgb_volume(headless_scene, tmp_path):
    d = tissue_density(256)
    matrix = rotation(35.0)
    offset = about_centre(matrix, (128, 128), (5.0, -3.0))
    fixed = _slide_node(headless_scene, stain(d, HE_OD), "fixed slide")
    moving = _slide_node(headless_scene, stain(moving_density(d, matrix, offset), DAB_OD, 1.2), "moving slide")
    markups = headless_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "annotations")
    for x, y in POINTS * 0.5:
        markups.AddControlPoint(-x, -y, 0.0)  # RAS
    warped = headless_scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "warped")
    spec = run_spec(fixed, moving, fixedPointsNode=markups, outputVolumeNode=warped, placeMovingUnderTransform=True,
                    options=["--mirror", "no", "--device", "cpu"])
    run = ChildRun(spec, temp_parent=tmp_path).start()
    assert run.wait(timeout=900) == SUCCEEDED, run.error
    node = run.outcome.nodes["transform"]
    assert node.IsA("vtkMRMLGridTransformNode") and moving.GetParentTransformNode() is node
    assert run.outcome.result.diagnostics["unit"] == "mm"
    out = run.outcome.nodes["points"]
    got = np.array([out.GetNthControlPointPosition(i) for i in range(out.GetNumberOfControlPoints())])
    expected_lps = 0.5 * (POINTS @ matrix.T + offset)
    np.testing.assert_allclose(-got[:, :2], expected_lps, atol=0.75)  # RAS → LPS; 1.5 pixels
    assert warped.GetImageData().GetNumberOfScalarComponents() == 3
    assert warped.GetImageData().GetDimensions() == (256, 256, 1)
    assert list(tmp_path.iterdir()) == []

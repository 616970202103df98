"""Scene bundles (.mrb): written atomically, re-imported with their nodes, references and transform."""

import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.geometry import affine_matrix_from_sitk, fixed_to_moving_lps_to_moving_to_fixed_ras
from RegistrationSuiteLib.result import RegistrationResult

slicer = pytest.importorskip("slicer", reason="needs the MRML libraries (pip install slicer-core)")

from RegistrationSuiteLib.mrml.mrb import read_scene_bundle, write_scene_bundle  # noqa: E402
from RegistrationSuiteLib.mrml.scene import close_headless_scene  # noqa: E402
from RegistrationSuiteLib.mrml.transforms import RESULT_ATTRIBUTE, sitk_transform_from_node  # noqa: E402
from RegistrationSuiteLib.mrml.volumes import image_from_volume_node  # noqa: E402


def small_image(seed, size=(9, 8, 7), spacing=(1.0, 1.2, 2.5)):
    image = sitk.GetImageFromArray(np.random.default_rng(seed).random(size[::-1]).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((seed * 3.0, -2.0, 1.0))
    return image


def rigid_result():
    tx = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, -5.0, 6.0))
    return RegistrationResult("global_rigid", tx, score=0.8, diagnostics={"candidates": np.arange(3)})


def nodes_by_class(scene, class_name):
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


def test_bundle_written_and_reimported(tmp_path):
    fixed, moving, result = small_image(1), small_image(2, size=(6, 7, 8)), rigid_result()
    path = write_scene_bundle(tmp_path / "reg.mrb", fixed, moving, result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reg.mrb"]  # nothing temporary left behind
    names = zipfile.ZipFile(path).namelist()
    assert "reg/reg.mrml" in names and sum(n.endswith(".nrrd") for n in names) == 2
    scene = read_scene_bundle(path)
    try:
        volumes = nodes_by_class(scene, "vtkMRMLScalarVolumeNode")
        transforms = nodes_by_class(scene, "vtkMRMLLinearTransformNode")
        assert sorted(v.GetName() for v in volumes) == ["Fixed", "Moving"] and len(transforms) == 1
        transform = transforms[0]
        fixed_node, moving_node = scene.GetFirstNodeByName("Fixed"), scene.GetFirstNodeByName("Moving")
        assert moving_node.GetParentTransformNode() is transform
        assert fixed_node.GetParentTransformNode() is None
        assert transform.GetNodeReference(slicer.vtkMRMLTransformNode.GetFixedNodeReferenceRole()) is fixed_node
        assert transform.GetNodeReference(slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()) is moving_node
        expected = affine_matrix_from_sitk(result.transform)
        to_parent = slicer.util.arrayFromTransformMatrix(transform)
        np.testing.assert_allclose(to_parent, fixed_to_moving_lps_to_moving_to_fixed_ras(expected), atol=1e-9)
        np.testing.assert_allclose(affine_matrix_from_sitk(sitk_transform_from_node(transform)), expected, atol=1e-9)
        assert '"method":"global_rigid"' in transform.GetAttribute(RESULT_ATTRIBUTE)
        for node, image in ((fixed_node, fixed), (moving_node, moving)):
            back = image_from_volume_node(node)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
            np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    finally:
        close_headless_scene(scene)


def test_bundle_with_deformable_result_and_custom_names(tmp_path):
    fixed = small_image(3)
    field = sitk.Image(fixed.GetSize(), sitk.sitkVectorFloat64, 3)
    field.CopyInformation(fixed)
    field = field + 0.5
    result = RegistrationResult("ddf", sitk.DisplacementFieldTransform(field))
    names = {"fixed": "CT", "moving": "MR", "transform": "CT-MR field"}
    path = write_scene_bundle(tmp_path / "d.mrb", fixed, small_image(4), result, names=names)
    scene = read_scene_bundle(path)
    try:
        grid = scene.GetFirstNodeByName("CT-MR field")
        assert grid.IsA("vtkMRMLGridTransformNode")
        assert scene.GetFirstNodeByName("MR").GetParentTransformNode() is grid
        back = sitk_transform_from_node(grid)
        p = fixed.TransformContinuousIndexToPhysicalPoint((2.5, 3.0, 1.5))
        np.testing.assert_allclose(back.TransformPoint(p), np.array(p) + 0.5, atol=1e-9)
    finally:
        close_headless_scene(scene)


def test_failed_write_leaves_no_file_and_keeps_an_old_one(tmp_path):
    target = tmp_path / "keep.mrb"
    target.write_bytes(b"previous bundle")
    bad = RegistrationResult("bspline", sitk.BSplineTransform(3))  # no fixed_grid: cannot become a grid
    with pytest.raises(InputError):
        write_scene_bundle(target, small_image(1), small_image(2), bad)
    assert target.read_bytes() == b"previous bundle"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mrb"]
    with pytest.raises(InputError, match="expected a .mrb"):
        write_scene_bundle(tmp_path / "x.zip", small_image(1), small_image(2), rigid_result())
    with pytest.raises(InputError, match="folder does not exist"):
        write_scene_bundle(tmp_path / "missing" / "x.mrb", small_image(1), small_image(2), rigid_result())


def test_bundle_of_2d_registration(tmp_path):
    fixed = small_image(5, size=(9, 8, 1))[:, :, 0]
    moving = small_image(6, size=(7, 10, 1))[:, :, 0]
    result = RegistrationResult("global_rigid", sitk.Euler2DTransform((4.0, 4.0), 0.3, (1.0, -2.0)))
    scene = read_scene_bundle(write_scene_bundle(tmp_path / "2d.mrb", fixed, moving, result))
    try:
        moving_node = scene.GetFirstNodeByName("Moving")
        assert moving_node.GetImageData().GetDimensions() == (7, 10, 1)
        back = sitk_transform_from_node(moving_node.GetParentTransformNode(), dimension=2)
        np.testing.assert_allclose(affine_matrix_from_sitk(back, 2), result.fixed_to_moving_matrix, atol=1e-9)
        assert image_from_volume_node(moving_node).GetDimension() == 2
    finally:
        close_headless_scene(scene)


def test_scene_bundle_relative_path_and_no_raw_vtk_output(tmp_path, monkeypatch, capfd):
    """The README's demo writes its scene to a relative folder; MRML needs a full path and must stay quiet."""
    pytest.importorskip("slicer")
    import slicer

    from RegistrationSuiteLib.mrml.mrb import captured_vtk_messages, write_scene_bundle
    from RegistrationSuiteLib.result import RegistrationResult

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    img = sitk.GetImageFromArray(np.random.default_rng(0).random((5, 6, 7)).astype(np.float32))
    write_scene_bundle("out/s.mrb", img, img, RegistrationResult("global_rigid", sitk.Euler3DTransform()))
    assert (tmp_path / "out" / "s.mrb").stat().st_size > 0
    with captured_vtk_messages() as messages:
        scene = slicer.vtkMRMLScene()
        scene.SetRootDirectory("rel")
        scene.SetURL("rel/x.mrml")
        assert not scene.WriteToMRB("rel/x.mrb")
    assert "not a full path" in messages()
    assert "ERR|" not in capfd.readouterr().err

"""Registration transforms ↔ MRML transform nodes, through Slicer's storage nodes and back with SimpleITK."""

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.geometry import LPS_TO_RAS, Grid, affine_matrix_from_sitk, apply_affine
from RegistrationSuiteLib.result import RegistrationResult

slicer = pytest.importorskip("slicer", reason="needs the MRML libraries (pip install slicer-core)")

from RegistrationSuiteLib.mrml.transforms import (  # noqa: E402
    RESULT_ATTRIBUTE,
    embed_2d_matrix,
    save_transform_node,
    set_grid_transform_from_sitk,
    set_linear_transform,
    set_registration_references,
    sitk_transform_from_node,
    transform_node_from_result,
)

F3 = LPS_TO_RAS[:3, :3]


def known_fixed_to_moving_lps():
    """An affine with rotation, anisotropic scaling, shear and translation (LPS, fixed→moving)."""
    rotation = np.array(sitk.Euler3DTransform((0, 0, 0), 0.2, -0.35, 0.6).GetMatrix()).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = rotation @ np.array([[1.1, 0.05, 0.0], [0.0, 0.9, 0.02], [0.0, 0.0, 1.2]])
    m[:3, 3] = [12.5, -7.25, 3.0]
    return m


def read_single_transform(path):
    tx = sitk.ReadTransform(str(path))
    if isinstance(tx, sitk.CompositeTransform) and tx.GetNumberOfTransforms() == 1:
        tx = tx.GetNthTransform(0)
    return tx.Downcast()


def random_field(seed=0, size=(7, 6, 5)):
    """A smooth-ish random displacement field (mm, LPS) on an oblique, anisotropic grid."""
    rng = np.random.default_rng(seed)
    reference = sitk.Image(list(size), sitk.sitkFloat32)
    reference.SetSpacing((1.5, 2.0, 2.5))
    reference.SetOrigin((10.0, -20.0, 5.0))
    rotation = np.array(sitk.Euler3DTransform((0, 0, 0), 0.2, -0.1, 0.3).GetMatrix()).reshape(3, 3)
    reference.SetDirection(tuple(rotation.ravel()))
    field = sitk.GetImageFromArray(rng.normal(scale=2.0, size=size[::-1] + (3,)), isVector=True)
    field.CopyInformation(reference)
    return sitk.DisplacementFieldTransform(sitk.Image(field)), reference, rng


def test_linear_node_to_parent_maps_moving_ras_to_fixed_ras(headless_scene):
    a = known_fixed_to_moving_lps()
    node = set_linear_transform(None, a, headless_scene, "T")
    assert node.IsA("vtkMRMLLinearTransformNode") and node.GetScene() is headless_scene
    to_parent = slicer.util.arrayFromTransformMatrix(node)
    fixed_lps = np.array([[10.0, -3.0, 7.0], [-40.0, 25.0, 0.5]])
    moving_lps = apply_affine(a, fixed_lps)
    fixed_ras, moving_ras = fixed_lps @ F3, moving_lps @ F3
    np.testing.assert_allclose(apply_affine(to_parent, moving_ras), fixed_ras, atol=1e-9)
    # The VTK transform itself agrees.
    vtk_to_parent = node.GetTransformToParent()
    np.testing.assert_allclose(vtk_to_parent.TransformDoublePoint(*moving_ras[0]), fixed_ras[0], atol=1e-9)


@pytest.mark.parametrize("suffix", [".h5", ".tfm"])
def test_linear_node_saved_by_storage_node_is_read_by_simpleitk(headless_scene, tmp_path, suffix):
    a = known_fixed_to_moving_lps()
    node = set_linear_transform(None, a, headless_scene, "T")
    path = save_transform_node(node, tmp_path / f"t{suffix}")
    assert [p.name for p in tmp_path.iterdir()] == [f"t{suffix}"]  # no temporary file left
    np.testing.assert_allclose(affine_matrix_from_sitk(read_single_transform(path)), a, atol=1e-10)
    assert node.GetStorageNode() is None  # the node's own storage is untouched


def test_linear_read_back_from_node(headless_scene):
    a = known_fixed_to_moving_lps()
    node = set_linear_transform(None, a, headless_scene, "T")
    back = sitk_transform_from_node(node)
    assert isinstance(back, sitk.AffineTransform)
    np.testing.assert_allclose(affine_matrix_from_sitk(back), a, atol=1e-12)


def test_update_existing_node_keeps_count(headless_scene):
    node = set_linear_transform(None, np.eye(4), headless_scene, "T")
    count = headless_scene.GetNumberOfNodes()
    assert set_linear_transform(node, known_fixed_to_moving_lps()) is node
    assert headless_scene.GetNumberOfNodes() == count
    back = affine_matrix_from_sitk(sitk_transform_from_node(node))
    np.testing.assert_allclose(back, known_fixed_to_moving_lps(), atol=1e-12)


def test_2d_matrix_embedded_with_slice_offset(headless_scene):
    c, s = np.cos(0.3), np.sin(0.3)
    m2 = np.array([[c, -s, 4.0], [s, c, -2.5], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(embed_2d_matrix(m2, 1.5)[2], [0, 0, 1, 1.5])
    node = set_linear_transform(None, m2, headless_scene, "T2", fixed_slice_z=10.0, moving_slice_z=12.0)
    back3 = affine_matrix_from_sitk(sitk_transform_from_node(node))
    np.testing.assert_allclose(back3, embed_2d_matrix(m2, 2.0), atol=1e-12)
    back2 = sitk_transform_from_node(node, dimension=2)
    np.testing.assert_allclose(affine_matrix_from_sitk(back2, 2), m2, atol=1e-12)


def test_linear_input_errors(headless_scene):
    with pytest.raises(InputError, match="3x3 .* or 4x4"):
        set_linear_transform(None, np.eye(2), headless_scene)
    with pytest.raises(InputError, match="invertible"):
        set_linear_transform(None, np.zeros((4, 4)), headless_scene)
    volume = headless_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    with pytest.raises(InputError, match="transformNode: expected a transform node"):
        set_linear_transform(volume, np.eye(4))
    with pytest.raises(InputError, match="must end with"):
        save_transform_node(set_linear_transform(None, np.eye(4), headless_scene), "t.nrrd")


def test_grid_from_parent_round_trip_through_h5(headless_scene, tmp_path):
    field, reference, rng = random_field()
    node = set_grid_transform_from_sitk(None, field, headless_scene, "Grid")
    assert node.IsA("vtkMRMLGridTransformNode")
    from_parent = node.GetTransformFromParent()
    assert from_parent.IsA("vtkOrientedGridTransform") and from_parent.GetInterpolationModeAsString() == "Linear"
    path = save_transform_node(node, tmp_path / "grid.h5")
    back = read_single_transform(path)
    assert isinstance(back, sitk.DisplacementFieldTransform)
    points = [reference.TransformContinuousIndexToPhysicalPoint(tuple(rng.uniform(0.2, 3.8, 3))) for _ in range(30)]
    for p in points:
        np.testing.assert_allclose(back.TransformPoint(p), field.TransformPoint(p), atol=1e-9)
        # FromParent in RAS is fixed→moving: F · T_lps(F · p).
        ras = F3 @ np.array(p)
        # VTK's grid interpolation weights are single precision: ~2e-5 mm between grid points.
        moved = F3 @ np.array(from_parent.TransformDoublePoint(*ras))
        np.testing.assert_allclose(moved, field.TransformPoint(p), atol=1e-4)


def test_grid_read_back_from_node_without_file(headless_scene):
    field, reference, rng = random_field(seed=1)
    node = set_grid_transform_from_sitk(None, field, headless_scene)
    back = sitk_transform_from_node(node)
    assert isinstance(back, sitk.DisplacementFieldTransform)
    for _ in range(10):
        p = reference.TransformContinuousIndexToPhysicalPoint(tuple(rng.uniform(0, 4, 3)))
        np.testing.assert_allclose(back.TransformPoint(p), field.TransformPoint(p), atol=1e-12)


def test_2d_field_is_a_single_slice_grid_constant_along_z(headless_scene):
    rng = np.random.default_rng(2)
    field_image = sitk.GetImageFromArray(rng.normal(size=(9, 8, 2)), isVector=True)
    field_image.SetSpacing((1.2, 0.8))
    field_image.SetOrigin((3.0, 4.0))
    field = sitk.DisplacementFieldTransform(sitk.Image(field_image))
    node = set_grid_transform_from_sitk(None, field, headless_scene, fixed_slice_z=5.0, moving_slice_z=7.0)
    from_parent = node.GetTransformFromParent()
    p = (5.1, 6.2)
    for z in (5.0, 5.4, -3.0):
        out = F3 @ np.array(from_parent.TransformDoublePoint(*(F3 @ np.array([p[0], p[1], z]))))
        np.testing.assert_allclose(out, [*field.TransformPoint(p), z + 2.0], atol=1e-4)
    back = sitk_transform_from_node(node, dimension=2)
    np.testing.assert_allclose(back.TransformPoint(p), field.TransformPoint(p), atol=1e-12)


def test_result_dispatch_linear_deformable_and_bspline(headless_scene):
    linear = RegistrationResult("m", sitk_affine_from(known_fixed_to_moving_lps()), score=0.5)
    node = transform_node_from_result(linear, headless_scene, name="lin")
    assert node.IsA("vtkMRMLLinearTransformNode")
    assert '"method":"m"' in node.GetAttribute(RESULT_ATTRIBUTE)
    field, reference, _ = random_field(seed=3)
    assert transform_node_from_result(RegistrationResult("d", field), headless_scene).IsA("vtkMRMLGridTransformNode")
    bspline = sitk.BSplineTransformInitializer(reference, [2, 2, 2])
    bspline.SetParameters(np.random.default_rng(4).normal(size=len(bspline.GetParameters())).tolist())
    result = RegistrationResult("b", bspline, fixed_grid=Grid.from_image(reference))
    back = sitk_transform_from_node(transform_node_from_result(result, headless_scene))
    p = reference.TransformContinuousIndexToPhysicalPoint((3.0, 2.0, 2.0))  # a grid point: exact
    np.testing.assert_allclose(back.TransformPoint(p), bspline.TransformPoint(p), atol=1e-9)
    with pytest.raises(InputError, match="fixed_grid"):
        transform_node_from_result(RegistrationResult("b", bspline), headless_scene)


def sitk_affine_from(m):
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(m[:3, :3].ravel()))
    tx.SetTranslation(tuple(m[:3, 3]))
    return tx


def test_registration_references(headless_scene):
    fixed = headless_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fixed")
    moving = headless_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "moving")
    other = headless_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "other")
    node = set_linear_transform(None, np.eye(4), headless_scene)
    set_registration_references(node, fixed, moving)
    set_registration_references(node, fixed, other)  # a rerun replaces, never accumulates
    fixed_role = slicer.vtkMRMLTransformNode.GetFixedNodeReferenceRole()
    moving_role = slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()
    assert (fixed_role, moving_role) == ("spatialRegistrationFixed", "spatialRegistrationMoving")
    assert node.GetNodeReference(fixed_role) is fixed
    assert node.GetNodeReference(moving_role) is other
    assert node.GetNumberOfNodeReferences(moving_role) == 1
    set_registration_references(node, fixed, None)
    assert node.GetNodeReference(moving_role) is None


def smooth_affine_field():
    """A displacement field u(p) = t + A (p - c) (LPS, mm) on an oblique, anisotropic grid: linear
    interpolation reproduces it (and the field of its inverse) exactly between grid points."""
    reference = sitk.Image([9, 8, 7], sitk.sitkFloat32)
    reference.SetSpacing((3.0, 4.0, 5.0))
    reference.SetOrigin((10.0, -20.0, 5.0))
    rotation = np.array(sitk.Euler3DTransform((0, 0, 0), 0.2, -0.1, 0.3).GetMatrix()).reshape(3, 3)
    reference.SetDirection(tuple(rotation.ravel()))
    centre = np.array(reference.TransformContinuousIndexToPhysicalPoint((4.0, 3.5, 3.0)))
    a = np.array([[0.03, -0.01, 0.0], [0.02, 0.01, -0.015], [0.0, 0.01, 0.02]])
    shift = np.array([2.0, -1.5, 1.0])
    points = np.array([[[reference.TransformIndexToPhysicalPoint((i, j, k)) for i in range(9)] for j in range(8)]
                       for k in range(7)])
    field = sitk.GetImageFromArray(shift + (points - centre) @ a.T, isVector=True)
    field.CopyInformation(reference)
    affine = np.eye(4)
    affine[:3, :3] = np.eye(3) + a
    affine[:3, 3] = shift - a @ centre
    return sitk.DisplacementFieldTransform(field), reference, affine  # affine: p ↦ p + u(p)


@pytest.mark.parametrize("storage", ["FromParent", "ToParent"])
def test_grid_read_back_in_both_storage_directions(headless_scene, storage):
    """A grid node stored as ToParent (as Slicer's DICOM import makes them) reads back as the inverse mapping:
    the FromParent direction, not the stored grid with its direction ignored."""
    field, reference, affine = smooth_affine_field()
    stored = set_grid_transform_from_sitk(None, field, headless_scene, "stored FromParent")
    node = stored
    if storage == "ToParent":
        grid = slicer.vtkOrientedGridTransform()
        grid.DeepCopy(stored.GetTransformFromParent())
        node = headless_scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "stored ToParent")
        node.SetAndObserveTransformToParent(grid)  # ToParent(p) = p + u(p)  ⇒  FromParent = its inverse
    back = sitk_transform_from_node(node)
    assert isinstance(back, sitk.DisplacementFieldTransform)
    expected = affine if storage == "FromParent" else np.linalg.inv(affine)
    rng = np.random.default_rng(3)
    for _ in range(20):
        p = np.array(reference.TransformContinuousIndexToPhysicalPoint(tuple(rng.uniform(1.0, 5.0, 3))))
        np.testing.assert_allclose(back.TransformPoint(tuple(p)), apply_affine(expected, p[None])[0], atol=1e-3)

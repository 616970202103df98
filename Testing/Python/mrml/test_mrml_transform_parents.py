"""Exporting a transform node that sits under parent transforms: its full transform to world, or a clear refusal."""

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.geometry import affine_matrix_from_sitk, apply_affine

slicer = pytest.importorskip("slicer", reason="needs the MRML libraries (pip install slicer-core)")

from RegistrationSuiteLib.mrml.transforms import (  # noqa: E402
    save_transform_node,
    set_grid_transform_from_sitk,
    set_linear_transform,
    sitk_transform_from_node,
)


def _rigid(rx, ry, rz, t):
    m = np.eye(4)
    m[:3, :3] = np.array(sitk.Euler3DTransform((0, 0, 0), rx, ry, rz).GetMatrix()).reshape(3, 3)
    m[:3, 3] = t
    return m


def _affine():
    m = _rigid(0.2, -0.35, 0.6, (12.5, -7.25, 3.0))
    m[:3, :3] = m[:3, :3] @ np.array([[1.1, 0.05, 0.0], [0.0, 0.9, 0.02], [0.0, 0.0, 1.2]])
    return m


def _field(seed=0, size=(7, 6, 5)):
    rng = np.random.default_rng(seed)
    reference = sitk.Image(list(size), sitk.sitkFloat32)
    reference.SetSpacing((3.0, 4.0, 5.0))
    reference.SetOrigin((10.0, -20.0, 5.0))
    reference.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.2, -0.1, 0.3).GetMatrix())
    field = sitk.GetImageFromArray(rng.normal(scale=2.0, size=size[::-1] + (3,)), isVector=True)
    field.CopyInformation(reference)
    return sitk.DisplacementFieldTransform(sitk.Image(field)), reference, rng


def _read(path):
    tx = sitk.ReadTransform(str(path))
    if isinstance(tx, sitk.CompositeTransform) and tx.GetNumberOfTransforms() == 1:
        tx = tx.GetNthTransform(0)
    return tx.Downcast()


def test_linear_node_under_linear_parents_exports_its_transform_to_world(headless_scene, tmp_path):
    """Moving under C under P: world ← moving is P∘C (ToParent), so fixed→moving (FromWorld, LPS) is A_c·A_p·A_g
    for nodes set from the LPS fixed→moving matrices A_c, A_p, A_g (grand-parent)."""
    a_c, a_p, a_g = _affine(), _rigid(0.1, 0.3, -0.2, (5.0, 8.0, -3.0)), _rigid(-0.4, 0.0, 0.1, (0.0, -12.0, 4.0))
    grand = set_linear_transform(None, a_g, headless_scene, "G")
    parent = set_linear_transform(None, a_p, headless_scene, "P")
    child = set_linear_transform(None, a_c, headless_scene, "C")
    parent.SetAndObserveTransformNodeID(grand.GetID())
    child.SetAndObserveTransformNodeID(parent.GetID())
    expected = a_c @ a_p @ a_g
    assert not np.allclose(expected, a_c, atol=1e-3)  # the parents matter
    np.testing.assert_allclose(affine_matrix_from_sitk(sitk_transform_from_node(child)), expected, atol=1e-9)
    path = save_transform_node(child, tmp_path / "c.h5")
    np.testing.assert_allclose(affine_matrix_from_sitk(_read(path)), expected, atol=1e-9)
    assert [p.name for p in tmp_path.iterdir()] == ["c.h5"]
    # the node itself is unchanged (still its own matrix, still under its parent)
    assert child.GetParentTransformNode() is parent
    child.SetAndObserveTransformNodeID(None)
    np.testing.assert_allclose(affine_matrix_from_sitk(sitk_transform_from_node(child)), a_c, atol=1e-9)


def test_grid_node_under_rigid_parent_exports_field_to_world(headless_scene, tmp_path):
    """fixed→moving in world: x ↦ field(A_p x); checked at points between the grid nodes too."""
    field, reference, rng = _field()
    a_p = _rigid(0.3, -0.2, 0.25, (6.0, -4.0, 9.0))
    parent = set_linear_transform(None, a_p, headless_scene, "P")
    child = set_grid_transform_from_sitk(None, field, headless_scene, "Grid")
    child.SetAndObserveTransformNodeID(parent.GetID())
    inv = np.linalg.inv(a_p)
    points = [apply_affine(inv, np.array([reference.TransformContinuousIndexToPhysicalPoint(
        tuple(rng.uniform(0.5, 3.5, 3)))]))[0] for _ in range(30)]
    for back in (sitk_transform_from_node(child), _read(save_transform_node(child, tmp_path / "g.h5"))):
        assert isinstance(back, sitk.DisplacementFieldTransform)
        for x in points:
            expected = field.TransformPoint(tuple(apply_affine(a_p, x[None])[0]))
            # the parent moves points by centimetres: ignoring it would miss by far more than this tolerance
            assert np.linalg.norm(np.subtract(field.TransformPoint(tuple(x)), expected)) > 2.0
            np.testing.assert_allclose(back.TransformPoint(tuple(x)), expected, atol=1e-3)


def test_unexportable_parent_chains_are_refused_clearly(headless_scene, tmp_path):
    field, _, _ = _field(seed=1)
    grid = set_grid_transform_from_sitk(None, field, headless_scene, "Warp")
    child = set_linear_transform(None, _affine(), headless_scene, "Rigid step")
    child.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(InputError, match="under the non-linear transform 'Warp'.*Harden transform"):
        sitk_transform_from_node(child)
    with pytest.raises(InputError, match="Harden transform"):
        save_transform_node(child, tmp_path / "c.h5")
    assert list(tmp_path.iterdir()) == []  # nothing written
    scaling = set_linear_transform(None, _affine(), headless_scene, "Scaling")
    grid2 = set_grid_transform_from_sitk(None, field, headless_scene, "Warp2")
    grid2.SetAndObserveTransformNodeID(scaling.GetID())
    with pytest.raises(InputError, match="not a rotation and translation"):
        sitk_transform_from_node(grid2)

"""Registration results ↔ MRML transform nodes.

Directions (see ``geometry``): a registration gives ``fixedToMoving`` in LPS (ITK's resampling direction).
MRML stores a child → parent ``ToParent`` in RAS; with the moving volume as the child and the fixed volume's
frame as the parent, **ToParent = movingToFixed (RAS)** and **FromParent = fixedToMoving (RAS)**.

- Linear: ``ToParent = inv(F · A · F)`` with ``A`` the LPS fixed→moving affine and ``F = diag(-1, -1, 1, 1)``.
- Displacement field: stored as **FromParent** in a ``vtkOrientedGridTransform`` (RAS displacement
  vectors, grid origin and direction in RAS, linear interpolation as in ITK), so that Slicer writes an
  ``.h5`` SimpleITK reads back as a ``DisplacementFieldTransform``; the inverse is computed on the fly.

2D results (3×3 matrices, 2D fields) are embedded in 3D: identity along z, plus the z offset between the
fixed and the moving slice (``fixed_slice_z``, ``moving_slice_z``: LPS z of the slices) so that the moving
slice lands on the fixed one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry import (
    LPS_TO_RAS,
    fixed_to_moving_lps_to_moving_to_fixed_ras,
    moving_to_fixed_ras_to_fixed_to_moving_lps,
    sitk_affine_from_matrix,
)
from ..io.atomic import atomic_output
from ..io.transforms import TRANSFORM_SUFFIXES

DEFAULT_TRANSFORM_NAME = "Registration transform"
#: Node attribute holding ``RegistrationResult.to_json()`` (method, score, timings, ...), saved in scenes.
RESULT_ATTRIBUTE = "RegistrationSuite.Result"
_F3 = LPS_TO_RAS[:3, :3]


def embed_2d_matrix(fixed_to_moving_lps: np.ndarray, z_translation: float = 0.0) -> np.ndarray:
    """Embed a 2D homogeneous ``(3, 3)`` matrix in 3D (identity along z plus ``z_translation`` mm)."""
    m2 = np.asarray(fixed_to_moving_lps, dtype=float)
    if m2.shape != (3, 3):
        raise InputError(f"fixed_to_moving_lps: expected a 3x3 matrix, got shape {m2.shape}")
    m = np.eye(4)
    m[:2, :2] = m2[:2, :2]
    m[:2, 3] = m2[:2, 2]
    m[2, 3] = z_translation
    return m


def _as_4x4(fixed_to_moving_lps, fixed_slice_z: float, moving_slice_z: float) -> np.ndarray:
    m = np.asarray(fixed_to_moving_lps, dtype=float)
    if m.shape == (3, 3):
        return embed_2d_matrix(m, moving_slice_z - fixed_slice_z)
    if m.shape != (4, 4):
        raise InputError(f"fixed_to_moving_lps: expected a 3x3 (2D) or 4x4 (3D) matrix, got shape {m.shape}")
    return m


def _output_node(transformNode, scene, name: str, class_name: str):
    if transformNode is not None:
        if not transformNode.IsA("vtkMRMLTransformNode"):
            raise InputError(f"transformNode: expected a transform node, got {transformNode.GetClassName()}")
        return transformNode
    if scene is None:
        raise InputError("scene: expected a vtkMRMLScene to add the new transform node to, got None")
    return scene.AddNewNodeByClass(class_name, name)


def set_linear_transform(
    transformNode,
    fixed_to_moving_lps: np.ndarray,
    scene=None,
    name: str = DEFAULT_TRANSFORM_NAME,
    *,
    fixed_slice_z: float = 0.0,
    moving_slice_z: float = 0.0,
):
    """Create or update a linear transform node from an LPS fixed→moving matrix.

    Args:
        transformNode: node to update, or ``None`` to add a ``vtkMRMLLinearTransformNode`` to ``scene``.
        fixed_to_moving_lps: homogeneous ``(4, 4)``, or ``(3, 3)`` for 2D (embedded, see module docstring).
        scene: scene for a new node.
        name: name of a new node.
        fixed_slice_z, moving_slice_z: LPS z (mm) of the 2D slices (2D only).

    Returns:
        The node, whose ToParent is movingToFixed in RAS.
    """
    m = _as_4x4(fixed_to_moving_lps, fixed_slice_z, moving_slice_z)
    if not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise InputError("fixed_to_moving_lps: expected a finite, invertible matrix")
    import slicer

    node = _output_node(transformNode, scene, name, "vtkMRMLLinearTransformNode")
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(fixed_to_moving_lps_to_moving_to_fixed_ras(m)))
    return node


def _field_image(transform) -> sitk.Image:
    """The displacement field (vector image, LPS) of a DisplacementFieldTransform or a vector image."""
    if isinstance(transform, sitk.Image):
        field = transform
    else:
        if isinstance(transform, sitk.CompositeTransform) and transform.GetNumberOfTransforms() == 1:
            transform = transform.GetNthTransform(0)
        if hasattr(transform, "Downcast"):
            transform = transform.Downcast()
        if not isinstance(transform, sitk.DisplacementFieldTransform):
            raise InputError(
                f"transform: expected a SimpleITK DisplacementFieldTransform, got {transform.GetName()}"
            )
        field = transform.GetDisplacementField()
    d = field.GetDimension()
    if d not in (2, 3) or field.GetNumberOfComponentsPerPixel() != d:
        raise InputError(
            f"transform: expected a 2D or 3D displacement field with D components, got {d}D with "
            f"{field.GetNumberOfComponentsPerPixel()} components"
        )
    return field


def _field_to_3d(field: sitk.Image, fixed_slice_z: float, moving_slice_z: float):
    """Displacements ``(k, j, i, 3)`` (LPS) and the 3D grid (spacing, origin, direction) of ``field``."""
    vectors = sitk.GetArrayFromImage(field).astype(np.float64)
    spacing = np.asarray(field.GetSpacing(), dtype=float)
    origin = np.asarray(field.GetOrigin(), dtype=float)
    d = field.GetDimension()
    direction = np.asarray(field.GetDirection(), dtype=float).reshape(d, d)
    if d == 3:
        return vectors, spacing, origin, direction
    vectors3 = np.full(vectors.shape[:2] + (3,), moving_slice_z - fixed_slice_z)
    vectors3[..., :2] = vectors
    direction3 = np.eye(3)
    direction3[:2, :2] = direction
    return vectors3[None], np.append(spacing, 1.0), np.append(origin, fixed_slice_z), direction3


def _vtk_grid_transform(vectors_lps, spacing, origin_lps, direction_lps):
    """A ``vtkOrientedGridTransform`` (RAS) from an LPS displacement grid."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    vectors_ras = vectors_lps * np.diag(_F3)  # flips x and y components (F is diagonal)
    k, j, i = vectors_ras.shape[:3]
    grid = vtk.vtkImageData()
    grid.SetDimensions(i, j, k)
    grid.SetSpacing(*spacing)
    grid.SetOrigin(*(_F3 @ origin_lps))
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(vectors_ras.reshape(-1, 3)), deep=True)
    scalars.SetNumberOfComponents(3)
    grid.GetPointData().SetScalars(scalars)
    direction_ras = np.eye(4)
    direction_ras[:3, :3] = _F3 @ direction_lps
    g = slicer.vtkOrientedGridTransform()
    g.SetDisplacementGridData(grid)
    g.SetGridDirectionMatrix(slicer.util.vtkMatrixFromArray(direction_ras))
    g.SetInterpolationModeToLinear()  # ITK interpolates displacement fields linearly
    return g


def set_grid_transform_from_sitk(
    transformNode,
    displacement_field_transform,
    scene=None,
    name: str = DEFAULT_TRANSFORM_NAME,
    *,
    fixed_slice_z: float = 0.0,
    moving_slice_z: float = 0.0,
):
    """Create or update a grid transform node from a SimpleITK displacement field (LPS, fixed→moving).

    Args:
        transformNode: node to update, or ``None`` to add a ``vtkMRMLGridTransformNode`` to ``scene``.
        displacement_field_transform: ``sitk.DisplacementFieldTransform`` (or its vector field image),
            2D or 3D; displacements in mm, LPS, defined on the fixed image's grid.
        scene: scene for a new node.
        name: name of a new node.
        fixed_slice_z, moving_slice_z: LPS z (mm) of the 2D slices (2D only).

    Returns:
        The node, with the field stored as FromParent (fixedToMoving, RAS), linear interpolation.
    """
    field = _field_image(displacement_field_transform)
    vectors, spacing, origin, direction = _field_to_3d(field, fixed_slice_z, moving_slice_z)
    grid_transform = _vtk_grid_transform(vectors, spacing, origin, direction)
    node = _output_node(transformNode, scene, name, "vtkMRMLGridTransformNode")
    node.SetAndObserveTransformFromParent(grid_transform)
    return node


def transform_node_from_result(
    result,
    scene=None,
    node=None,
    name: str = DEFAULT_TRANSFORM_NAME,
    *,
    fixed_slice_z: float = 0.0,
    moving_slice_z: float = 0.0,
):
    """Create or update a transform node from a :class:`~RegistrationSuiteLib.result.RegistrationResult`.

    Linear results give a linear node; displacement fields a grid node (FromParent). Any other non-linear
    SimpleITK transform (e.g. B-spline) is sampled as a displacement field on ``result.fixed_grid``.
    The result's JSON summary is stored in the node attribute :data:`RESULT_ATTRIBUTE`.
    """
    kw = {"fixed_slice_z": fixed_slice_z, "moving_slice_z": moving_slice_z}
    if result.is_linear:
        node = set_linear_transform(node, result.fixed_to_moving_matrix, scene, name, **kw)
    else:
        node = set_grid_transform_from_sitk(node, _field_from_result(result), scene, name, **kw)
    node.SetAttribute(RESULT_ATTRIBUTE, _result_json(result))
    return node


def _result_json(result) -> str:
    try:
        return result.to_json()
    except (TypeError, ValueError):  # method diagnostics that JSON cannot hold: keep the essentials
        return json.dumps({"method": result.method, "transform_type": result.transform.GetName()})


def _field_from_result(result) -> sitk.Image:
    transform = result.transform
    try:
        field = _field_image(transform)
    except InputError:
        if result.fixed_grid is None:
            raise InputError(
                f"result: cannot convert a {transform.GetName()} to a grid transform without result.fixed_grid"
            ) from None
        reference = result.fixed_grid.reference_image()
        field = sitk.TransformToDisplacementField(
            transform, sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(),
            reference.GetSpacing(), reference.GetDirection(),
        )
    return field


def set_registration_references(transformNode, fixedNode, movingNode) -> None:
    """Record which volumes a transform registers (Slicer's ``spatialRegistrationFixed/Moving`` roles).

    A ``None`` node removes that reference. Replaces earlier references of the same role.
    """
    import slicer

    for role, node in (
        (slicer.vtkMRMLTransformNode.GetFixedNodeReferenceRole(), fixedNode),
        (slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole(), movingNode),
    ):
        if node is None:
            transformNode.RemoveNodeReferenceIDs(role)
        else:
            transformNode.SetNodeReferenceID(role, node.GetID())


def save_transform_node(transformNode, path) -> Path:
    """Write a transform node to an ITK file (``.h5``, ``.tfm``, ``.txt``, ``.mat``) through a MRML
    transform storage node, atomically (a temporary file renamed on success).

    The file holds the LPS fixed→moving transform (what SimpleITK's ``ReadTransform`` returns) of the node's
    full transform to world: a node under parent transforms is exported composed with them (see
    :func:`world_transform_node`; a combination that cannot be exported exactly is refused). The node and its
    own storage node are left unchanged.
    """
    import slicer

    path = Path(path)
    if path.suffix.lower() not in TRANSFORM_SUFFIXES:
        raise InputError(f"path: transform file must end with one of {', '.join(TRANSFORM_SUFFIXES)}, got {path}")
    world = world_transform_node(transformNode)
    storage = slicer.vtkMRMLTransformStorageNode()
    with atomic_output(path) as tmp:
        storage.SetFileName(str(tmp))
        if not storage.WriteData(world):
            raise InputError(f"transformNode: could not write '{transformNode.GetName()}' to {path}")
    return path


def _parents(transformNode) -> list:
    parents, node = [], transformNode.GetParentTransformNode()
    while node is not None:
        parents.append(node)
        node = node.GetParentTransformNode()
    return parents


def world_transform_node(transformNode):
    """``transformNode`` itself when it has no parent transform; otherwise a new node (not added to any scene)
    holding its full transform to world, ``ToWorld = parents' ToParent ∘ its own ToParent``:

    - every node of the chain linear: the exact world matrix (linear node);
    - a grid node under linear, rigid parents: its FromWorld mapping sampled on its own grid moved into world
      coordinates by the parents (grid node, FromParent), exact at the grid points;
    - anything else (a non-linear parent, a grid under a scaling or shearing parent): refused with
      :class:`InputError`, naming the parent, since it cannot be written exactly as one ITK transform.
    """
    import slicer
    import vtk

    parents = _parents(transformNode)
    if not parents:
        return transformNode
    names = " → ".join(f"'{p.GetName()}'" for p in parents)
    harden = ("harden the transforms first (Data module: right-click the node → Harden transform) and export "
              "the result")
    if transformNode.IsTransformToWorldLinear():
        to_world = vtk.vtkMatrix4x4()
        transformNode.GetMatrixTransformToWorld(to_world)
        node = slicer.vtkMRMLLinearTransformNode()
        node.SetName(transformNode.GetName())
        node.SetMatrixTransformToParent(to_world)
        return node
    nonlinear = [p.GetName() for p in parents if not p.IsLinear()]
    if nonlinear:
        raise InputError(f"transformNode: '{transformNode.GetName()}' sits under the non-linear transform "
                         f"'{nonlinear[0]}' (parents: {names}); its transform to world cannot be exported exactly: {harden}")
    geometry = _grid_geometry(transformNode)
    parent_to_world = vtk.vtkMatrix4x4()
    parents[0].GetMatrixTransformToWorld(parent_to_world)
    p = slicer.util.arrayFromVTKMatrix(parent_to_world)
    if geometry is None or not np.allclose(p[:3, :3].T @ p[:3, :3], np.eye(3), atol=1e-6) or np.linalg.det(p[:3, :3]) < 0:
        what = "a non-grid non-linear transform" if geometry is None else "a grid transform"
        raise InputError(f"transformNode: '{transformNode.GetName()}' is {what} under parents that are not a rotation "
                         f"and translation ({names}); its transform to world cannot be exported exactly: {harden}")
    grid = geometry.GetDisplacementGrid()
    direction = slicer.util.arrayFromVTKMatrix(geometry.GetGridDirectionMatrix())[:3, :3]
    from_world = vtk.vtkGeneralTransform()
    transformNode.GetTransformFromWorld(from_world)
    node = slicer.vtkMRMLGridTransformNode()
    node.SetName(transformNode.GetName())
    node.SetAndObserveTransformFromParent(_sample_on_grid(
        from_world, grid.GetDimensions(), grid.GetSpacing(), p[:3, :3] @ np.asarray(grid.GetOrigin()) + p[:3, 3],
        p[:3, :3] @ direction))
    return node


def sitk_transform_from_node(transformNode, *, dimension: int = 3) -> sitk.Transform:
    """The LPS fixed→moving SimpleITK transform of a transform node: its full transform to world (a node under
    parent transforms is composed with them, see :func:`world_transform_node`).

    Linear nodes give an ``AffineTransform``; a grid node a ``DisplacementFieldTransform`` in either storage
    direction (stored as FromParent: its own displacements; stored as ToParent: the FromParent inverse sampled on
    the stored grid's points, to the accuracy of VTK's iterative inverse); anything else is written to a
    temporary ``.h5`` and read back by SimpleITK.

    Args:
        dimension: 2 to return the in-plane part of a transform that is the identity along z (2D
            registrations); any z translation is dropped.
    """
    if dimension not in (2, 3):
        raise InputError(f"dimension: expected 2 or 3, got {dimension}")
    import slicer
    import vtk

    transformNode = world_transform_node(transformNode)
    if transformNode.IsLinear():
        to_parent = vtk.vtkMatrix4x4()
        transformNode.GetMatrixTransformToParent(to_parent)
        m = moving_to_fixed_ras_to_fixed_to_moving_lps(slicer.util.arrayFromVTKMatrix(to_parent))
        return sitk_affine_from_matrix(_restrict_matrix(m, dimension))
    from_parent = transformNode.GetTransformFromParent()
    if _is_stored_grid(from_parent):
        return _sitk_field_transform(from_parent, dimension)
    geometry = _grid_geometry(transformNode)
    if geometry is not None:
        # A grid stored as ToParent (Slicer's DICOM import makes these) or with its inverse flag set: the
        # FromParent direction is an inverse computed on the fly, so sample it on the stored grid's points.
        return _sitk_field_transform(_sampled_grid(from_parent, geometry), dimension)
    transform = _read_through_file(transformNode)
    if dimension == 2:
        raise InputError("dimension: 2D read-back supports linear and grid (FromParent) transforms only")
    return transform


def _is_stored_grid(transform) -> bool:
    """``True`` for a grid transform whose own displacements are the FromParent mapping (no inverse flag)."""
    return (transform is not None and transform.IsA("vtkOrientedGridTransform")
            and transform.GetDisplacementGrid() is not None and not transform.GetInverseFlag())


def _grid_geometry(transformNode):
    """The ``vtkOrientedGridTransform`` that holds a grid node's displacement grid, whichever direction it is
    stored in (``None`` for other transforms)."""
    for transform in (transformNode.GetTransformToParent(), transformNode.GetTransformFromParent()):
        if (transform is not None and transform.IsA("vtkOrientedGridTransform")
                and transform.GetDisplacementGrid() is not None):
            return transform
    return None


def _sampled_grid(from_parent, geometry):
    """A FromParent ``vtkOrientedGridTransform`` on ``geometry``'s grid: displacement ``FromParent(p) - p`` at
    every grid point ``p`` (RAS), evaluated through VTK (inverses included)."""
    import slicer

    grid = geometry.GetDisplacementGrid()
    direction = slicer.util.arrayFromVTKMatrix(geometry.GetGridDirectionMatrix())[:3, :3]
    return _sample_on_grid(from_parent, grid.GetDimensions(), grid.GetSpacing(), grid.GetOrigin(), direction)


def _sample_on_grid(mapping, dimensions, spacing, origin_ras, direction_ras):
    """A ``vtkOrientedGridTransform`` whose displacement at each point ``p`` of the grid (RAS: ``dimensions``
    ``(i, j, k)``, ``spacing``, ``origin_ras``, 3×3 ``direction_ras``) is ``mapping(p) - p``."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    i, j, k = dimensions
    direction = np.asarray(direction_ras, dtype=float)
    kk, jj, ii = np.meshgrid(np.arange(k), np.arange(j), np.arange(i), indexing="ij")
    index = np.stack([ii, jj, kk], axis=-1).reshape(-1, 3).astype(float)
    points = np.asarray(origin_ras, dtype=float) + (index * np.asarray(spacing)) @ direction.T
    source = vtk.vtkPoints()
    source.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(points), deep=True))
    mapped = vtk.vtkPoints()
    mapping.TransformPoints(source, mapped)
    displacement = numpy_support.vtk_to_numpy(mapped.GetData()).astype(np.float64) - points
    sampled = vtk.vtkImageData()
    sampled.SetDimensions(i, j, k)
    sampled.SetSpacing(*spacing)
    sampled.SetOrigin(*(float(o) for o in origin_ras))
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(displacement), deep=True)
    scalars.SetNumberOfComponents(3)
    sampled.GetPointData().SetScalars(scalars)
    matrix = np.eye(4)
    matrix[:3, :3] = direction
    out = slicer.vtkOrientedGridTransform()
    out.SetDisplacementGridData(sampled)
    out.SetGridDirectionMatrix(slicer.util.vtkMatrixFromArray(matrix))
    out.SetInterpolationModeToLinear()
    return out


def _restrict_matrix(m: np.ndarray, dimension: int) -> np.ndarray:
    if dimension == 3:
        return m
    if not (np.allclose(m[2, :3], [0, 0, 1]) and np.allclose(m[:2, 2], 0)):
        raise InputError("transformNode: expected a transform that is the identity along z for dimension=2")
    return m[np.ix_([0, 1, 3], [0, 1, 3])]


def _sitk_field_transform(grid_transform, dimension: int) -> sitk.DisplacementFieldTransform:
    import slicer
    from vtk.util import numpy_support

    grid = grid_transform.GetDisplacementGrid()
    i, j, k = grid.GetDimensions()
    vectors = numpy_support.vtk_to_numpy(grid.GetPointData().GetScalars()).reshape(k, j, i, 3).astype(np.float64)
    vectors = vectors * grid_transform.GetDisplacementScale() + grid_transform.GetDisplacementShift()
    direction_ras = slicer.util.arrayFromVTKMatrix(grid_transform.GetGridDirectionMatrix())[:3, :3]
    direction = _F3 @ direction_ras
    origin = _F3 @ np.asarray(grid.GetOrigin())
    spacing = np.asarray(grid.GetSpacing())
    vectors = vectors * np.diag(_F3)
    if dimension == 2:
        if k != 1:
            raise InputError(f"transformNode: dimension=2 needs a single-slice grid, got {k} slices")
        vectors, spacing, origin, direction = vectors[0, ..., :2], spacing[:2], origin[:2], direction[:2, :2]
    field = sitk.GetImageFromArray(np.ascontiguousarray(vectors), isVector=True)
    field.SetSpacing(tuple(float(s) for s in spacing))
    field.SetOrigin(tuple(float(o) for o in origin))
    field.SetDirection(tuple(float(d) for d in direction.ravel()))
    return sitk.DisplacementFieldTransform(field)


def _read_through_file(transformNode) -> sitk.Transform:
    fd, tmp = tempfile.mkstemp(suffix=".h5")
    os.close(fd)
    try:
        save_transform_node(transformNode, tmp)
        try:
            transform = sitk.ReadTransform(tmp)
        except RuntimeError as exc:
            raise InputError(
                f"transformNode: SimpleITK cannot read '{transformNode.GetName()}' "
                f"({str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else 'reader error'})"
            ) from None
    finally:
        os.remove(tmp)
    if isinstance(transform, sitk.CompositeTransform) and transform.GetNumberOfTransforms() == 1:
        transform = transform.GetNthTransform(0)
    return transform.Downcast() if hasattr(transform, "Downcast") else transform


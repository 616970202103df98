"""Volume nodes ↔ SimpleITK images.

A volume node stores its voxels as a ``vtkImageData`` (axes i, j, k; origin 0, spacing 1) and its geometry
as ``IJKToRAS``. A SimpleITK image stores spacing, origin and direction in **LPS**. Hence
``index_to_lps = LPS_TO_RAS · IJKToRAS`` and spacing = column norms, direction = normalised columns.

Parent transforms of nodes are ignored (the node's own coordinates are used), as SlicerElastix does: the
registration then relates the volumes' own coordinate systems, which is what a transform node placed as
the moving volume's parent needs.

2D images become single-slice volumes (k = 1, slice normal along +S, slice at z = 0 unless ``slice_z`` is
given); single-slice volumes lying in an axial plane come back as 2D images.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry import LPS_TO_RAS, Grid

_SCALAR_VOLUME_CLASS = "vtkMRMLScalarVolumeNode"
_LABELMAP_CLASS = "vtkMRMLLabelMapVolumeNode"


def ijk_to_ras_matrix(volumeNode) -> np.ndarray:
    """The node's ``IJKToRAS`` as a ``(4, 4)`` array (voxel index → RAS mm, parent transforms ignored)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _check_volume_node(volumeNode, name: str, components: bool = False):
    if volumeNode is None or not hasattr(volumeNode, "IsA") or not volumeNode.IsA(_SCALAR_VOLUME_CLASS):
        got = volumeNode.GetClassName() if hasattr(volumeNode, "GetClassName") else type(volumeNode).__name__
        raise InputError(f"{name}: expected a scalar or labelmap volume node, got {got}")
    image_data = volumeNode.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise InputError(f"{name}: volume node '{volumeNode.GetName()}' has no voxels")
    if image_data.GetNumberOfScalarComponents() != 1 and not components:
        raise InputError(
            f"{name}: expected one component per voxel, got {image_data.GetNumberOfScalarComponents()} "
            f"in '{volumeNode.GetName()}'"
        )
    return image_data


def _voxel_array(image_data) -> np.ndarray:
    """A copy of the voxels as an array ``(k, j, i)``, or ``(k, j, i, c)`` for several components."""
    from vtk.util import numpy_support

    dims = image_data.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())
    components = image_data.GetNumberOfScalarComponents()
    shape = (dims[2], dims[1], dims[0]) + ((components,) if components > 1 else ())
    return np.array(scalars, copy=True).reshape(shape)


def _is_axial_single_slice(index_to_lps: np.ndarray, dims) -> bool:
    if dims[2] != 1:
        return False
    axes = index_to_lps[:3, :3]
    in_plane_z = np.abs(axes[2, :2]).max()
    normal_xy = np.abs(axes[:2, 2]).max()
    return bool(in_plane_z <= 1e-6 * np.abs(axes[:2, :2]).max() and normal_xy <= 1e-6 * abs(axes[2, 2]))


def image_from_volume_node(volumeNode, *, squeeze_single_slice: bool = True, name: str = "volume") -> sitk.Image:
    """A SimpleITK image (LPS geometry) holding a copy of a scalar or labelmap volume node's voxels.

    Args:
        volumeNode: ``vtkMRMLScalarVolumeNode`` or ``vtkMRMLLabelMapVolumeNode``; never modified.
        squeeze_single_slice: return a 2D image for a single-slice volume lying in an axial plane
            (its slice position is then dropped; see :func:`slice_position_lps`).
        name: argument name for error messages.

    Returns:
        Image with the node's voxel type; spacing (mm), origin (mm, LPS) and direction from ``IJKToRAS``.

    Raises:
        InputError: not a scalar volume node, no voxels, several components, or a degenerate ``IJKToRAS``.
    """
    return _image_from_node(volumeNode, squeeze_single_slice, name, components=False)


def vector_image_from_volume_node(volumeNode, *, squeeze_single_slice: bool = True,
                                  name: str = "volume") -> sitk.Image:
    """As :func:`image_from_volume_node`, but a node with several components per voxel (e.g. an RGB
    ``vtkMRMLVectorVolumeNode``, a histology slide) gives a vector image; one component gives a scalar image."""
    return _image_from_node(volumeNode, squeeze_single_slice, name, components=True)


def _image_from_node(volumeNode, squeeze_single_slice: bool, name: str, components: bool) -> sitk.Image:
    image_data = _check_volume_node(volumeNode, name, components)
    vector = image_data.GetNumberOfScalarComponents() > 1
    dims = image_data.GetDimensions()
    index_to_lps = LPS_TO_RAS @ ijk_to_ras_matrix(volumeNode)
    spacing = np.linalg.norm(index_to_lps[:3, :3], axis=0)
    if np.any(spacing <= 0) or abs(np.linalg.det(index_to_lps[:3, :3])) <= 1e-12 * np.prod(spacing):
        raise InputError(f"{name}: volume node '{volumeNode.GetName()}' has a degenerate IJKToRAS matrix")
    direction = index_to_lps[:3, :3] / spacing
    origin = index_to_lps[:3, 3]
    voxels = _voxel_array(image_data)
    if squeeze_single_slice and _is_axial_single_slice(index_to_lps, dims):
        image = sitk.GetImageFromArray(voxels[0], isVector=vector)
        image.SetSpacing(tuple(float(s) for s in spacing[:2]))
        image.SetOrigin(tuple(float(o) for o in origin[:2]))
        image.SetDirection(tuple(float(d) for d in direction[:2, :2].ravel()))
        return image
    image = sitk.GetImageFromArray(voxels, isVector=vector)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in direction.ravel()))
    return image


def slice_position_lps(volumeNode) -> float:
    """LPS z (mm) of a volume's first slice: what :func:`image_from_volume_node` drops when squeezing."""
    return float((LPS_TO_RAS @ ijk_to_ras_matrix(volumeNode))[2, 3])


def index_to_lps_3d(image: sitk.Image, slice_z: float = 0.0) -> np.ndarray:
    """``(4, 4)`` voxel index → LPS matrix of ``image``; a 2D image is embedded as a slice at ``slice_z``."""
    m2 = Grid.from_image(image).index_to_world()
    if image.GetDimension() == 3:
        return m2
    m = np.eye(4)
    m[:2, :2] = m2[:2, :2]
    m[:2, 3] = m2[:2, 2]
    m[2, 3] = slice_z
    return m


def _voxels_for_node(image: sitk.Image, labelmap: bool) -> np.ndarray:
    voxels = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 2:
        voxels = voxels[None]
    if voxels.dtype == np.bool_:
        voxels = voxels.astype(np.uint8)
    if voxels.dtype.kind in "iu" and voxels.dtype.itemsize == 8:
        # VTK/Slicer do not display 64-bit integer volumes; 32 bits hold any practical label or intensity.
        voxels = voxels.astype(np.int32 if voxels.dtype.kind == "i" else np.uint32)
    if labelmap and voxels.dtype.kind == "f":
        rounded = np.rint(voxels)
        small = rounded.size == 0 or (rounded.min() >= -32768 and rounded.max() <= 32767)
        voxels = rounded.astype(np.int16 if small else np.int32)
    return voxels


def volume_node_from_image(
    image: sitk.Image,
    scene,
    name: str = "Volume",
    labelmap: bool = False,
    *,
    node=None,
    slice_z: float = 0.0,
):
    """Create (or update) a volume node from a scalar SimpleITK image.

    Args:
        image: 2D or 3D scalar image (LPS geometry). 2D images become single-slice volumes at LPS z =
            ``slice_z``.
        scene: the ``vtkMRMLScene`` to add a new node to (unused when ``node`` is given).
        name: name of a new node.
        labelmap: create a ``vtkMRMLLabelMapVolumeNode`` (floating-point voxels are rounded to integers).
        node: an existing scalar/labelmap volume node to overwrite instead of creating one.
        slice_z: LPS z (mm) of the slice for 2D images.

    Returns:
        The volume node, with default display nodes.

    Raises:
        InputError: vector or 4D image.
    """
    if not isinstance(image, sitk.Image):
        raise InputError(f"image: expected a SimpleITK image, got {type(image).__name__}")
    if image.GetDimension() not in (2, 3) or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"image: expected a 2D or 3D scalar image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    import slicer

    voxels = _voxels_for_node(image, labelmap)
    if node is None:
        if scene is None:
            raise InputError("scene: expected a vtkMRMLScene to add the new volume node to, got None")
        node = scene.AddNewNodeByClass(_LABELMAP_CLASS if labelmap else _SCALAR_VOLUME_CLASS, name)
    elif not node.IsA(_SCALAR_VOLUME_CLASS):
        raise InputError(f"node: expected a scalar or labelmap volume node, got {node.GetClassName()}")
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(LPS_TO_RAS @ index_to_lps_3d(image, slice_z)))
    slicer.util.updateVolumeFromArray(node, voxels)
    if node.GetScene() is not None and node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


"""Registration masks from labelmap volumes or segmentations (non-zero / inside = 1, else 0; uint8).

Segmentations are read through the segmentation node itself (``GenerateMergedLabelmapForAllSegments``), so
no module logic is needed and this works in ``slicer-core`` as inside Slicer. A segmentation whose source
representation is not a binary labelmap (e.g. closed surfaces) is converted on a temporary copy, which
needs the segmentation conversion rules (registered by Slicer's Segmentations module, or by
:func:`~RegistrationSuiteLib.mrml.scene.create_headless_scene`). The input node is never modified.

Parent transforms are ignored, as for volumes (:mod:`.volumes`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry import LPS_TO_RAS, Grid
from .volumes import image_from_volume_node


def mask_from_node(maskNode, reference=None, *, segment_name: Optional[str] = None, name: str = "mask") -> sitk.Image:
    """A binary uint8 mask image (LPS geometry) from a labelmap/scalar volume node or a segmentation node.

    Args:
        maskNode: ``vtkMRMLLabelMapVolumeNode`` / ``vtkMRMLScalarVolumeNode`` (non-zero = inside) or
            ``vtkMRMLSegmentationNode`` (inside any segment, or only ``segment_name``).
        reference: optional ``sitk.Image`` or volume node; the mask is resampled onto its grid (nearest
            neighbour), which is what the registration methods expect for a mask of that image.
        segment_name: for segmentations, the name of the one segment to use (default: all segments).
        name: argument name for error messages ("fixed mask", ...).

    Returns:
        ``sitk.sitkUInt8`` image with values 0/1 (2D when the reference, or the mask itself, is a
        single axial slice).

    Raises:
        InputError: unsupported node, unknown segment name, or a mask that is empty (on the reference grid).
    """
    if maskNode is None or not hasattr(maskNode, "IsA"):
        raise InputError(f"{name}: expected a labelmap volume or segmentation node, got {type(maskNode).__name__}")
    if reference is not None and not isinstance(reference, sitk.Image):
        reference = image_from_volume_node(reference, name=f"{name} reference")
    if maskNode.IsA("vtkMRMLSegmentationNode"):
        mask = _mask_from_segmentation(maskNode, segment_name, name, reference)
    elif maskNode.IsA("vtkMRMLScalarVolumeNode"):
        if segment_name is not None:
            raise InputError(f"{name}: segment_name applies to segmentation nodes, got a {maskNode.GetClassName()}")
        mask = image_from_volume_node(maskNode, name=name)
    else:
        raise InputError(f"{name}: expected a labelmap volume or segmentation node, got {maskNode.GetClassName()}")
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if reference is not None:
        binary = _onto_reference(binary, reference, name)
    if not np.any(sitk.GetArrayViewFromImage(binary)):
        raise InputError(f"{name}: mask is empty (no voxel inside{' its image' if reference is not None else ''})")
    return binary


def _onto_reference(binary: sitk.Image, reference: sitk.Image, name: str) -> sitk.Image:
    if binary.GetDimension() != reference.GetDimension():
        raise InputError(
            f"{name}: mask is {binary.GetDimension()}D but its image is {reference.GetDimension()}D "
            "(2D images need single-slice axial masks)"
        )
    return sitk.Resample(binary, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def segment_ids(segmentationNode, segment_name: Optional[str] = None, name: str = "mask") -> list:
    """IDs of all segments, or of the segment named ``segment_name`` (InputError listing names if absent)."""
    segmentation = segmentationNode.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if not ids:
        raise InputError(f"{name}: segmentation '{segmentationNode.GetName()}' has no segments")
    if segment_name is None:
        return ids
    matching = [sid for sid in ids if segmentation.GetSegment(sid).GetName() == segment_name]
    if not matching:
        names = ", ".join(repr(segmentation.GetSegment(sid).GetName()) for sid in ids)
        raise InputError(f"{name}: no segment named {segment_name!r} in '{segmentationNode.GetName()}' (has {names})")
    return matching[:1]


def _mask_from_segmentation(segmentationNode, segment_name: Optional[str], name: str, reference) -> sitk.Image:
    import slicer
    import vtk

    ids = segment_ids(segmentationNode, segment_name, name)
    source = segmentationNode
    labelmap_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if not segmentationNode.GetSegmentation().ContainsRepresentation(labelmap_name):
        # Convert a copy: creating a representation would modify the caller's node.
        source = slicer.vtkMRMLSegmentationNode()
        source.GetSegmentation().DeepCopy(segmentationNode.GetSegmentation())
        if reference is not None and reference.GetDimension() == 3:
            # Rasterise on the reference grid (the default geometry can be needlessly fine and large).
            source.GetSegmentation().SetConversionParameter(
                slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
                slicer.vtkSegmentationConverter.SerializeImageGeometry(_oriented_geometry(reference)),
            )
        if not source.GetSegmentation().CreateRepresentation(labelmap_name):
            raise InputError(f"{name}: cannot convert segmentation '{segmentationNode.GetName()}' to a labelmap")
    id_array = vtk.vtkStringArray()
    for sid in ids:
        id_array.InsertNextValue(sid)
    merged = slicer.vtkOrientedImageData()
    ok = source.GenerateMergedLabelmapForAllSegments(
        merged, slicer.vtkSegmentation.EXTENT_UNION_OF_EFFECTIVE_SEGMENTS, None, id_array
    )
    if not ok or merged.GetNumberOfPoints() == 0:
        raise InputError(f"{name}: segmentation '{segmentationNode.GetName()}' gave an empty labelmap")
    return _image_from_oriented_image_data(merged)


def _oriented_geometry(image: sitk.Image):
    """An empty ``vtkOrientedImageData`` with the (3D) image's geometry in RAS."""
    import slicer

    geometry = slicer.vtkOrientedImageData()
    size = image.GetSize()
    geometry.SetExtent(0, size[0] - 1, 0, size[1] - 1, 0, size[2] - 1)
    geometry.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(LPS_TO_RAS @ Grid.from_image(image).index_to_world()))
    return geometry


def _image_from_oriented_image_data(oriented) -> sitk.Image:
    """SimpleITK image (LPS) from a ``vtkOrientedImageData`` (RAS image-to-world, extent may not start at 0)."""
    import vtk
    from vtk.util import numpy_support

    m = vtk.vtkMatrix4x4()
    oriented.GetImageToWorldMatrix(m)
    ijk_to_ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    extent = oriented.GetExtent()
    start = np.array([extent[0], extent[2], extent[4], 1.0])
    index_to_lps = LPS_TO_RAS @ ijk_to_ras
    dims = oriented.GetDimensions()
    voxels = numpy_support.vtk_to_numpy(oriented.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    spacing = np.linalg.norm(index_to_lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.array(voxels, copy=True))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in (index_to_lps @ start)[:3]))
    image.SetDirection(tuple(float(d) for d in (index_to_lps[:3, :3] / spacing).ravel()))
    if dims[2] == 1:
        axes = index_to_lps[:3, :3] / spacing
        if np.allclose(axes[2, :2], 0, atol=1e-6) and np.allclose(axes[:2, 2], 0, atol=1e-6):
            image = image[:, :, 0]
    return image

"""Organ point clouds from MRML nodes (LPS mm), and transformed copies of segmentations/models.

Nodes → :class:`~RegistrationSuiteLib.io.points.LabeledPoints` (``(N, 3)`` LPS mm, ``(N,)`` integer labels):

- **labelmap volume**: the node's voxels (:func:`~.volumes.image_from_volume_node`) go through the core's
  ``labels_to_points`` (:mod:`RegistrationSuiteLib.surfaces`), so a labelmap node gives the same points as
  the same file on the command line;
- **segmentation** whose source representation is a binary labelmap: its segments are merged into one label
  image carrying each segment's organ label (:func:`segment_labels`), then ``labels_to_points``. Where
  segments overlap, the later segment wins (as in Slicer's own labelmap export);
- **segmentation** whose source is a closed surface (or ``representation="surface"``): each segment's closed
  surface (converted on a temporary copy when missing: the input is never modified);
- **model nodes**: one model = one organ, label from the caller, else from a ``label`` point-data array
  (which may hold several organs; its vertices are used), else the model's position in the list + 1;
- **markups**: control points, one label.

Surfaces (closed-surface segments, models) are sampled like the core samples label images: ``points_per_organ``
points uniformly by area (the core's ``sample_surface``), seeded by (seed, label) so that an organ's sample does
not depend on the others. Parent transforms are ignored (the nodes' own coordinates are used), as for volumes
(:mod:`.volumes`). :func:`registration_input_from_node` is what the logic hands to the core.

The reverse, for outputs: :func:`apply_grid_transform_copy` places a *copy* of a node under a registration
transform and hardens it; the input is left untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..geometry import LPS_TO_RAS
from ..io.points import LabeledPoints
from .volumes import image_from_volume_node

#: Segment tag holding an integer organ label (``segment.SetTag("label", "5")``); wins over any other rule.
SEGMENT_LABEL_TAG = "label"
#: Point-data array of a model node holding one integer organ label per point.
MODEL_LABEL_ARRAY = "label"
#: Segment names read as a label number: "5", "Label_5", "Segment 5", "label-5" (case-insensitive).
_NUMBERED_NAME = re.compile(r"^\s*(?:label|segment)?[\s_-]*(\d+)\s*$", re.IGNORECASE)
_F3 = LPS_TO_RAS[:3, :3]
_REPRESENTATIONS = ("auto", "labelmap", "surface")


@dataclass(frozen=True)
class SegmentLabel:
    """A segment's organ label and where it came from (``source``: "mapping", "tag", "labelmap value",
    "name" or "index")."""

    segment_id: str
    name: str
    label: int
    source: str


def _class_name(node) -> str:
    return node.GetClassName() if hasattr(node, "GetClassName") else type(node).__name__


def _ras_to_lps(points_ras: np.ndarray) -> np.ndarray:
    return np.asarray(points_ras, dtype=np.float64).reshape(-1, 3) * np.diag(_F3)


def _as_int(value, what: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what}: expected an integer organ label, got {value!r}") from None
    if not np.isfinite(number) or number != round(number):
        raise InputError(f"{what}: expected an integer organ label, got {value!r}")
    return int(round(number))


# ------------------------------------------------------------------------------------------ segment labels


def segment_labels(segmentationNode, mapping: Optional[Mapping] = None, *, name: str = "segmentation") -> list:
    """The organ label of every segment, in segment order.

    Rules, first match wins per segment: ``mapping`` (segment ID or name → label); the segment tag
    :data:`SEGMENT_LABEL_TAG`; then, for the remaining segments as a whole, their value in the binary
    labelmap if these are distinct (a segmentation imported from a label file keeps the file's values),
    else numbers in their names ("Label_5", "5") if every name has a distinct one, else index + 1.

    Returns:
        ``[SegmentLabel, ...]``.

    Raises:
        InputError: no segments, a non-integer mapping/tag value, or two segments with the same label.
    """
    segmentation = _segmentation(segmentationNode, name)
    mapping = dict(mapping or {})
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if not ids:
        raise InputError(f"{name}: segmentation '{segmentationNode.GetName()}' has no segments")
    out, rest = {}, []
    for sid in ids:
        segment = segmentation.GetSegment(sid)
        seg_name = segment.GetName()
        tag = _segment_tag(segment)
        if sid in mapping or seg_name in mapping:
            value = mapping[sid] if sid in mapping else mapping[seg_name]
            out[sid] = SegmentLabel(sid, seg_name, _as_int(value, f"{name}: label of '{seg_name}'"), "mapping")
        elif tag is not None:
            out[sid] = SegmentLabel(sid, seg_name, _as_int(tag, f"{name}: '{SEGMENT_LABEL_TAG}' tag of '{seg_name}'"),
                                    "tag")
        else:
            rest.append(sid)
    out.update(_default_labels(segmentation, ids, rest))
    labels = [out[sid] for sid in ids]
    _check_distinct(labels, segmentationNode, name)
    return labels


def _segment_tag(segment) -> Optional[str]:
    import vtk

    if not segment.HasTag(SEGMENT_LABEL_TAG):
        return None
    value = vtk.reference("")
    segment.GetTag(SEGMENT_LABEL_TAG, value)
    return str(value)


def _default_labels(segmentation, ids: list, rest: list) -> dict:
    if not rest:
        return {}
    segments = {sid: segmentation.GetSegment(sid) for sid in rest}
    values = [int(segments[sid].GetLabelValue()) for sid in rest]
    if len(rest) > 1 and len(set(values)) == len(values):
        return {sid: SegmentLabel(sid, segments[sid].GetName(), v, "labelmap value") for sid, v in zip(rest, values)}
    matches = [_NUMBERED_NAME.match(segments[sid].GetName()) for sid in rest]
    numbers = [int(m.group(1)) for m in matches if m]
    if len(numbers) == len(rest) and len(set(numbers)) == len(numbers):
        return {sid: SegmentLabel(sid, segments[sid].GetName(), n, "name") for sid, n in zip(rest, numbers)}
    return {sid: SegmentLabel(sid, segments[sid].GetName(), ids.index(sid) + 1, "index") for sid in rest}


def _check_distinct(labels: list, segmentationNode, name: str) -> None:
    seen = {}
    for entry in labels:
        if entry.label in seen:
            raise InputError(
                f"{name}: segments '{seen[entry.label].name}' ({seen[entry.label].source}) and '{entry.name}' "
                f"({entry.source}) of '{segmentationNode.GetName()}' both get label {entry.label}; give each "
                f"segment a distinct '{SEGMENT_LABEL_TAG}' tag or pass a segment → label mapping"
            )
        seen[entry.label] = entry


def _segmentation(segmentationNode, name: str):
    if segmentationNode is None or not hasattr(segmentationNode, "IsA") or not segmentationNode.IsA(
        "vtkMRMLSegmentationNode"
    ):
        raise InputError(f"{name}: expected a segmentation node, got {_class_name(segmentationNode)}")
    return segmentationNode.GetSegmentation()


def _selected(entries: list, labels, node, name: str) -> list:
    if labels is None:
        return entries
    wanted = {int(v) for v in labels}
    chosen = [e for e in entries if e.label in wanted]
    if not chosen:
        have = sorted(e.label for e in entries)
        raise InputError(f"{name}: none of the labels {sorted(wanted)} is in '{node.GetName()}' (has {have})")
    return chosen


# ------------------------------------------------------------------------------------------ node → points


def points_from_labelmap_node(
    labelmapNode, *, labels=None, points_per_organ: int = 1500, seed: int = 0, name: str = "labelmap"
) -> LabeledPoints:
    """Organ surface points of a labelmap (or integer scalar) volume node, through the core's
    ``labels_to_points`` on the node's voxels (LPS mm; ``labels=None``: every non-zero label)."""
    image = image_from_volume_node(labelmapNode, squeeze_single_slice=False, name=name)
    return _labels_to_points(image, labels, points_per_organ, seed, name)


def _labels_to_points(image, labels, points_per_organ: int, seed: int, name: str) -> LabeledPoints:
    from ..surfaces import labels_to_points

    return labels_to_points(image, None if labels is None else [int(v) for v in labels], int(points_per_organ),
                            int(seed), name=name)


def points_from_segmentation_node(
    segmentationNode,
    *,
    labels=None,
    segment_label_map: Optional[Mapping] = None,
    points_per_organ: int = 1500,
    seed: int = 0,
    representation: str = "auto",
    name: str = "segmentation",
) -> LabeledPoints:
    """Organ surface points (LPS mm) of a segmentation node; one organ per segment (see :func:`segment_labels`).

    Args:
        labels: organ labels to keep (``None``: all segments).
        segment_label_map: segment ID or name → label, overriding the default rules.
        points_per_organ: surface points per organ (labelmap path: passed to ``labels_to_points``).
        seed: sampling seed.
        representation: ``"auto"`` (the segmentation's source representation), ``"labelmap"`` or ``"surface"``.
    """
    if representation not in _REPRESENTATIONS:
        raise InputError(f"representation: expected one of {_REPRESENTATIONS}, got {representation!r}")
    entries = _selected(segment_labels(segmentationNode, segment_label_map, name=name), labels, segmentationNode, name)
    if representation == "auto":
        import slicer

        source = segmentationNode.GetSegmentation().GetSourceRepresentationName()
        closed = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
        representation = "surface" if source == closed else "labelmap"
    if representation == "surface":
        return _points_from_closed_surfaces(segmentationNode, entries, points_per_organ, seed, name)
    image = _merged_labelmap(segmentationNode, entries, name)
    return _labels_to_points(image, [e.label for e in entries], points_per_organ, seed, name)


def label_image_from_segmentation_node(segmentationNode, *, labels=None, segment_label_map: Optional[Mapping] = None,
                                       name: str = "segmentation"):
    """The segments merged into one 3D integer label image (LPS geometry, cropped to the segments plus one
    voxel), each segment's voxels carrying its organ label (:func:`segment_labels`); later segments win where
    segments overlap. The node is never modified (a closed-surface source is rasterised on a copy)."""
    entries = _selected(segment_labels(segmentationNode, segment_label_map, name=name), labels, segmentationNode, name)
    return _merged_labelmap(segmentationNode, entries, name)


def _merged_labelmap(segmentationNode, entries: list, name: str):
    import slicer
    import vtk

    from .masks import _image_from_oriented_image_data

    source = _with_representation(
        segmentationNode, slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), name
    )
    ids, values = vtk.vtkStringArray(), vtk.vtkIntArray()
    for entry in entries:
        ids.InsertNextValue(entry.segment_id)
        values.InsertNextValue(entry.label)
    merged = slicer.vtkOrientedImageData()
    # Padded by one voxel so that organs touching the segmentation's extent still have a closed surface.
    ok = source.GenerateMergedLabelmapForAllSegments(
        merged, slicer.vtkSegmentation.EXTENT_UNION_OF_EFFECTIVE_SEGMENTS_PADDED, None, ids, values
    )
    if not ok or merged.GetNumberOfPoints() == 0:
        raise InputError(f"{name}: segmentation '{segmentationNode.GetName()}' gave an empty labelmap")
    image = _image_from_oriented_image_data(merged)
    if image.GetDimension() == 2:  # single-slice segmentations: keep them 3D for surface extraction
        import SimpleITK as sitk

        image = sitk.JoinSeries(image)
    return image


def _with_representation(segmentationNode, representation_name: str, name: str):
    """The node itself when it has the representation, else a converted temporary copy (input untouched)."""
    import slicer

    if segmentationNode.GetSegmentation().ContainsRepresentation(representation_name):
        return segmentationNode
    copy = slicer.vtkMRMLSegmentationNode()
    copy.GetSegmentation().DeepCopy(segmentationNode.GetSegmentation())
    if not copy.GetSegmentation().CreateRepresentation(representation_name):
        raise InputError(
            f"{name}: cannot convert segmentation '{segmentationNode.GetName()}' to '{representation_name}' "
            "(are the segmentation conversion rules registered?)"
        )
    return copy


def _points_from_closed_surfaces(segmentationNode, entries: list, points_per_organ, seed: int, name: str):
    import slicer
    import vtk

    source = _with_representation(
        segmentationNode, slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName(), name
    )
    points, labels = [], []
    for entry in entries:
        surface = vtk.vtkPolyData()
        source.GetClosedSurfaceRepresentation(entry.segment_id, surface)
        if surface.GetNumberOfPoints() == 0:
            raise InputError(f"{name}: segment '{entry.name}' of '{segmentationNode.GetName()}' is empty")
        sampled = _surface_points(surface, points_per_organ, seed, entry.label)
        points.append(sampled)
        labels.append(np.full(len(sampled), entry.label, dtype=np.int64))
    return LabeledPoints(np.concatenate(points), np.concatenate(labels))


def _surface_points(poly, count: Optional[int], seed: int, label: int) -> np.ndarray:
    """``count`` points (LPS) drawn uniformly by area on the triangles of ``poly`` (RAS) with the core's
    sampler, seeded by (seed, label); the vertices when ``count`` is ``None`` or there are no triangles."""
    import vtk
    from vtk.util import numpy_support

    from ..surfaces import sample_surface

    vertices = _ras_to_lps(numpy_support.vtk_to_numpy(poly.GetPoints().GetData()))
    triangles = vtk.vtkTriangleFilter()
    triangles.SetInputData(poly)
    triangles.PassVertsOff()
    triangles.PassLinesOff()
    triangles.Update()
    cells = triangles.GetOutput().GetPolys()
    if count is None or cells is None or cells.GetNumberOfCells() == 0:
        return _subsample(vertices, count, seed, label)
    # vtkTriangleFilter keeps the input points, so cell ids index ``vertices``.
    ids = numpy_support.vtk_to_numpy(cells.GetConnectivityArray()).reshape(-1, 3).astype(np.int64)
    return sample_surface(vertices, ids, int(count), _rng(seed, label))


def _rng(seed: int, label: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(label) & 0xFFFFFFFF])


def _subsample(points: np.ndarray, count: Optional[int], seed: int, label: int) -> np.ndarray:
    """At most ``count`` of ``points`` (``(N, 3)``), drawn without replacement, order kept; seeded by
    (seed, label) so that an organ's sample does not depend on the other organs."""
    if count is None or len(points) <= count:
        return points
    return points[np.sort(_rng(seed, label).choice(len(points), size=int(count), replace=False))]


def points_from_model_nodes(
    modelNodes, labels=None, *, points_per_organ: Optional[int] = 1500, seed: int = 0, name: str = "models"
) -> LabeledPoints:
    """Organ surface points (LPS mm) of model nodes; one model = one organ.

    A model's surface is sampled uniformly by area (``points_per_organ`` points, the core's sampler), or its
    vertices are used (at most ``points_per_organ`` of them) when it has no triangles or holds a ``label``
    point array (several organs in one model).

    Args:
        modelNodes: a model node or a sequence of them.
        labels: one label per model (``None``: each model's ``label`` point array, else position + 1).
        points_per_organ: points per organ (``None``: every vertex).
        seed: sampling seed (combined with each organ's label).
    """
    nodes = list(modelNodes) if isinstance(modelNodes, (list, tuple)) else [modelNodes]
    if not nodes:
        raise InputError(f"{name}: expected at least one model node, got none")
    if labels is not None and len(labels) != len(nodes):
        raise InputError(f"labels: expected one label per model node ({len(nodes)}), got {len(labels)}")
    parts = []
    for index, node in enumerate(nodes):
        if node is None or not hasattr(node, "IsA") or not node.IsA("vtkMRMLModelNode"):
            raise InputError(f"{name}[{index}]: expected a model node, got {_class_name(node)}")
        poly = node.GetPolyData()  # None for volumetric (unstructured grid) meshes
        if poly is None or poly.GetPoints() is None or poly.GetNumberOfPoints() == 0:
            raise InputError(f"{name}[{index}]: model '{node.GetName()}' has no points (a surface mesh is needed)")
        array = poly.GetPointData().GetArray(MODEL_LABEL_ARRAY)
        if labels is None and array is not None and array.GetNumberOfComponents() == 1:
            parts.append(_labelled_vertices(poly, array, points_per_organ, seed))
            continue
        label = index + 1 if labels is None else _as_int(labels[index], f"labels[{index}]")
        sampled = _surface_points(poly, points_per_organ, seed, label)
        parts.append(LabeledPoints(sampled, np.full(len(sampled), label, dtype=np.int64)))
    return LabeledPoints(np.concatenate([p.points for p in parts]), np.concatenate([p.labels for p in parts]))


def _labelled_vertices(poly, array, count, seed: int) -> LabeledPoints:
    """The vertices of ``poly`` (LPS) with their ``label`` values, at most ``count`` per label (seeded)."""
    from vtk.util import numpy_support

    points = LabeledPoints(_ras_to_lps(numpy_support.vtk_to_numpy(poly.GetPoints().GetData())),
                           numpy_support.vtk_to_numpy(array))
    if count is None:
        return points
    keep = []
    for label in points.unique_labels:
        index = np.flatnonzero(points.labels == label)
        keep.append(index[_subsample(np.arange(len(index))[:, None], count, seed, int(label))[:, 0]])
    keep = np.sort(np.concatenate(keep))
    return LabeledPoints(points.points[keep], points.labels[keep])


def points_from_markups_node(markupsNode, label: int = 1, *, name: str = "markups") -> LabeledPoints:
    """The control points (LPS mm) of a markups node, all with ``label``."""
    if markupsNode is None or not hasattr(markupsNode, "IsA") or not markupsNode.IsA("vtkMRMLMarkupsNode"):
        raise InputError(f"{name}: expected a markups node, got {_class_name(markupsNode)}")
    if markupsNode.GetNumberOfControlPoints() == 0:
        raise InputError(f"{name}: markups '{markupsNode.GetName()}' has no control points")
    # Local coordinates: parent transforms ignored, as for every other node.
    count = markupsNode.GetNumberOfControlPoints()
    points = np.array([markupsNode.GetNthControlPointPosition(i) for i in range(count)])
    return LabeledPoints(_ras_to_lps(points), np.full(len(points), _as_int(label, f"{name}: label"), dtype=np.int64))


def points_from_nodes(
    nodes,
    *,
    labels=None,
    points_per_organ: int = 1500,
    seed: int = 0,
    segment_label_map: Optional[Mapping] = None,
    model_labels: Optional[Sequence[int]] = None,
    name: str = "points",
) -> LabeledPoints:
    """Dispatch on the node type: segmentation, labelmap volume, model node(s) or markups.

    Args:
        nodes: a segmentation node, a labelmap volume node, a model node, a markups node, or a list of model
            nodes (one per organ).
        labels: organ labels to keep (``None``: all).
        points_per_organ, seed: surface sampling (see the per-type functions).
        segment_label_map: segmentation only, see :func:`points_from_segmentation_node`.
        model_labels: models only, one label per model.
    """
    kw = {"points_per_organ": points_per_organ, "seed": seed, "name": name}
    if isinstance(nodes, (list, tuple)):
        if len(nodes) == 1 and not nodes[0].IsA("vtkMRMLModelNode"):
            nodes = nodes[0]
        else:
            out = points_from_model_nodes(nodes, model_labels, **kw)
            return out if labels is None else _keep(out, labels, name)
    if nodes is None or not hasattr(nodes, "IsA"):
        raise InputError(f"{name}: expected a segmentation, labelmap volume or model node(s), got {_class_name(nodes)}")
    if nodes.IsA("vtkMRMLSegmentationNode"):
        return points_from_segmentation_node(nodes, labels=labels, segment_label_map=segment_label_map, **kw)
    if nodes.IsA("vtkMRMLScalarVolumeNode"):
        return points_from_labelmap_node(nodes, labels=labels, **kw)
    if nodes.IsA("vtkMRMLModelNode"):
        return _keep(points_from_model_nodes([nodes], model_labels, **kw), labels, name)
    if nodes.IsA("vtkMRMLMarkupsNode"):
        label = 1 if not model_labels else model_labels[0]
        return _keep(points_from_markups_node(nodes, label, name=name), labels, name)
    raise InputError(
        f"{name}: expected a segmentation, labelmap volume, model or markups node, got {nodes.GetClassName()}"
    )


def registration_input_from_node(nodes, *, labels=None, points_per_organ: int = 1500, seed: int = 0,
                                 name: str = "points"):
    """What to hand to ``register_organ_point_cloud`` for a node: a label image (``sitk.Image``, LPS) for
    labelmap volumes and for segmentations whose source is a binary labelmap, so that the core samples their
    surfaces exactly as for the same label file on the command line; :class:`LabeledPoints` otherwise
    (closed-surface segmentations, models, markups; see :func:`points_from_nodes`)."""
    single = nodes[0] if isinstance(nodes, (list, tuple)) and len(nodes) == 1 else nodes
    if hasattr(single, "IsA") and single.IsA("vtkMRMLScalarVolumeNode"):
        return image_from_volume_node(single, squeeze_single_slice=False, name=name)
    if hasattr(single, "IsA") and single.IsA("vtkMRMLSegmentationNode"):
        import slicer

        closed = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
        if single.GetSegmentation().GetSourceRepresentationName() != closed:
            return label_image_from_segmentation_node(single, labels=labels, name=name)
    return points_from_nodes(nodes, labels=labels, points_per_organ=points_per_organ, seed=seed, name=name)


def _keep(points: LabeledPoints, labels, name: str) -> LabeledPoints:
    if labels is None:
        return points
    kept = points.select(labels)
    if len(kept) == 0:
        raise InputError(f"{name}: none of the labels {sorted(int(v) for v in labels)} is present "
                         f"(has {points.unique_labels.tolist()})")
    return kept


# ------------------------------------------------------------------------------------------ outputs


def apply_grid_transform_copy(node, transformNode, scene=None, *, name: Optional[str] = None):
    """A hardened copy of ``node`` under ``transformNode`` (the moving → fixed mapping as ToParent, e.g. a
    registration's output), added to ``scene``; ``node`` itself is never modified.

    Args:
        node: segmentation, model, labelmap/scalar volume or markups node, or a list of them (then a list
            of copies is returned).
        transformNode: any transform node (grid, linear, composite). The copy is placed only under it (the
            original's parent transform is not carried over: registrations use nodes' own coordinates),
            then hardened with ``vtkSlicerTransformLogic.hardenTransform`` (segmentations and volumes are
            resampled, models and markups have their points moved).
        scene: scene to add the copy to (default: the node's scene).
        name: name of the copy (default "<name> registered"; lists: used as a prefix).

    Returns:
        The new node (or list of nodes), not under any transform.
    """
    if isinstance(node, (list, tuple)):
        return [apply_grid_transform_copy(n, transformNode, scene, name=None if name is None else f"{name} {i + 1}")
                for i, n in enumerate(node)]
    classes = ("vtkMRMLSegmentationNode", "vtkMRMLModelNode", "vtkMRMLScalarVolumeNode", "vtkMRMLMarkupsNode")
    if node is None or not hasattr(node, "IsA") or not any(node.IsA(c) for c in classes):
        raise InputError(f"node: expected a segmentation, model, volume or markups node, got {_class_name(node)}")
    if transformNode is None or not hasattr(transformNode, "IsA") or not transformNode.IsA("vtkMRMLTransformNode"):
        raise InputError(f"transformNode: expected a transform node, got {_class_name(transformNode)}")
    scene = scene if scene is not None else node.GetScene()
    if scene is None:
        raise InputError(f"scene: node '{node.GetName()}' is not in a scene and no scene was given")
    import slicer

    copy = scene.AddNewNodeByClass(node.GetClassName(), name or f"{node.GetName()} registered")
    try:
        copy.CopyContent(node, True)  # data and geometry only: no display/storage/transform references
        copy.CreateDefaultDisplayNodes()
        _copy_colour(node, copy)
        if copy.IsA("vtkMRMLSegmentationNode"):
            _pad_labelmap_layers(copy, transformNode)
        copy.SetAndObserveTransformNodeID(transformNode.GetID())
        if not slicer.vtkSlicerTransformLogic.hardenTransform(copy):
            raise InputError(f"transformNode: could not harden '{transformNode.GetName()}' on '{copy.GetName()}'")
    except Exception:
        scene.RemoveNode(copy)
        raise
    return copy


def _pad_labelmap_layers(segmentationNode, transformNode) -> None:
    """Pad each binary labelmap layer by the transform's largest displacement over it.

    Hardening a non-linear transform on a segmentation resamples its labelmaps within (about) their own
    extent, which is cropped to the segments: whatever moves out of it would be lost.
    """
    import slicer
    import vtk

    segmentation = segmentationNode.GetSegmentation()
    to_parent = transformNode.GetTransformToParent()
    for index in range(segmentation.GetNumberOfLayers()):
        layer = segmentation.GetLayerDataObject(index)
        if not isinstance(layer, slicer.vtkOrientedImageData) or layer.GetNumberOfPoints() == 0:
            continue
        bounds = np.zeros(6)
        layer.GetBounds(bounds)  # RAS (world) bounds of the oriented image
        lattice = np.stack(np.meshgrid(*[np.linspace(bounds[2 * a], bounds[2 * a + 1], 5) for a in range(3)],
                                       indexing="ij"), axis=-1).reshape(-1, 3)
        shift = max(np.linalg.norm(np.asarray(to_parent.TransformPoint(p.tolist())) - p) for p in lattice)
        matrix = vtk.vtkMatrix4x4()
        layer.GetImageToWorldMatrix(matrix)
        spacing = np.linalg.norm(slicer.util.arrayFromVTKMatrix(matrix)[:3, :3], axis=0)
        pad = [int(np.ceil(shift / s)) + 2 for s in spacing]
        extent = list(layer.GetExtent())
        container = slicer.vtkOrientedImageData()
        container.SetExtent(*[e - pad[j // 2] if j % 2 == 0 else e + pad[j // 2] for j, e in enumerate(extent)])
        container.SetImageToWorldMatrix(matrix)
        padded = slicer.vtkOrientedImageData()
        if slicer.vtkOrientedImageDataResample.PadImageToContainImage(layer, container, padded):
            layer.DeepCopy(padded)


def _copy_colour(node, copy) -> None:
    source, target = node.GetDisplayNode(), copy.GetDisplayNode()
    if source is not None and target is not None and hasattr(source, "GetColor") and not node.IsA("vtkMRMLVolumeNode"):
        target.SetColor(source.GetColor())
        target.SetOpacity(source.GetOpacity())
    if source is not None and target is not None and node.IsA("vtkMRMLVolumeNode") and source.GetColorNodeID():
        target.SetAndObserveColorNodeID(source.GetColorNodeID())

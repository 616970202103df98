"""Input and output kinds of the child-process runner (:mod:`.runner`): nodes ↔ files.

An *exporter* writes one :class:`~.runner.NodeInput` into the run's temporary folder and returns
``(path, metadata)``; an *importer* turns one output file into a node once the child succeeded. New kinds
(e.g. RGB histology slides, markups with names) are added with :func:`register_exporter` /
:func:`register_importer`; see :mod:`.runner` for the kinds shipped here. Files are LPS (ITK); nodes RAS.
"""

from __future__ import annotations

from typing import Callable, Dict

from ..errors import InputError


def entry_key(entry) -> str:
    """An input's or output's key: ``entry.key``, else its option without dashes
    (``--fixed-mask`` → ``fixed_mask``)."""
    return entry.key or entry.option.lstrip("-").replace("-", "_")


def _export_volume(entry, folder, context):
    from ..io import write_image
    from .volumes import image_from_volume_node, slice_position_lps

    image = image_from_volume_node(entry.value, name=entry_key(entry))
    path = folder / f"{entry_key(entry)}.nrrd"
    write_image(image, path)
    z = slice_position_lps(entry.value) if image.GetDimension() == 2 else 0.0
    return path, {"image": image, "slice_z": z, "node": entry.value}


def _export_color_volume(entry, folder, context):
    """A scalar or multi-component (RGB) volume node → ``.nrrd`` (vector image for several components)."""
    from ..io import write_image
    from .volumes import slice_position_lps, vector_image_from_volume_node

    image = vector_image_from_volume_node(entry.value, name=entry_key(entry))
    path = folder / f"{entry_key(entry)}.nrrd"
    write_image(image, path)
    z = slice_position_lps(entry.value) if image.GetDimension() == 2 else 0.0
    return path, {"image": image, "slice_z": z, "node": entry.value}


def _export_mask(entry, folder, context):
    from ..io import write_image
    from .masks import mask_from_node

    reference = context.get(entry.reference, {}).get("image")
    if reference is None:
        raise InputError(f"{entry.option}: a mask needs the input '{entry.reference}' exported before it")
    path = folder / f"{entry_key(entry)}.nrrd"
    write_image(mask_from_node(entry.value, reference, name=entry_key(entry)), path)
    return path, {"node": entry.value}


def _export_labels(entry, folder, context):
    import SimpleITK as sitk

    from ..io import write_image, write_points
    from .points import registration_input_from_node

    data = registration_input_from_node(entry.value, name=entry_key(entry), **entry.params)
    if isinstance(data, sitk.Image):
        path = folder / f"{entry_key(entry)}.nrrd"
        write_image(data, path)
    else:
        path = folder / f"{entry_key(entry)}.csv"
        write_points(data, path)
    return path, {"data": data, "node": entry.value}


def _export_transform(entry, folder, context):
    from .transforms import save_transform_node

    path = folder / f"{entry_key(entry)}.h5"
    save_transform_node(entry.value, path)
    return path, {"node": entry.value}


def _export_points(entry, folder, context):
    from ..io import write_points
    from .points import points_from_markups_node

    path = folder / f"{entry_key(entry)}.csv"
    write_points(points_from_markups_node(entry.value, name=entry_key(entry), **entry.params), path)
    return path, {"node": entry.value}


def _export_matrix(entry, folder, context):
    import numpy as np

    path = folder / f"{entry_key(entry)}.csv"
    np.savetxt(path, np.asarray(entry.value, dtype=float), delimiter=",")
    return path, {}


EXPORTERS: Dict[str, Callable] = {"volume": _export_volume, "color_volume": _export_color_volume,
                                  "mask": _export_mask, "labels": _export_labels,
                                  "transform": _export_transform, "points": _export_points,
                                  "matrix": _export_matrix}
OUTPUT_SUFFIXES: Dict[str, str] = {"transform": ".h5", "volume": ".nrrd", "labelmap": ".nrrd", "points": ".csv"}


def _slice_z(outcome_inputs, key) -> float:
    return float(outcome_inputs.get(key, {}).get("slice_z", 0.0)) if key else 0.0


def _import_transform(entry, path, outcome):
    from .transforms import set_registration_references, transform_node_from_result

    fixed_key, moving_key = (tuple(entry.references) + (None, None))[:2]
    node = transform_node_from_result(
        outcome.result, outcome.scene, node=entry.node,
        name=outcome.scene.GenerateUniqueName(entry.name or "Registration transform"),
        fixed_slice_z=_slice_z(outcome.inputs, fixed_key), moving_slice_z=_slice_z(outcome.inputs, moving_key),
    )
    if fixed_key and moving_key:
        fixed, moving = (first_node(outcome.inputs[k]["node"]) for k in (fixed_key, moving_key))
        set_registration_references(node, fixed, moving)
    return node


def _import_volume(entry, path, outcome, labelmap=False):
    from ..io import read_image
    from .volumes import volume_node_from_image

    image = read_image(path, entry_key(entry), allow_constant=True).image
    name = outcome.scene.GenerateUniqueName(entry.name or entry_key(entry))
    return volume_node_from_image(image, outcome.scene, name, labelmap=labelmap, node=entry.node,
                                  slice_z=_slice_z(outcome.inputs, entry.reference))


def _import_points(entry, path, outcome):
    import numpy as np

    from ..geometry import LPS_TO_RAS
    from ..io import read_points

    points = read_points(path, entry_key(entry))
    node = entry.node
    if node is None:
        node = outcome.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode",
                                               outcome.scene.GenerateUniqueName(entry.name or entry_key(entry)))
    ras = np.asarray(points.points, dtype=float) * np.diag(LPS_TO_RAS)[:3]
    node.RemoveAllControlPoints()
    for p in ras:
        node.AddControlPoint(float(p[0]), float(p[1]), float(p[2]))
    return node


IMPORTERS: Dict[str, Callable] = {"transform": _import_transform, "volume": _import_volume,
                                  "labelmap": lambda e, p, o: _import_volume(e, p, o, labelmap=True),
                                  "points": _import_points}


def register_exporter(kind: str, function: Callable) -> None:
    """Add an input kind: ``function(entry, folder, context) -> (path, metadata)``; ``context`` maps earlier
    inputs' keys to their metadata (``metadata["node"]`` is the input node, ``"image"`` its image)."""
    EXPORTERS[kind] = function


def register_importer(kind: str, function: Callable, suffix: str) -> None:
    """Add an output kind: ``function(entry, path, outcome) -> node``, written by the child as ``*suffix``."""
    IMPORTERS[kind] = function
    OUTPUT_SUFFIXES[kind] = suffix


def first_node(nodes):
    """The node itself, or the first of a list of nodes."""
    return nodes[0] if isinstance(nodes, (list, tuple)) else nodes

"""Node logic of the HistologyRegistration module: what a child-process run of ``registration-suite histology``
reads and writes (see :mod:`.runner`). Qt-free; ``slicer`` is imported lazily.

Direction: the CLI writes the 2D fixed → moving displacement field (LPS mm, the slides' header geometry); the
runner imports it as a single-slice grid transform node (moving → fixed as Slicer's ToParent), so a moving
slide placed under it lines up with the fixed slide in the slice views. Fixed markups are mapped into the
moving slide (fixed → moving) by the child and come back as a new point list.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError

OUTPUT_NAME = "HistologyRegistration transform"
_VECTOR_VOLUME_CLASS = "vtkMRMLVectorVolumeNode"


def run_spec(fixedVolumeNode, movingVolumeNode, *, outputTransformNode=None, fixedPointsNode=None,
             outputPointsNode=None, outputVolumeNode=None, placeMovingUnderTransform: bool = False,
             options: Sequence[str] = ()):
    """Declare a run of ``registration-suite histology`` on two slide volume nodes (RGB vector or scalar volumes
    with one slice).

    Args:
        outputTransformNode: grid transform node to fill (``None``: a new one), ``outcome.nodes["transform"]``.
        fixedPointsNode: optional markups on the fixed slide, mapped into the moving slide as
            ``outcome.nodes["points"]`` (``outputPointsNode`` or a new point list).
        outputVolumeNode: optional vector volume node for the moving slide warped onto the fixed one (RGB kept).
        options: further CLI options (``--mirror``, ``--io-steps``, ...).
    """
    from .runner import NodeInput, NodeOutput, RunSpec

    for node, name in ((fixedVolumeNode, "fixed"), (movingVolumeNode, "moving")):
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
            raise InputError(f"{name}: expected a volume node (RGB slide or scalar image), got {node!r}")
    if fixedVolumeNode is movingVolumeNode:
        raise InputError("fixed, moving: expected two different volume nodes, got the same node twice")
    register_color_volume_importer()
    outputs = [NodeOutput("--output", "transform", node=outputTransformNode, key="transform", name=OUTPUT_NAME,
                          references=("fixed", "moving"))]
    if fixedPointsNode is not None:
        outputs.append(NodeOutput("--output-points", "points", node=outputPointsNode, key="points",
                                  name=f"{fixedPointsNode.GetName()} in moving"))
    if outputVolumeNode is not None:
        outputs.append(NodeOutput("--output-resampled", "color_volume", node=outputVolumeNode, key="resampled",
                                  reference="fixed", suffix=".nrrd"))

    def finish(outcome, rollback):
        node = outcome.nodes["transform"]
        outcome.result.diagnostics["output_transform_node_id"] = node.GetID()
        if placeMovingUnderTransform:
            movingVolumeNode.SetAndObserveTransformNodeID(node.GetID())

    return RunSpec(
        command="histology",
        inputs=[NodeInput("--fixed", fixedVolumeNode, "color_volume", key="fixed"),
                NodeInput("--moving", movingVolumeNode, "color_volume", key="moving"),
                NodeInput("--fixed-points", fixedPointsNode, "points", key="fixed_points")],
        options=list(options), outputs=outputs, finish=finish,
        touches=[movingVolumeNode] if placeMovingUnderTransform else [],
    )


def register_color_volume_importer() -> None:
    """Add the ``"color_volume"`` output kind to the runner (an RGB image → a vector volume node)."""
    from .runner_io import IMPORTERS, register_importer

    if "color_volume" not in IMPORTERS:
        register_importer("color_volume", _import_color_volume, ".nrrd")


def _import_color_volume(entry, path, outcome):
    import SimpleITK as sitk

    from .runner_io import entry_key

    image = sitk.ReadImage(str(path))
    name = outcome.scene.GenerateUniqueName(entry.name or entry_key(entry))
    slice_z = float(outcome.inputs.get(entry.reference, {}).get("slice_z", 0.0)) if entry.reference else 0.0
    return vector_volume_node_from_image(image, outcome.scene, name, node=entry.node, slice_z=slice_z)


def vector_volume_node_from_image(image, scene, name: str = "Volume", *, node=None, slice_z: float = 0.0):
    """Create (or update) a vector volume node from a 2D/3D SimpleITK image with several components (LPS)."""
    import slicer

    from ..geometry import LPS_TO_RAS
    from .volumes import index_to_lps_3d

    if image.GetDimension() not in (2, 3):
        raise InputError(f"image: expected a 2D or 3D image, got {image.GetDimension()}D")
    voxels = sitk_array(image)
    if node is None:
        node = scene.AddNewNodeByClass(_VECTOR_VOLUME_CLASS, name)
    elif not node.IsA(_VECTOR_VOLUME_CLASS):
        raise InputError(f"node: expected a vector volume node, got {node.GetClassName()}")
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(LPS_TO_RAS @ index_to_lps_3d(image, slice_z)))
    slicer.util.updateVolumeFromArray(node, voxels)
    if node.GetScene() is not None and node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def sitk_array(image) -> np.ndarray:
    """``(K, J, I, C)`` voxels of a 2D/3D vector image (2D images get K = 1)."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() == 1:
        arr = arr[..., None]
    return arr[None] if image.GetDimension() == 2 else arr

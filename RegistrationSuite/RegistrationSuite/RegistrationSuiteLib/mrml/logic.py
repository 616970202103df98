"""Qt-free logics: registration methods applied to MRML nodes.

:class:`RegistrationLogicBase` does the node handling every method shares: volume and mask nodes → images,
then (only after the method succeeded) the output transform node, the fixed/moving registration
references, and optionally a resampled volume. A method subclass only implements :meth:`run_method`.

Guarantees:

- input nodes (volumes, masks) are never modified: their voxels are copied, parent transforms ignored
  (see :mod:`.volumes`), and the moving volume is *not* placed under the output transform (the module's
  widget decides that);
- on error or cancellation no node is added to the scene and a passed output node is left unchanged,
  because nodes are created or updated only once the method has returned a result.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional

import SimpleITK as sitk

from ..errors import InputError
from ..result import RegistrationResult
from .masks import mask_from_node
from .rollback import rollback_on_error
from .transforms import (
    DEFAULT_TRANSFORM_NAME,
    set_registration_references,
    sitk_transform_from_node,
    transform_node_from_result,
)
from .volumes import image_from_volume_node, slice_position_lps, volume_node_from_image


@dataclass
class RegistrationInputs:
    """Images taken from the input nodes (LPS; 2D for single axial slices) and the slices' LPS z."""

    fixed_image: sitk.Image
    moving_image: sitk.Image
    fixed_mask: Optional[sitk.Image] = None
    moving_mask: Optional[sitk.Image] = None
    fixed_slice_z: float = 0.0
    moving_slice_z: float = 0.0

    @property
    def dimension(self) -> int:
        return self.fixed_image.GetDimension()


class RegistrationLogicBase:
    """Node handling shared by the registration logics; subclasses implement :meth:`run_method`.

    Attributes:
        output_name: name of a newly created output transform node.
        deformable: whether the method returns displacement fields (then a linear transform node cannot be
            the output).
    """

    output_name = DEFAULT_TRANSFORM_NAME
    deformable = False

    def run_method(self, inputs: RegistrationInputs, config, progress, cancel) -> RegistrationResult:
        """Run the core method on images; must not touch MRML."""
        raise NotImplementedError

    def register(
        self,
        fixedVolumeNode,
        movingVolumeNode,
        config=None,
        outputTransformNode=None,
        fixedMaskNode=None,
        movingMaskNode=None,
        progress=None,
        cancel=None,
        *,
        finish=None,
    ) -> RegistrationResult:
        """Register the moving volume to the fixed one and write the output transform node.

        Args:
            fixedVolumeNode, movingVolumeNode: scalar or labelmap volume nodes (never modified).
            config: the method's config dataclass (``None``: the method's defaults).
            outputTransformNode: transform node to update; ``None`` creates one in the fixed volume's scene.
            fixedMaskNode, movingMaskNode: optional labelmap volume or segmentation nodes (any segment).
            progress: ``progress(fraction, message)`` callback.
            cancel: callable returning ``True`` to stop (raises ``RegistrationCancelled``).
            finish: optional ``finish(result, transformNode, rollback)`` writing further outputs; if it
                raises, the transform node is restored (or removed) too (:mod:`.rollback`).

        Returns:
            The method's :class:`RegistrationResult`; its output node is in
            ``result.diagnostics["output_transform_node_id"]``.
        """
        scene = self._check_nodes(fixedVolumeNode, movingVolumeNode, outputTransformNode)
        inputs = self.prepare_inputs(fixedVolumeNode, movingVolumeNode, fixedMaskNode, movingMaskNode)
        result = self.run_method(inputs, config, progress, cancel)
        self._note_parent_transforms(result, fixedVolumeNode, movingVolumeNode, outputTransformNode)
        with rollback_on_error(scene, [outputTransformNode]) as rollback:
            node = self.apply_result(result, inputs, scene, fixedVolumeNode, movingVolumeNode, outputTransformNode)
            if outputTransformNode is None:
                rollback.created(node)
            if finish is not None:
                finish(result, node, rollback)
        result.diagnostics["output_transform_node_id"] = node.GetID()
        return result

    def _check_nodes(self, fixedVolumeNode, movingVolumeNode, outputTransformNode):
        for label, node in (("fixedVolumeNode", fixedVolumeNode), ("movingVolumeNode", movingVolumeNode)):
            if node is None or not hasattr(node, "IsA") or not node.IsA("vtkMRMLScalarVolumeNode"):
                raise InputError(f"{label}: expected a scalar volume node, got {_describe(node)}")
        scene = fixedVolumeNode.GetScene()
        if scene is None:
            raise InputError("fixedVolumeNode: the node is not in a scene")
        self._check_output_node(outputTransformNode)
        return scene

    def _check_output_node(self, outputTransformNode) -> None:
        """A passed output must be a transform node, and not a linear one for deformable methods."""
        if outputTransformNode is not None:
            if not hasattr(outputTransformNode, "IsA") or not outputTransformNode.IsA("vtkMRMLTransformNode"):
                raise InputError(
                    f"outputTransformNode: expected a transform node, got {_describe(outputTransformNode)}"
                )
            if self.deformable and outputTransformNode.IsA("vtkMRMLLinearTransformNode"):
                raise InputError(
                    "outputTransformNode: this method gives a deformable transform, got a linear transform node"
                )

    def prepare_inputs(
        self, fixedVolumeNode, movingVolumeNode, fixedMaskNode=None, movingMaskNode=None
    ) -> RegistrationInputs:
        """Copy the nodes' voxels into LPS images and masks (masks resampled onto their image's grid)."""
        fixed = image_from_volume_node(fixedVolumeNode, name="fixedVolumeNode")
        moving = image_from_volume_node(movingVolumeNode, name="movingVolumeNode")
        if fixed.GetDimension() != moving.GetDimension():
            raise InputError(
                f"movingVolumeNode: fixed is {fixed.GetDimension()}D and moving {moving.GetDimension()}D; "
                "register a single-slice volume only to another single-slice volume"
            )
        fixed_mask = None if fixedMaskNode is None else mask_from_node(fixedMaskNode, fixed, name="fixedMaskNode")
        moving_mask = None if movingMaskNode is None else mask_from_node(movingMaskNode, moving, name="movingMaskNode")
        return RegistrationInputs(
            fixed_image=fixed,
            moving_image=moving,
            fixed_mask=fixed_mask,
            moving_mask=moving_mask,
            fixed_slice_z=slice_position_lps(fixedVolumeNode) if fixed.GetDimension() == 2 else 0.0,
            moving_slice_z=slice_position_lps(movingVolumeNode) if moving.GetDimension() == 2 else 0.0,
        )

    def apply_result(self, result, inputs, scene, fixedVolumeNode, movingVolumeNode, outputTransformNode=None):
        """Create or update the output transform node and set its registration references."""
        node = transform_node_from_result(
            result,
            scene,
            node=outputTransformNode,
            name=scene.GenerateUniqueName(self.output_name) if outputTransformNode is None else self.output_name,
            fixed_slice_z=inputs.fixed_slice_z,
            moving_slice_z=inputs.moving_slice_z,
        )
        set_registration_references(node, fixedVolumeNode, movingVolumeNode)
        return node

    @staticmethod
    def _note_parent_transforms(result, fixedVolumeNode, movingVolumeNode, outputTransformNode) -> None:
        """Tell the user when a parent transform was ignored (the moving node under the output is expected).

        The fixed/moving arguments may also be lists of nodes (e.g. one model node per organ).
        """
        output_id = outputTransformNode.GetID() if outputTransformNode is not None else None
        for role, nodes in (("fixed", fixedVolumeNode), ("moving", movingVolumeNode)):
            for node in nodes if isinstance(nodes, (list, tuple)) else [nodes]:
                parent = node.GetParentTransformNode()
                if parent is not None and not (role == "moving" and parent.GetID() == output_id):
                    kind = _node_kind(node)
                    result.warnings.append(
                        f"{role} {kind} '{node.GetName()}' is under transform '{parent.GetName()}', which the "
                        f"registration ignored (it used the {kind}'s own coordinates)"
                    )

    def resample_volume(self, movingNode, fixedNode, transformNode, outputNode=None, **kwargs):
        """See :func:`resample_volume`."""
        return resample_volume(movingNode, fixedNode, transformNode, outputNode, **kwargs)


class GlobalRigidSearchLogic(RegistrationLogicBase):
    """Global rigid search (:func:`RegistrationSuiteLib.methods.global_rigid.register_global_rigid`) on nodes.

    Usable without the widget::

        logic = GlobalRigidSearchLogic()
        result = logic.register(fixedNode, movingNode, GlobalRigidConfig(seed=0))
        transformNode = slicer.mrmlScene.GetNodeByID(result.diagnostics["output_transform_node_id"])
    """

    output_name = "GlobalRigidSearch transform"
    method_module = "RegistrationSuiteLib.methods.global_rigid"

    def default_config(self):
        """``GlobalRigidConfig()`` (its module imports no torch)."""
        return importlib.import_module(self.method_module + ".config").GlobalRigidConfig()

    def register(self, fixedVolumeNode, movingVolumeNode, config=None, outputTransformNode=None,
                 fixedMaskNode=None, movingMaskNode=None, progress=None, cancel=None, *,
                 outputVolumeNode=None, placeMovingUnderTransform: bool = False) -> RegistrationResult:
        """In-process run (see :meth:`RegistrationLogicBase.register`), plus ``outputVolumeNode`` (the moving
        volume resampled on the fixed grid) and ``placeMovingUnderTransform``. If any output fails, every
        passed node is restored and created nodes are removed."""
        def finish(result, transformNode, rollback):
            if outputVolumeNode is not None:
                rollback.add(outputVolumeNode)
                self.resample_volume(movingVolumeNode, fixedVolumeNode, transformNode, outputVolumeNode)
                result.diagnostics["output_volume_node_id"] = outputVolumeNode.GetID()
            if placeMovingUnderTransform:
                rollback.add(movingVolumeNode)
                movingVolumeNode.SetAndObserveTransformNodeID(transformNode.GetID())

        return super().register(fixedVolumeNode, movingVolumeNode, config, outputTransformNode, fixedMaskNode,
                                movingMaskNode, progress, cancel, finish=finish)

    def run_spec(self, fixedVolumeNode, movingVolumeNode, config=None, outputTransformNode=None,
                 fixedMaskNode=None, movingMaskNode=None, outputVolumeNode=None,
                 placeMovingUnderTransform: bool = False):
        """Declare a child-process run of ``registration-suite rigid-search`` (see :mod:`.runner`).

        Same arguments as :meth:`register`, plus ``outputVolumeNode`` (receives the moving volume resampled on
        the fixed grid) and ``placeMovingUnderTransform``. Returns a :class:`~.runner.RunSpec`; the output
        transform is ``outcome.nodes["transform"]``.
        """
        from .runner import NodeInput, NodeOutput, RunSpec

        self._check_nodes(fixedVolumeNode, movingVolumeNode, outputTransformNode)
        config = config if config is not None else self.default_config()
        check_cli_expressible(config, ("min_overlap", "seed", "device", "num_rotations"), "rigid-search")
        options = ["--min-overlap", repr(float(config.min_overlap)), "--seed", str(int(config.seed)),
                   "--device", str(config.device), "--rotations", ",".join(str(int(n)) for n in config.num_rotations)]
        outputs = [NodeOutput("--output", "transform", node=outputTransformNode, key="transform",
                              name=self.output_name, references=("fixed", "moving"))]
        if outputVolumeNode is not None:
            outputs.append(NodeOutput("--output-resampled", "volume", node=outputVolumeNode, key="resampled",
                                      reference="fixed"))

        def finish(outcome, rollback):
            node = outcome.nodes["transform"]
            self._note_parent_transforms(outcome.result, fixedVolumeNode, movingVolumeNode, outputTransformNode)
            outcome.result.diagnostics["output_transform_node_id"] = node.GetID()
            if placeMovingUnderTransform:
                movingVolumeNode.SetAndObserveTransformNodeID(node.GetID())

        return RunSpec(
            command="rigid-search",
            inputs=[NodeInput("--fixed", fixedVolumeNode, "volume", key="fixed"),
                    NodeInput("--moving", movingVolumeNode, "volume", key="moving"),
                    NodeInput("--fixed-mask", fixedMaskNode, "mask", reference="fixed"),
                    NodeInput("--moving-mask", movingMaskNode, "mask", reference="moving")],
            options=options, outputs=outputs, finish=finish,
            touches=[movingVolumeNode] if placeMovingUnderTransform else [],
        )

    def run_method(self, inputs: RegistrationInputs, config, progress, cancel) -> RegistrationResult:
        module = importlib.import_module(self.method_module)
        return module.register_global_rigid(
            inputs.fixed_image,
            inputs.moving_image,
            config if config is not None else self.default_config(),
            fixed_mask=inputs.fixed_mask,
            moving_mask=inputs.moving_mask,
            progress=progress,
            cancel=cancel,
        )


def resample_volume(
    movingNode,
    fixedNode,
    transformNode,
    outputNode=None,
    *,
    name: Optional[str] = None,
    interpolation: Optional[str] = None,
    default_value: float = 0.0,
):
    """Resample the moving volume onto the fixed volume's grid through a transform node (SimpleITK).

    Args:
        movingNode, fixedNode: volume nodes (never modified); the output has the fixed grid.
        transformNode: registration transform (moving → fixed as ToParent), or ``None`` for identity.
        outputNode: volume node to overwrite; ``None`` adds one named ``name`` (default
            "<moving> resampled") to the fixed volume's scene.
        interpolation: ``"linear"`` or ``"nearest"``; default nearest for labelmaps, linear otherwise.
        default_value: value outside the moving volume.

    Returns:
        The output volume node (a labelmap node when the moving node is one and no output is given).
    """
    labelmap = movingNode is not None and movingNode.IsA("vtkMRMLLabelMapVolumeNode")
    interpolation = interpolation or ("nearest" if labelmap else "linear")
    interpolators = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}
    if interpolation not in interpolators:
        raise InputError(f"interpolation: expected one of {sorted(interpolators)}, got {interpolation!r}")
    moving = image_from_volume_node(movingNode, squeeze_single_slice=False, name="movingNode")
    fixed = image_from_volume_node(fixedNode, squeeze_single_slice=False, name="fixedNode")
    transform = sitk.Transform() if transformNode is None else sitk_transform_from_node(transformNode)
    resampled = sitk.Resample(
        moving, fixed, transform, interpolators[interpolation], default_value, moving.GetPixelID()
    )
    if outputNode is None and fixedNode.GetScene() is None:
        raise InputError("fixedNode: the node is not in a scene")
    return volume_node_from_image(
        resampled,
        fixedNode.GetScene(),
        name or f"{movingNode.GetName()} resampled",
        labelmap=labelmap,
        node=outputNode,
    )


def check_cli_expressible(config, fields, command: str) -> None:
    """Raise ``InputError`` when ``config`` differs from its defaults outside ``fields``: the child-process
    run passes only these to ``registration-suite <command>``, and must not silently drop the others."""
    import dataclasses

    import numpy as np

    default = type(config)()

    def differs(a, b) -> bool:
        try:
            return bool(a != b)
        except ValueError:  # arrays
            return not np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object))

    changed = [f.name for f in dataclasses.fields(config)
               if f.name not in fields and differs(getattr(config, f.name), getattr(default, f.name))]
    if changed:
        raise InputError(f"config: {command} in a child process takes only {', '.join(fields)}; "
                         f"got changed {', '.join(changed)} (run in-process with register() instead)")


def _node_kind(node) -> str:
    """The kind of node for messages: "volume", "segmentation", "model", "markups" or "node"."""
    for class_name, kind in (("vtkMRMLVolumeNode", "volume"), ("vtkMRMLSegmentationNode", "segmentation"),
                             ("vtkMRMLModelNode", "model"), ("vtkMRMLMarkupsNode", "markups")):
        if node.IsA(class_name):
            return kind
    return "node"


def _describe(node) -> str:
    return node.GetClassName() if hasattr(node, "GetClassName") else type(node).__name__

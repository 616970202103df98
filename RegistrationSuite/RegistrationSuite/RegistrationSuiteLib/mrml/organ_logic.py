"""Qt-free logic for multi-organ point cloud registration (MO-BCPD) on MRML nodes.

Inputs are organs given as segmentation nodes, labelmap volume nodes or lists of model nodes (one per
organ); they become label images (labelmaps, labelmap-based segmentations: sampled by the core exactly as label
files on the command line) or labelled LPS point clouds (closed surfaces, models; :mod:`.points`), the core
(:func:`RegistrationSuiteLib.methods.organ_point_cloud.register_organ_point_cloud`) registers them, and the
displacement field (LPS, fixed → moving) becomes a grid transform node stored as FromParent, with the
fixed/moving registration references. Optionally a hardened copy of the moving segmentation/models is added
in the fixed space.

The node guarantees of :class:`~.logic.RegistrationLogicBase` hold: inputs are never modified; on error or
cancellation no node is added (nodes are only created once the core has returned a result; a failing write
restores passed nodes and removes created ones: :mod:`.rollback`). :meth:`OrganPointCloudLogic.run_spec`
declares the same run for a child process (:mod:`.runner`, what the Slicer module's Apply does).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.points import LabeledPoints
from ..methods.organ_point_cloud.config import OrganPointCloudConfig  # numpy only: no torch
from ..result import RegistrationResult
from .logic import RegistrationLogicBase, _describe
from .rollback import rollback_on_error
from .points import MODEL_LABEL_ARRAY, apply_grid_transform_copy, registration_input_from_node, segment_labels
from .volumes import image_from_volume_node

_INPUT_CLASSES = ("vtkMRMLSegmentationNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLModelNode")
#: ``--sampling`` values: ``OrganPointCloudConfig.spread_sampling`` True / False.
SAMPLING_CHOICES = ("spread", "random")


def sampling_name(spread_sampling: bool) -> str:
    """The ``--sampling`` value of ``OrganPointCloudConfig.spread_sampling``."""
    return SAMPLING_CHOICES[0] if spread_sampling else SAMPLING_CHOICES[1]


#: The configuration's default sampling (the module's default; one source with the CLI's).
DEFAULT_SAMPLING = sampling_name(OrganPointCloudConfig.spread_sampling)
#: The configuration's default for restricting label images to their common field of view (``--common-fov``;
#: the module's default).
DEFAULT_COMMON_FOV = OrganPointCloudConfig.common_fov


def common_fov_option(common_fov: bool) -> str:
    """The ``--common-fov`` value of ``OrganPointCloudConfig.common_fov``: ``"on"`` or ``"off"``."""
    return "on" if common_fov else "off"


@dataclass
class OrganRow:
    """One row of the organ table: which organ to register and its own Λ and B (``None``: the config's).

    Attributes:
        label: the organ's integer label (the same in the fixed and the moving input).
        name: display name (unused by the registration).
        lambda_mm: Λ, expected deformation magnitude of this organ (mm).
        beta_mm: B, motion-coherence bandwidth of this organ (mm).
        include: register this organ (excluded organs' points are not used).
    """

    label: int
    name: str = ""
    lambda_mm: Optional[float] = None
    beta_mm: Optional[float] = None
    include: bool = True


@dataclass
class OrganPointInputs:
    """The core's inputs taken from the nodes (label images or labelled point clouds, LPS mm) and the config.

    ``fixed_slice_z``/``moving_slice_z`` are always 0 (3D only); they let the base class write the output.
    """

    fixed: Union[LabeledPoints, sitk.Image]
    moving: Union[LabeledPoints, sitk.Image]
    config: object = None
    fixed_slice_z: float = 0.0
    moving_slice_z: float = 0.0


def organ_row(row, index: int = 0) -> OrganRow:
    """An :class:`OrganRow` from an ``OrganRow``, a mapping with its field names, or a tuple
    ``(label, name, lambda_mm, beta_mm, include)`` (trailing items optional). Empty strings mean ``None``."""
    if isinstance(row, OrganRow):
        return row
    fields = [f.name for f in dataclasses.fields(OrganRow)]
    if isinstance(row, Mapping):
        unknown = set(row) - set(fields)
        if unknown:
            raise InputError(f"organs[{index}]: expected keys among {fields}, got unknown {sorted(unknown)}")
        values = dict(row)
    elif isinstance(row, (list, tuple)) and 1 <= len(row) <= len(fields):
        values = dict(zip(fields, row))
    else:
        raise InputError(f"organs[{index}]: expected an OrganRow, a dict or a (label, name, lambda_mm, beta_mm, "
                         f"include) tuple, got {row!r}")
    if "label" not in values:
        raise InputError(f"organs[{index}]: expected a 'label', got {row!r}")
    try:
        label = int(values["label"])
        if label != float(values["label"]):
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(f"organs[{index}]: expected an integer label, got {values['label']!r}") from None
    out = {"label": label, "name": str(values.get("name") or ""), "include": bool(values.get("include", True))}
    for key in ("lambda_mm", "beta_mm"):
        value = values.get(key)
        empty = value is None or (isinstance(value, str) and not value.strip())
        out[key] = None if empty else _positive(value, key, index)
    return OrganRow(**out)


def _positive(value, key: str, index: int) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (np.isfinite(number) and number > 0):
        raise InputError(f"organs[{index}].{key}: expected a positive number of mm, got {value!r}")
    return number


def config_with_organs(config, organs: Sequence) -> object:
    """A copy of ``config`` restricted to the included organs of the table, with per-label Λ and B.

    ``labels`` becomes the included labels (table order); ``lambda_mm``/``beta_mm`` per-label dicts (a row's
    empty value takes the config's value for that label); a coherence or label-transition matrix (given in
    the order of ``config.labels``) is restricted to the included labels, transition rows renormalised.
    """
    rows = [organ_row(r, i) for i, r in enumerate(organs)]
    labels = [r.label for r in rows if r.include]
    if not labels:
        raise InputError("organs: expected at least one included organ, got none")
    if len(set(labels)) != len(labels):
        raise InputError(f"organs: expected distinct labels, got {labels}")
    included = [r for r in rows if r.include]
    changes = {"labels": labels}
    if not isinstance(config.coherence, str):
        changes["coherence"] = _submatrix(config.coherence, config.labels, labels, "coherence")
    if config.label_transition is not None:
        transition = _submatrix(config.label_transition, config.labels, labels, "label_transition")
        sums = transition.sum(axis=1, keepdims=True)
        if np.any(sums <= 0):
            raise InputError("label_transition: an included organ has no probability left after excluding organs")
        changes["label_transition"] = transition / sums
    for key in ("lambda_mm", "beta_mm"):
        changes[key] = {r.label: getattr(r, key) if getattr(r, key) is not None
                        else _value_for(getattr(config, key), r.label, key) for r in included}
    return dataclasses.replace(config, **changes)


def _value_for(value, label: int, name: str) -> float:
    if not isinstance(value, Mapping):
        return float(value)
    table = {int(k): float(v) for k, v in value.items()}
    if label not in table:
        raise InputError(f"{name}: expected a value for organ {label} (in the table or the config), got none")
    return table[label]


def _submatrix(matrix, order, labels: list, name: str) -> np.ndarray:
    if order is None:
        raise InputError(f"{name}: a matrix needs config.labels to say which organ each row is, got labels=None")
    order = [int(v) for v in order]
    missing = [v for v in labels if v not in order]
    if missing:
        raise InputError(f"{name}: the matrix has no row for organs {missing} (its labels are {order})")
    index = [order.index(v) for v in labels]
    return np.asarray(matrix, dtype=float)[np.ix_(index, index)]


def parse_matrix(text: str) -> list:
    """A square matrix from text, rows separated by ``;`` (or new lines), values by ``,`` (or spaces):
    ``"1,0.5;0.5,1"`` → ``[[1.0, 0.5], [0.5, 1.0]]``. Raises ``ValueError`` otherwise."""
    rows = [r for r in str(text).replace("\n", ";").split(";") if r.strip()]
    try:
        matrix = [[float(v) for v in r.replace(" ", ",").split(",") if v.strip()] for r in rows]
    except ValueError:
        matrix = []
    if not matrix or any(len(r) != len(matrix) for r in matrix):
        raise ValueError(f"Custom matrix: expected a square matrix such as '1,0.5;0.5,1', got '{text}'")
    return matrix


def organ_names(nodes) -> dict:
    """``{label: name}`` of the organs of an input (segment names, colour names of a labelmap's labels, model
    names), for the GUI's organ table. A labelmap's voxels are read to find its labels."""
    if isinstance(nodes, (list, tuple)) or nodes.IsA("vtkMRMLModelNode"):
        from vtk.util import numpy_support

        out = {}
        for index, node in enumerate(nodes if isinstance(nodes, (list, tuple)) else [nodes]):
            poly = node.GetPolyData()
            array = None if poly is None else poly.GetPointData().GetArray(MODEL_LABEL_ARRAY)
            values = [index + 1] if array is None else np.unique(numpy_support.vtk_to_numpy(array)).tolist()
            for value in values:
                out.setdefault(int(value), node.GetName() if array is None else f"{node.GetName()} {value}")
        return out
    if nodes.IsA("vtkMRMLSegmentationNode"):
        return {e.label: e.name for e in segment_labels(nodes)}
    if nodes.IsA("vtkMRMLScalarVolumeNode"):
        image = image_from_volume_node(nodes, squeeze_single_slice=False, name="labelmap")
        display = nodes.GetDisplayNode()
        colors = display.GetColorNode() if display is not None else None
        values = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(image)) if v != 0]
        return {v: (colors.GetColorName(v) if colors is not None and colors.GetColorName(v) else f"Label {v}")
                for v in values}
    raise InputError(f"nodes: expected a segmentation, labelmap volume or model node(s), got {nodes.GetClassName()}")


def organ_table_rows(fixedNode, movingNode, previous: Sequence = ()) -> list:
    """Rows of an organ table (GUI): every organ label of either input, sorted, as dicts ``{label, name,
    lambda_mm, beta_mm, include, inBoth}``; Λ, B and ``include`` are kept from ``previous`` rows of the same
    label. Only organs with ``inBoth`` can be registered."""
    fixed = organ_names(fixedNode) if fixedNode else {}
    moving = organ_names(movingNode) if movingNode else {}
    earlier = {int(r["label"]): r for r in previous}
    rows = []
    for label in sorted(set(fixed) | set(moving)):
        old = earlier.get(label, {})
        rows.append({"label": label, "name": fixed.get(label) or moving.get(label, ""),
                     "lambda_mm": old.get("lambda_mm"), "beta_mm": old.get("beta_mm"),
                     "include": bool(old.get("include", True)), "inBoth": label in fixed and label in moving})
    return rows


def organ_rows_from_table(rows: Sequence) -> Optional[list]:
    """:class:`OrganRow` s from :func:`organ_table_rows`-style dicts, skipping organs not in both inputs;
    ``None`` for an empty table (then every common label is registered with the defaults)."""
    usable = [r for r in rows if r.get("inBoth", True)]
    if not usable:
        return None
    keys = ("label", "name", "lambda_mm", "beta_mm", "include")
    return [organ_row({k: r[k] for k in keys if k in r}, i) for i, r in enumerate(usable)]


class OrganPointCloudLogic(RegistrationLogicBase):
    """MO-BCPD on segmentation / labelmap / model nodes; usable without a widget::

        logic = OrganPointCloudLogic()
        result = logic.register(fixedSegmentation, movingSegmentation, OrganPointCloudConfig(seed=0),
                                organs=[(1, "liver", 10, 30, True), (2, "kidney", 5, 20, True)],
                                transformedMovingCopy=True)
        transformNode = slicer.mrmlScene.GetNodeByID(result.diagnostics["output_transform_node_id"])
    """

    output_name = "OrganPointCloud transform"
    deformable = True
    method_module = "RegistrationSuiteLib.methods.organ_point_cloud"

    def default_config(self):
        """``OrganPointCloudConfig()`` (its module imports only numpy: no torch needed for defaults)."""
        return importlib.import_module(self.method_module + ".config").OrganPointCloudConfig()

    def resolve_config(self, config=None, organs=None):
        """The config actually run: the defaults when ``None``, restricted by the organ table when given."""
        config = config if config is not None else self.default_config()
        return config if organs is None else config_with_organs(config, organs)

    def register(
        self,
        fixedNode,
        movingNode,
        config=None,
        outputTransformNode=None,
        progress=None,
        cancel=None,
        organs=None,
        transformedMovingCopy: bool = False,
    ) -> RegistrationResult:
        """Register the moving organs to the fixed ones and write the output grid transform node.

        Args:
            fixedNode, movingNode: segmentation node, labelmap volume node, or a list of model nodes (one
                organ each, labels by position unless a ``label`` point array says otherwise); never modified.
            config: ``OrganPointCloudConfig`` (``None``: defaults); its ``points_per_organ`` and ``seed`` also
                drive the surface sampling of the nodes.
            outputTransformNode: grid (or general) transform node to update; ``None`` adds one.
            progress: ``progress(fraction, message)``; cancel: callable returning ``True`` to stop.
            organs: optional organ table rows (see :class:`OrganRow`, :func:`config_with_organs`).
            transformedMovingCopy: also add a hardened copy of the moving node(s) in the fixed space.

        Returns:
            The core's result; ``diagnostics["output_transform_node_id"]`` and, with a copy,
            ``diagnostics["transformed_moving_node_ids"]``.
        """
        scene = self._check_nodes(fixedNode, movingNode, outputTransformNode)
        inputs = self.prepare_inputs(fixedNode, movingNode, self.resolve_config(config, organs))
        result = self.run_method(inputs, inputs.config, progress, cancel)
        self.finish(result, inputs, scene, fixedNode, movingNode, outputTransformNode, transformedMovingCopy)
        return result

    def _check_nodes(self, fixedNode, movingNode, outputTransformNode):
        for label, node in (("fixedNode", fixedNode), ("movingNode", movingNode)):
            nodes = node if isinstance(node, (list, tuple)) else [node]
            if not nodes:
                raise InputError(f"{label}: expected a segmentation, labelmap volume or model nodes, got an empty list")
            for n in nodes:
                if n is None or not hasattr(n, "IsA") or not any(n.IsA(c) for c in _INPUT_CLASSES):
                    raise InputError(
                        f"{label}: expected a segmentation node, a labelmap volume node or model nodes, got "
                        f"{_describe(n)}"
                    )
                if n.GetScene() is None:
                    raise InputError(f"{label}: node '{n.GetName()}' is not in a scene")
        self._check_output_node(outputTransformNode)
        return _first(fixedNode).GetScene()

    def prepare_inputs(self, fixedNode, movingNode, config) -> OrganPointInputs:
        """Main thread: the nodes' organs as label images (labelmaps, labelmap-based segmentations: the core
        samples them as it does files) or labelled LPS points (surfaces, models); see
        :func:`~.points.registration_input_from_node`. Only ``config.labels`` are taken, when set."""
        kw = {"labels": config.labels, "points_per_organ": int(config.points_per_organ), "seed": int(config.seed)}
        fixed = registration_input_from_node(fixedNode, name="fixedNode", **kw)
        moving = registration_input_from_node(movingNode, name="movingNode", **kw)
        if isinstance(fixed, LabeledPoints) and isinstance(moving, LabeledPoints):
            # Cheap here, so fail before a worker thread starts (label images are checked by the core).
            if not set(fixed.unique_labels.tolist()) & set(moving.unique_labels.tolist()):
                raise InputError(f"movingNode: no organ label in common with the fixed organs (fixed has "
                                 f"{fixed.unique_labels.tolist()}, moving has {moving.unique_labels.tolist()})")
        return OrganPointInputs(fixed, moving, config)

    def run_method(self, inputs: OrganPointInputs, config, progress, cancel) -> RegistrationResult:
        """Any thread: the core registration; touches no MRML."""
        module = importlib.import_module(self.method_module)
        config = config if config is not None else inputs.config
        return module.register_organ_point_cloud(inputs.fixed, inputs.moving, config, progress=progress,
                                                 cancel=cancel)

    def finish(self, result, inputs, scene, fixedNode, movingNode, outputTransformNode=None,
               transformedMovingCopy: bool = False):
        """Main thread: output transform node (and the transformed copy). Returns ``(transformNode, copies)``;
        ``copies`` is ``None``, a node, or a list of nodes (for a list of moving models)."""
        if outputTransformNode is not None and outputTransformNode.GetScene() is None:
            outputTransformNode = None  # deleted meanwhile: create a new node rather than write into a dead one
        self._note_parent_transforms(result, fixedNode, movingNode, outputTransformNode)
        with rollback_on_error(scene, [outputTransformNode]) as rollback:
            node = self.apply_result(result, inputs, scene, fixedNode, movingNode, outputTransformNode)
            if outputTransformNode is None:
                rollback.created(node)
            copies = self.transformed_copy(result, movingNode, node, scene, rollback) if transformedMovingCopy else None
        result.diagnostics["output_transform_node_id"] = node.GetID()
        return node, copies

    @staticmethod
    def transformed_copy(result, movingNode, transformNode, scene, rollback):
        """A hardened copy of the moving node(s) in the fixed space; new nodes are recorded in ``rollback``."""
        copies = apply_grid_transform_copy(movingNode, transformNode, scene)
        created = copies if isinstance(copies, list) else [copies]
        for copy in created:
            rollback.created(copy)
        result.diagnostics["transformed_moving_node_ids"] = [c.GetID() for c in created]
        return copies

    def add_list_references(self, transformNode, fixedNode, movingNode) -> None:
        """Lists of model nodes: every node after the first is referenced too (fixed/moving roles)."""
        import slicer

        for role, nodes in ((slicer.vtkMRMLTransformNode.GetFixedNodeReferenceRole(), fixedNode),
                            (slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole(), movingNode)):
            if isinstance(nodes, (list, tuple)):
                for extra in nodes[1:]:
                    transformNode.AddNodeReferenceID(role, extra.GetID())

    def run_spec(self, fixedNode, movingNode, config=None, outputTransformNode=None, organs=None,
                 transformedMovingCopy: bool = False, placeMovingUnderTransform: bool = False):
        """Declare a child-process run of ``registration-suite organ-points`` (see :mod:`.runner`).

        Same arguments as :meth:`register`, plus ``placeMovingUnderTransform``. The organs are exported as
        label images or labelled LPS points (as :meth:`prepare_inputs` takes them); per-organ Λ/B and a
        coherence matrix become ``--lambda-mm``/``--beta-mm`` ``LABEL:MM`` lists and a ``--coherence`` CSV.
        """
        from .logic import check_cli_expressible
        from .runner import NodeInput, NodeOutput, RunSpec

        self._check_nodes(fixedNode, movingNode, outputTransformNode)
        config = self.resolve_config(config, organs)
        check_cli_expressible(config, ("labels", "points_per_organ", "lambda_mm", "beta_mm", "coherence", "omega",
                                       "grid_spacing_mm", "seed", "device", "organ_prealign", "spread_sampling",
                                       "common_fov"),
                              "organ-points")
        params = {"labels": config.labels, "points_per_organ": int(config.points_per_organ), "seed": int(config.seed)}
        options = ["--points-per-organ", str(int(config.points_per_organ)), "--lambda-mm", _mm_option(config.lambda_mm),
                   "--beta-mm", _mm_option(config.beta_mm), "--omega", repr(float(config.omega)),
                   "--grid-spacing", repr(float(config.grid_spacing_mm)), "--seed", str(int(config.seed)),
                   "--device", str(config.device)]
        if config.labels is not None:
            options += ["--labels", ",".join(str(int(v)) for v in config.labels)]
        options += ["--organ-prealign", str(config.organ_prealign), "--sampling", sampling_name(config.spread_sampling),
                    "--common-fov", common_fov_option(config.common_fov)]
        coherence = None
        if isinstance(config.coherence, str):
            options += ["--coherence", config.coherence]
        else:
            coherence = np.asarray(config.coherence, dtype=float)

        def finish(outcome, rollback):
            node = outcome.nodes["transform"]
            self.add_list_references(node, fixedNode, movingNode)
            self._note_parent_transforms(outcome.result, fixedNode, movingNode, outputTransformNode)
            outcome.result.diagnostics["output_transform_node_id"] = node.GetID()
            if transformedMovingCopy:
                outcome.nodes["copy"] = self.transformed_copy(outcome.result, movingNode, node, outcome.scene, rollback)
            if placeMovingUnderTransform:
                for moving in movingNode if isinstance(movingNode, (list, tuple)) else [movingNode]:
                    moving.SetAndObserveTransformNodeID(node.GetID())

        touches = list(movingNode) if isinstance(movingNode, (list, tuple)) else [movingNode]
        return RunSpec(
            "organ-points",
            inputs=[NodeInput("--fixed", fixedNode, "labels", key="fixed", params=params),
                    NodeInput("--moving", movingNode, "labels", key="moving", params=params),
                    NodeInput("--coherence", coherence, "matrix", key="coherence")],
            options=options,
            outputs=[NodeOutput("--output", "transform", node=outputTransformNode, key="transform",
                                name=self.output_name, references=("fixed", "moving"))],
            finish=finish, touches=touches if placeMovingUnderTransform else [],
        )

    def apply_result(self, result, inputs, scene, fixedNode, movingNode, outputTransformNode=None):
        """The base's output node; lists of model nodes are all referenced (first by ``SetNodeReferenceID``)."""
        node = super().apply_result(result, inputs, scene, _first(fixedNode), _first(movingNode), outputTransformNode)
        self.add_list_references(node, fixedNode, movingNode)
        return node


def _mm_option(value) -> str:
    """``--lambda-mm``/``--beta-mm`` text: one number, or ``LABEL:MM,...`` for per-organ values."""
    if isinstance(value, Mapping):
        return ",".join(f"{int(k)}:{float(v)!r}" for k, v in value.items())
    return repr(float(value))


def _first(nodes):
    return nodes[0] if isinstance(nodes, (list, tuple)) else nodes


__all__ = [
    "OrganPointCloudLogic",
    "OrganPointInputs",
    "OrganRow",
    "config_with_organs",
    "organ_names",
    "organ_row",
    "organ_rows_from_table",
    "organ_table_rows",
    "parse_matrix",
]

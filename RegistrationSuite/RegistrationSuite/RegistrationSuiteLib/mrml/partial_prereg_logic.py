"""Qt-free logic for partial-volume preregistration (TSPM, Xia et al., MICCAI 2022) on MRML nodes.

The fixed (full) and moving (partial) volume nodes become LPS images, the core
(:func:`RegistrationSuiteLib.methods.partial_prereg.register_partial_prereg`) returns a linear fixed → moving
transform, and the logic writes:

- the output linear transform node (ToParent = moving → fixed, RAS) with the fixed/moving references;
- a diagnostics table (``vtkMRMLTableNode``, one name/value row per quantity: RANSAC inliers, inlier ratio,
  median residual, metric before/after the refinement, whether the global-search fallback was used, and a
  *doubtful* verdict with its reason, see :func:`summarize_diagnostics`);
- optionally the moving volume resampled onto the fixed grid.

The node guarantees of :class:`~.logic.RegistrationLogicBase` hold: inputs are never modified; on error or
cancellation no node is added and passed output nodes keep their content (nodes are written only after the
core returned; passed nodes are snapshotted before the first write and restored, and created nodes removed, if
any later write fails: :mod:`.rollback`).

In-process: :meth:`PartialPreregLogic.register` (or :meth:`~PartialPreregLogic.prepare_run`,
:meth:`~PartialPreregLogic.compute_run`, :meth:`~PartialPreregLogic.finish_run`). In a child process (what the
Slicer module's Apply does): :meth:`~PartialPreregLogic.run_spec` declares the ``partial-prereg`` run for
:mod:`.runner`.
"""

from __future__ import annotations

import importlib
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from ..errors import InputError
from ..result import RegistrationResult
from .logic import RegistrationInputs, RegistrationLogicBase, _describe
from .rollback import rollback_on_error

METHOD_MODULE = "RegistrationSuiteLib.methods.partial_prereg"
#: Model kind of the TSPM patch-position network (``RegistrationSuiteLib.models.model_file``).
MODEL_KIND = "tspm_patch_position"
#: Verdict thresholds of :func:`summarize_diagnostics`: fewer agreeing patches or larger residuals are suspect.
DOUBTFUL_MIN_INLIER_RATIO = 0.35
DOUBTFUL_MAX_MEDIAN_RESIDUAL_MM = 8.0
TABLE_COLUMNS = ("Name", "Value")


@dataclass
class PartialPreregInputs(RegistrationInputs):
    """The base's LPS images plus the model (``None``: the core's default; a ``Path``; or a loaded model)."""

    model: object = None


@dataclass
class PartialPreregRun:
    """One registration captured on the main thread (nodes, config, images): :meth:`PartialPreregLogic.prepare_run`."""

    scene: object
    fixedVolumeNode: object
    movingVolumeNode: object
    outputTransformNode: object
    diagnosticsTableNode: object
    outputVolumeNode: object
    config: object
    inputs: PartialPreregInputs


@dataclass
class DiagnosticsSummary:
    """What the diagnostics table shows; ``None`` where the core did not report a quantity.

    Attributes:
        inliers: RANSAC inlier patches; patches: patches given to RANSAC.
        inlier_ratio: inliers / patches, in [0, 1].
        median_residual_mm: median distance (template space, mm) of the inliers to the fitted transform.
        metric: refinement metric (``"mse"``, ``"mi"``, ``"nmi"`` or ``"none"``); metric_before/after: its value
            at the RANSAC estimate and after the refinement (MSE: lower is better; MI/NMI: higher is better).
        fallback: RANSAC found no consensus and the global rigid search gave the result.
        doubtful: at least one warning sign; reasons: one sentence per sign.
    """

    inliers: Optional[int] = None
    patches: Optional[int] = None
    inlier_ratio: Optional[float] = None
    median_residual_mm: Optional[float] = None
    metric: Optional[str] = None
    metric_before: Optional[float] = None
    metric_after: Optional[float] = None
    fallback: bool = False
    doubtful: bool = False
    reasons: List[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "doubtful" if self.doubtful else "plausible"

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "doubtful": self.doubtful, "reasons": list(self.reasons)}


def _number(value) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _inlier_median_residual(ransac: dict) -> Optional[float]:
    """Median residual (mm) of the RANSAC inliers: the residuals below the threshold finally used."""
    threshold = _number(ransac.get("threshold_mm"))
    residuals = [_number(r) for r in ransac.get("residuals_mm") or []]
    inliers = [r for r in residuals if r is not None and (threshold is None or r < threshold)]
    return statistics.median(inliers) if inliers else None


def summarize_diagnostics(
    result: RegistrationResult,
    *,
    min_inlier_ratio: float = DOUBTFUL_MIN_INLIER_RATIO,
    max_median_residual_mm: float = DOUBTFUL_MAX_MEDIAN_RESIDUAL_MM,
) -> DiagnosticsSummary:
    """The table's quantities from the core's ``result.diagnostics`` and a verdict.

    Diagnostics read (see :func:`~RegistrationSuiteLib.methods.partial_prereg.register_partial_prereg`):
    ``ransac`` (``num_inliers``, ``num_points``, ``inlier_ratio``, ``residuals_mm``, ``threshold_mm``),
    ``refinement`` (``metric``, ``before``, ``after``, ``improved``), ``fallback`` (``{"used": True, ...}`` when
    RANSAC had no consensus) and ``doubtful`` (the core's list of reasons to check the result).

    The verdict is *doubtful* when the core listed reasons (the core's list is authoritative: since its local
    search, RANSAC residuals say little about the final result). Results without the core's list get rules
    of their own here: no consensus (fallback), fewer than ``min_inlier_ratio`` of the patches agreeing, a
    refinement that did not improve its metric, or an inliers' median residual above
    ``max_median_residual_mm`` (the RANSAC threshold alone lets every inlier be far off).
    """
    d = result.diagnostics if isinstance(result.diagnostics, dict) else {}
    ransac = d.get("ransac") if isinstance(d.get("ransac"), dict) else {}
    refinement = d.get("refinement") if isinstance(d.get("refinement"), dict) else {}
    fallback = d.get("fallback")
    s = DiagnosticsSummary(
        inliers=None if ransac.get("num_inliers") is None else int(ransac["num_inliers"]),
        patches=None if ransac.get("num_points") is None else int(ransac["num_points"]),
        inlier_ratio=_number(ransac.get("inlier_ratio")),
        median_residual_mm=_inlier_median_residual(ransac),
        metric=None if refinement.get("metric") is None else str(refinement["metric"]),
        metric_before=_number(refinement.get("before")),
        metric_after=_number(refinement.get("after")),
        fallback=bool(fallback.get("used")) if isinstance(fallback, dict) else bool(fallback),
    )
    core_reasons = d.get("doubtful")
    if isinstance(core_reasons, (list, tuple)):
        s.reasons = [str(r) for r in core_reasons]
    else:
        s.reasons = _own_reasons(s, refinement.get("improved"), min_inlier_ratio)
    if (not isinstance(core_reasons, (list, tuple)) and not s.fallback and s.median_residual_mm is not None
            and s.median_residual_mm > max_median_residual_mm):
        s.reasons.append(f"the RANSAC inliers' median residual is {s.median_residual_mm:.1f} mm (above "
                         f"{max_median_residual_mm:g} mm)")
    s.doubtful = bool(s.reasons)
    return s


def _own_reasons(s: DiagnosticsSummary, improved, min_inlier_ratio: float) -> list:
    """The core's rules, for results that carry no ``doubtful`` list."""
    reasons = []
    if s.fallback:
        reasons.append("RANSAC found no consensus among the patches; the global rigid search fallback gave the result")
    elif s.inlier_ratio is not None and s.inlier_ratio < min_inlier_ratio:
        reasons.append(f"only {s.inlier_ratio:.0%} of the patch predictions agree (below {min_inlier_ratio:.0%})")
    if s.metric not in (None, "none"):
        if improved is None and s.metric_before is not None and s.metric_after is not None:
            improved = s.metric_after < s.metric_before if s.metric == "mse" else s.metric_after > s.metric_before
        if improved is not None and not improved:
            reasons.append(f"the refinement did not improve {s.metric} (kept the initial alignment)")
    return reasons


def _format(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _metric_label(metric: Optional[str]) -> str:
    if metric in (None, "none"):
        return metric or "n/a"
    return f"{metric} ({'lower' if metric == 'mse' else 'higher'} is better)"


def diagnostics_rows(result: RegistrationResult, summary: Optional[DiagnosticsSummary] = None) -> list:
    """``[(name, value)]`` text rows of the diagnostics table."""
    s = summary if summary is not None else summarize_diagnostics(result)
    inliers = _format(s.inliers, "d") + ("" if s.patches is None else f" of {s.patches}")
    return [
        ("Verdict", s.verdict),
        ("Reason", "; ".join(s.reasons) if s.reasons else "inliers, residuals and refinement look consistent"),
        ("RANSAC inliers", inliers),
        ("Inlier ratio", _format(s.inlier_ratio, ".3f")),
        ("Median residual (mm)", _format(s.median_residual_mm, ".2f")),
        ("Global search fallback", "yes" if s.fallback else "no"),
        ("Refinement metric", _metric_label(s.metric)),
        ("Metric before refinement", _format(s.metric_before, ".6g")),
        ("Metric after refinement", _format(s.metric_after, ".6g")),
        ("Model", str(result.diagnostics.get("model") or "n/a")),
        ("Time (s)", _format(_number(result.timings.get("total")), ".1f")),
    ]


def diagnostics_table(result: RegistrationResult, tableNode=None, scene=None, *, name: str = "TSPM diagnostics",
                      summary: Optional[DiagnosticsSummary] = None):
    """Write the diagnostics of a TSPM result as name/value rows into a table node.

    Args:
        result: the core's result.
        tableNode: ``vtkMRMLTableNode`` to overwrite (its columns are replaced); ``None`` adds one to ``scene``.
        scene: scene of a new table node.
        name: name of a new table node.
        summary: precomputed :func:`summarize_diagnostics` (default: computed here).

    Returns:
        The table node (two string columns, :data:`TABLE_COLUMNS`).
    """
    import vtk

    if tableNode is not None and (not hasattr(tableNode, "IsA") or not tableNode.IsA("vtkMRMLTableNode")):
        raise InputError(f"tableNode: expected a vtkMRMLTableNode, got {_describe(tableNode)}")
    if tableNode is None and scene is None:
        raise InputError("scene: expected a vtkMRMLScene to add the diagnostics table to, got None")
    rows = diagnostics_rows(result, summary)
    columns = []
    for index, title in enumerate(TABLE_COLUMNS):
        array = vtk.vtkStringArray()
        array.SetName(title)
        for row in rows:
            array.InsertNextValue(str(row[index]))
        columns.append(array)
    node = tableNode if tableNode is not None else scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    wasModifying = node.StartModify()
    node.RemoveAllColumns()
    for array in columns:
        node.AddColumn(array)
    node.EndModify(wasModifying)
    return node


def resolve_model_argument(model):
    """``None`` (the core's default), a model name or ``.pt`` path (→ ``Path``, checked now), or a loaded model."""
    if model is None or (isinstance(model, str) and not model.strip()):
        return None
    if isinstance(model, (str, Path)):
        from ..models.registry import resolve_model

        return resolve_model(str(model).strip())
    return model


def available_models(user_dir=None) -> list:
    """``[(name, source, path)]`` of the model files offered for selection, user models first (a user model
    hides a shipped one of the same name). Only lists files: no model is loaded, torch is not imported."""
    from ..models.registry import MODEL_SUFFIX, shipped_models_dir, user_models_dir

    out, seen = [], set()
    for source, folder in (("user", user_models_dir(user_dir)), ("shipped", shipped_models_dir())):
        if folder.is_dir():
            for path in sorted(folder.glob(f"*{MODEL_SUFFIX}")):
                if path.stem not in seen:
                    seen.add(path.stem)
                    out.append((path.stem, source, path))
    return out


class PartialPreregLogic(RegistrationLogicBase):
    """TSPM partial-volume preregistration on volume nodes; usable without a widget::

        logic = PartialPreregLogic()
        result = logic.register(fullVolume, partialVolume, PartialPreregConfig(refine="mi", seed=0))
        transformNode = slicer.mrmlScene.GetNodeByID(result.diagnostics["output_transform_node_id"])
        table = slicer.mrmlScene.GetNodeByID(result.diagnostics["diagnostics_table_node_id"])
    """

    output_name = "PartialVolumePreregistration transform"
    table_name = "PartialVolumePreregistration diagnostics"
    method_module = METHOD_MODULE

    def default_config(self):
        """``PartialPreregConfig()`` (its module imports no torch)."""
        return importlib.import_module(self.method_module + ".config").PartialPreregConfig()

    def make_config(self, **options):
        """``PartialPreregConfig(**options)``; raises ``InputError`` naming a bad option."""
        return importlib.import_module(self.method_module + ".config").PartialPreregConfig(**options)

    def register(
        self,
        fixedVolumeNode,
        movingVolumeNode,
        config=None,
        outputTransformNode=None,
        model=None,
        progress=None,
        cancel=None,
        diagnosticsTableNode=None,
        outputVolumeNode=None,
    ) -> RegistrationResult:
        """Register the partial moving volume to the fixed volume; write the transform and diagnostics table.

        Args:
            fixedVolumeNode: the full volume (3D scalar volume node, never modified).
            movingVolumeNode: the partial volume (e.g. a slab), any modality; never modified.
            config: ``PartialPreregConfig`` (``None``: defaults).
            outputTransformNode: linear transform node to update; ``None`` adds one.
            model: model name (user folder, then shipped), ``.pt`` path, or a loaded model; ``None``: the
                core's default model.
            progress: ``progress(fraction, message)``; cancel: callable returning ``True`` to stop.
            diagnosticsTableNode: table node to overwrite; ``None`` adds one.
            outputVolumeNode: optional volume node receiving the moving volume resampled on the fixed grid.

        Returns:
            The core's result; ``diagnostics`` gains ``output_transform_node_id``, ``diagnostics_table_node_id``,
            ``verdict`` (and ``output_volume_node_id``).
        """
        run = self.prepare_run(fixedVolumeNode, movingVolumeNode, config, outputTransformNode, model,
                               diagnosticsTableNode, outputVolumeNode)
        result = self.compute_run(run, progress, cancel)
        self.finish_run(run, result)
        return result

    def prepare_run(self, fixedVolumeNode, movingVolumeNode, config=None, outputTransformNode=None, model=None,
                    diagnosticsTableNode=None, outputVolumeNode=None) -> PartialPreregRun:
        """Main thread: check nodes and options, copy the voxels, resolve the model file."""
        scene = self._check_nodes(fixedVolumeNode, movingVolumeNode, outputTransformNode)
        self._check_extra_outputs(fixedVolumeNode, movingVolumeNode, diagnosticsTableNode, outputVolumeNode)
        config = config if config is not None else self.default_config()
        base = self.prepare_inputs(fixedVolumeNode, movingVolumeNode)
        if base.dimension != 3:
            raise InputError("movingVolumeNode: partial-volume preregistration needs 3D volumes, got single slices")
        inputs = PartialPreregInputs(base.fixed_image, base.moving_image, model=resolve_model_argument(model))
        return PartialPreregRun(scene, fixedVolumeNode, movingVolumeNode, outputTransformNode, diagnosticsTableNode,
                                outputVolumeNode, config, inputs)

    @staticmethod
    def _check_extra_outputs(fixedVolumeNode, movingVolumeNode, diagnosticsTableNode, outputVolumeNode) -> None:
        if diagnosticsTableNode is not None and (not hasattr(diagnosticsTableNode, "IsA")
                                                 or not diagnosticsTableNode.IsA("vtkMRMLTableNode")):
            raise InputError(f"diagnosticsTableNode: expected a table node, got {_describe(diagnosticsTableNode)}")
        if outputVolumeNode is not None:
            if not hasattr(outputVolumeNode, "IsA") or not outputVolumeNode.IsA("vtkMRMLScalarVolumeNode"):
                raise InputError(f"outputVolumeNode: expected a scalar volume node, got {_describe(outputVolumeNode)}")
            if outputVolumeNode in (fixedVolumeNode, movingVolumeNode):
                raise InputError("outputVolumeNode: expected a new volume node, got the fixed or moving volume itself")

    def compute_run(self, run: PartialPreregRun, progress=None, cancel=None) -> RegistrationResult:
        """Any thread: the core registration; touches no MRML."""
        return self.run_method(run.inputs, run.config, progress, cancel)

    def run_method(self, inputs: PartialPreregInputs, config, progress, cancel) -> RegistrationResult:
        module = importlib.import_module(self.method_module)
        return module.register_partial_prereg(
            inputs.fixed_image,
            inputs.moving_image,
            config if config is not None else self.default_config(),
            model=getattr(inputs, "model", None),
            progress=progress,
            cancel=cancel,
        )

    def finish_run(self, run: PartialPreregRun, result: RegistrationResult):
        """Main thread: write the transform, the diagnostics table (and the resampled volume).

        Returns ``(transformNode, tableNode)``. If any write fails, passed nodes are restored and nodes this call
        created are removed.
        """
        for label, node in (("fixedVolumeNode", run.fixedVolumeNode), ("movingVolumeNode", run.movingVolumeNode)):
            if node.GetScene() is None:
                raise InputError(f"{label}: the node was removed from the scene while the registration ran")
        alive = [n if n is not None and n.GetScene() is not None else None
                 for n in (run.outputTransformNode, run.diagnosticsTableNode, run.outputVolumeNode)]
        outputNode, tableNode, volumeNode = alive  # deleted meanwhile: create new ones rather than write dead ones
        summary = summarize_diagnostics(result)  # before any write: a failure here leaves the scene untouched
        self._note_parent_transforms(result, run.fixedVolumeNode, run.movingVolumeNode, outputNode)
        # Every passed node is snapshotted first: a failure at any write restores them all (and removes new ones).
        with rollback_on_error(run.scene, [outputNode, tableNode, volumeNode]) as rollback:
            transformNode = self.apply_result(result, run.inputs, run.scene, run.fixedVolumeNode,
                                              run.movingVolumeNode, outputNode)
            if outputNode is None:
                rollback.created(transformNode)
            table = self.write_diagnostics(result, summary, run.scene, tableNode, rollback)
            if volumeNode is not None:
                self.resample_volume(run.movingVolumeNode, run.fixedVolumeNode, transformNode, volumeNode)
                result.diagnostics["output_volume_node_id"] = volumeNode.GetID()
        self._record_outputs(result, summary, transformNode, table)
        return transformNode, table

    def write_diagnostics(self, result, summary, scene, tableNode, rollback):
        """The diagnostics table (a new node is recorded in ``rollback``)."""
        table = diagnostics_table(result, tableNode, scene, summary=summary,
                                  name=scene.GenerateUniqueName(self.table_name))
        if tableNode is None:
            rollback.created(table)
        return table

    @staticmethod
    def _record_outputs(result, summary, transformNode, table) -> None:
        result.diagnostics["output_transform_node_id"] = transformNode.GetID()
        result.diagnostics["diagnostics_table_node_id"] = table.GetID()
        result.diagnostics["verdict"] = summary.to_dict()
        # The core already warns about its own reasons (same wording); add only the ones found here.
        result.warnings += [w for w in (f"doubtful result: {r}" for r in summary.reasons) if w not in result.warnings]

    def run_spec(self, fixedVolumeNode, movingVolumeNode, config=None, outputTransformNode=None, model=None,
                 diagnosticsTableNode=None, outputVolumeNode=None, placeMovingUnderTransform: bool = False):
        """Declare a child-process run of ``registration-suite partial-prereg`` (see :mod:`.runner`).

        Same arguments as :meth:`register` (``model``: a name or ``.pt`` path, not a loaded model), plus
        ``placeMovingUnderTransform``. Outputs: ``outcome.nodes["transform"]`` and, after the finish step,
        ``outcome.nodes["table"]``.
        """
        from .logic import check_cli_expressible
        from .runner import NodeInput, NodeOutput, RunSpec

        self._check_nodes(fixedVolumeNode, movingVolumeNode, outputTransformNode)
        self._check_extra_outputs(fixedVolumeNode, movingVolumeNode, diagnosticsTableNode, outputVolumeNode)
        config = config if config is not None else self.default_config()
        check_cli_expressible(config, ("num_patches", "min_patches", "refine", "seed", "device", "local_search",
                                       "cache_fixed_to_template"), "partial-prereg")
        if config.min_patches != min(20, max(6, config.num_patches)):
            raise InputError(f"config: partial-prereg in a child process uses min_patches = min(20, max(6, "
                             f"num_patches)), got min_patches={config.min_patches}")
        model_path = resolve_model_argument(model)
        if model_path is not None and not isinstance(model_path, Path):
            raise InputError("model: a child-process run needs a model name or .pt path, got a loaded model")
        options = ["--refine", config.refine, "--patches", str(int(config.num_patches)),
                   "--seed", str(int(config.seed)), "--device", str(config.device)]
        options += [] if config.local_search else ["--no-local-search"]
        options += [] if config.cache_fixed_to_template else ["--no-cache"]
        options += ["--model", str(model_path)] if model_path is not None else []
        outputs = [NodeOutput("--output", "transform", node=outputTransformNode, key="transform",
                              name=self.output_name, references=("fixed", "moving"))]
        if outputVolumeNode is not None:
            outputs.append(NodeOutput("--output-resampled", "volume", node=outputVolumeNode, key="resampled",
                                      reference="fixed"))

        def finish(outcome, rollback):
            result, transformNode = outcome.result, outcome.nodes["transform"]
            summary = summarize_diagnostics(result)
            self._note_parent_transforms(result, fixedVolumeNode, movingVolumeNode, outputTransformNode)
            table = self.write_diagnostics(result, summary, outcome.scene, diagnosticsTableNode, rollback)
            outcome.nodes["table"] = table
            self._record_outputs(result, summary, transformNode, table)
            if placeMovingUnderTransform:
                movingVolumeNode.SetAndObserveTransformNodeID(transformNode.GetID())

        touches = [n for n in (diagnosticsTableNode, movingVolumeNode if placeMovingUnderTransform else None) if n]
        return RunSpec("partial-prereg",
                       inputs=[NodeInput("--fixed", fixedVolumeNode, "volume", key="fixed"),
                               NodeInput("--moving", movingVolumeNode, "volume", key="moving")],
                       options=options, outputs=outputs, finish=finish, touches=touches)


__all__ = [
    "DOUBTFUL_MAX_MEDIAN_RESIDUAL_MM",
    "DOUBTFUL_MIN_INLIER_RATIO",
    "MODEL_KIND",
    "DiagnosticsSummary",
    "PartialPreregInputs",
    "PartialPreregLogic",
    "PartialPreregRun",
    "available_models",
    "diagnostics_rows",
    "diagnostics_table",
    "resolve_model_argument",
    "summarize_diagnostics",
]

"""Deformable registration on MRML nodes: the child-process run of ``registration-suite deformable``.

Qt-free (no ``slicer``/``qt`` import at module scope); the Slicer module ``DeformableRegistration`` only connects
its GUI to this. A run is *declared* as a :class:`~.runner.RunSpec` (:func:`deformable_run_spec`): fixed and moving
volume nodes, an optional initial transform node (e.g. a GlobalRigidSearch output, written as an ITK file fixed →
moving), optional masks; outputs: a grid transform node (FromParent, registration references to the fixed and
moving nodes; the initial transform is folded into it), optional Jacobian-determinant volume (with a diverging
colour map around 1) and optional resampled moving volume.

Presets set the number of instance-optimisation steps and the regularisation weight (balanced = the CLI
defaults); they are defined with the configuration (``methods.deformable.config.PRESETS``, where the measurements
that chose them are listed). The working spacing is a separate parameter (default automatic, 1.5 mm).
"""

from __future__ import annotations

import math

from ..errors import InputError
from ..methods.deformable.config import PRESETS  # noqa: F401  preset → (io_steps, regularization); torch-free
from ..methods.deformable.config import DeformableConfig

#: config fields that ``deformable_run_spec`` passes to the CLI (anything else changed would be dropped).
CLI_FIELDS = ("spacing_mm", "similarity", "io_steps", "regularization", "regularizer", "diffeomorphic", "model",
              "network_passes", "network_skip_levels", "seed", "device", "max_memory_gb")
#: Defaults of the network options, from the configuration (one source with the CLI's defaults).
DEFAULT_NETWORK_PASSES = DeformableConfig.network_passes
DEFAULT_NETWORK_SKIP_LEVELS = DeformableConfig.network_skip_levels
#: Range the module offers for ``network_passes``.
NETWORK_PASSES_RANGE = (1, 5)
#: Range the module offers for ``network_skip_levels``: 0 up to all but the finest of the default levels.
NETWORK_SKIP_LEVELS_RANGE = (0, len(DeformableConfig.levels) - 1)
#: Colour map of the Jacobian volume (Slicer's built-in diverging table: blue < 1 < red).
JACOBIAN_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
OUTPUT_NAME = "DeformableRegistration transform"
#: ``kind`` of deformable model files (= ``methods.deformable.network.MODEL_KIND``, which imports torch).
MODEL_KIND = "deformable_field"


def preset_values(preset: str):
    """``(io_steps, regularization)`` of a preset; raises :class:`InputError` for an unknown name."""
    if preset not in PRESETS:
        raise InputError(f"preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    return PRESETS[preset]


def make_config(preset="balanced", similarity="auto", regularization=None, model=None, **kwargs):
    """A validated ``DeformableConfig`` from a preset; ``regularization=None`` keeps the preset's weight.
    ``model`` ``None``/``""``/``"none"``: optimisation only. torch is not imported."""
    steps, weight = preset_values(preset)
    return DeformableConfig(io_steps=steps, regularization=weight if regularization is None else float(regularization),
                            similarity=similarity, model=(model or None), **kwargs)


def read_model_kind(path):
    """The ``kind`` of a model file, read without torch (Slicer's own process never imports it), or ``None``
    when it cannot be read this way.

    A model file is a zip (``torch.save``) whose ``data.pkl`` pickles a dictionary; a restricted unpickler
    rebuilds that dictionary with every class reference and tensor storage replaced by ``None`` (nothing is
    imported or constructed), which leaves the strings such as ``"kind"`` intact."""
    import pickle
    import zipfile

    class _Restricted(pickle.Unpickler):
        def find_class(self, module, name):
            return lambda *args, **kwargs: None

        def persistent_load(self, pid):
            return None

    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
            with archive.open(name) as stream:
                content = _Restricted(stream).load()
    except Exception:  # noqa: BLE001 - any unreadable file: unknown kind (the run reports the real error)
        return None
    kind = content.get("kind") if isinstance(content, dict) else None
    return kind if isinstance(kind, str) else None


def deformable_models(user_dir=None) -> list:
    """``[(name, source, path)]`` of the deformable model files offered (user models first): files whose kind
    (read without torch) is another method's are left out; unreadable ones stay listed (the run checks them
    and refuses a wrong one with one line)."""
    from .partial_prereg_logic import available_models

    return [m for m in available_models(user_dir) if read_model_kind(m[2]) in (MODEL_KIND, None)]


def _check_cli_expressible(config) -> None:
    from .logic import check_cli_expressible

    check_cli_expressible(config, CLI_FIELDS, "deformable")


def cli_options(config) -> list:
    """The ``registration-suite deformable`` options for ``config`` (after checking nothing is dropped)."""
    _check_cli_expressible(config)
    spacing = "auto" if config.spacing_mm is None else repr(float(config.spacing_mm))
    options = ["--spacing", spacing, "--similarity", config.similarity,
               "--io-steps", str(int(config.io_steps)), "--regularization", repr(float(config.regularization)),
               "--regularizer", config.regularizer, "--model", config.model or "none",
               "--network-passes", str(int(config.network_passes)),
               "--network-skip-levels", str(int(config.network_skip_levels)),
               "--seed", str(int(config.seed)), "--device", str(config.device),
               "--max-memory-gb", repr(float(config.max_memory_gb))]
    return options + (["--diffeomorphic"] if config.diffeomorphic else [])


def style_jacobian_node(node) -> None:
    """Diverging colour map centred on 1 (no volume change), window [0, 2]; harmless when the colour table is
    not in the scene (headless scenes)."""
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is None:
        return
    display.SetAndObserveColorNodeID(JACOBIAN_COLOR_NODE_ID)
    display.AutoWindowLevelOff()
    display.SetWindowLevel(2.0, 1.0)


def deformable_run_spec(fixedVolumeNode, movingVolumeNode, config=None, outputTransformNode=None,
                        initialTransformNode=None, fixedMaskNode=None, movingMaskNode=None,
                        outputJacobianNode=None, outputVolumeNode=None, placeMovingUnderTransform=False,
                        jacobian=False):
    """Declare a child-process run of ``registration-suite deformable`` (see :mod:`.runner`).

    Args:
        config: a ``DeformableConfig`` (default: :func:`make_config`).
        outputTransformNode: a ``vtkMRMLGridTransformNode`` to fill, or ``None`` for a new one.
        initialTransformNode: optional transform node (moving → fixed, as registration outputs are); exported
            to ITK (fixed → moving) and folded into the output.
        outputJacobianNode: volume node for the Jacobian determinant; ``None`` with ``jacobian=True``: a new one.
        outputVolumeNode: optional volume node for the moving volume resampled onto the fixed grid.
        placeMovingUnderTransform: put the moving volume under the output (it already contains the initial
            transform, so it replaces any parent the moving volume had).

    Returns:
        :class:`~.runner.RunSpec`; outputs in ``outcome.nodes`` as ``"transform"``, ``"jacobian"``,
        ``"resampled"``.
    """
    from .runner import NodeInput, NodeOutput, RunSpec

    if fixedVolumeNode is None or movingVolumeNode is None:
        raise InputError("inputs: select a fixed and a moving volume")
    if fixedVolumeNode is movingVolumeNode:
        raise InputError("inputs: the fixed and moving volumes must be different volumes")
    if outputTransformNode is not None and not outputTransformNode.IsA("vtkMRMLGridTransformNode"):
        raise InputError(f"output transform: expected a grid transform node, got {outputTransformNode.GetClassName()}")
    config = config if config is not None else make_config()
    options = cli_options(config)
    outputs = [NodeOutput("--output", "transform", node=outputTransformNode, key="transform", name=OUTPUT_NAME,
                          references=("fixed", "moving"))]
    if outputJacobianNode is not None or jacobian:
        outputs.append(NodeOutput("--output-jacobian", "volume", node=outputJacobianNode, key="jacobian",
                                  name="DeformableRegistration Jacobian", reference="fixed"))
    if outputVolumeNode is not None:
        outputs.append(NodeOutput("--output-resampled", "volume", node=outputVolumeNode, key="resampled",
                                  reference="fixed"))

    def finish(outcome, rollback):
        node = outcome.nodes["transform"]
        outcome.result.diagnostics["output_transform_node_id"] = node.GetID()
        if "jacobian" in outcome.nodes:
            style_jacobian_node(outcome.nodes["jacobian"])
            outcome.result.diagnostics["jacobian_node_id"] = outcome.nodes["jacobian"].GetID()
        if placeMovingUnderTransform:
            movingVolumeNode.SetAndObserveTransformNodeID(node.GetID())

    return RunSpec(
        command="deformable",
        inputs=[NodeInput("--fixed", fixedVolumeNode, "volume", key="fixed"),
                NodeInput("--moving", movingVolumeNode, "volume", key="moving"),
                NodeInput("--initial-transform", initialTransformNode, "transform", key="initial"),
                NodeInput("--fixed-mask", fixedMaskNode, "mask", reference="fixed"),
                NodeInput("--moving-mask", movingMaskNode, "mask", reference="moving")],
        options=options, outputs=outputs, finish=finish,
        touches=[movingVolumeNode] if placeMovingUnderTransform else [],
    )


def result_lines(result, seconds=None) -> list:
    """The results line(s): folding %, time, similarity before → after (from the CLI's diagnostics)."""
    d = result.diagnostics or {}
    sim = d.get("similarity") or {}

    def number(value, fmt):
        try:
            value = float(value)
        except (TypeError, ValueError):
            return "n/a"
        return "n/a" if not math.isfinite(value) else format(value, fmt)

    total = seconds if seconds is not None else (result.timings or {}).get("total")
    folding = d.get("folding_fraction")
    lines = [f"Folding: {number(100.0 * folding if isinstance(folding, (int, float)) else None, '.3f')} % of "
             f"voxels (Jacobian min {number(d.get('jacobian_min'), '.3f')})",
             f"Similarity ({sim.get('name', '?')}): {number(sim.get('before'), '.4f')} → "
             f"{number(sim.get('after'), '.4f')}",
             f"Model: {d.get('network') or 'none (optimisation only)'}    Time: {number(total, '.1f')} s"]
    return lines + [f"Warning: {w}" for w in (result.warnings or [])]

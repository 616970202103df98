"""Partial-Volume Preregistration: locate a partial scan in a full one (TSPM, Xia et al., MICCAI 2022).

The mathematics lives in the Qt-free core (``RegistrationSuiteLib.methods.partial_prereg``) and the node handling
in ``RegistrationSuiteLib.mrml.partial_prereg_logic``; this file only connects the GUI to them. torch is imported
lazily (through the PyTorch extension), so the module loads even when torch is not installed.
"""

from typing import Annotated, Optional

import vtk

import slicer
from slicer import vtkMRMLLinearTransformNode, vtkMRMLScalarVolumeNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, Minimum, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.mrml.partial_prereg_logic import PartialPreregLogic, available_models, diagnostics_rows
from RegistrationSuiteWidgets import ChildRunMixin, ParameterNodeWidgetMixin, formatResultSummary, torchSkipReason

#
# PartialVolumePreregistration
#


class PartialVolumePreregistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Partial-Volume Preregistration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["RegistrationSuite contributors (RegistrationSuite project)"]
        self.parent.helpText = _("""
Locates a partial volume (a slab or a small field of view) inside a full volume, across modalities and without any
initial alignment (template space patch mapping, TSPM). A network predicts where 16³ patches of the moving volume lie
in a template space; RANSAC fits a rigid transform to these positions; the fixed volume is aligned to the template by
a CSNGF search from the scanner orientation (the global rigid search when that matches poorly); a CSNGF search of the estimate's neighbourhood (Advanced: Local search; our addition to the
paper) and a local rigid refinement measured only where the volumes overlap (Advanced: Refinement metric) finish the
job. A volume too small for the network's patches is searched without the network and marked doubtful.
<br><br>
Output: a linear transform (moving to fixed), a diagnostics table (RANSAC inliers, inlier ratio, median residual,
refinement metric before/after, whether the global-search fallback was used) with a <i>doubtful</i> verdict and its
reason, and optionally the moving volume resampled onto the fixed grid. Models: the shipped ones and your own
(Registration Suite module, Models section).
<br><br>
Same method on the command line: <code>registration-suite partial-prereg --fixed F.nii.gz --moving M.nii.gz
--output T.h5</code>. Needs torch (installed through the PyTorch extension); uses a CUDA GPU when available.
""")
        self.parent.acknowledgementText = _("""
Method: D. Xia, X. Yang, O. van Kaick, T. Kin, T. Igarashi, "Data-driven multi-modal partial medical image
preregistration by template space patch mapping", Medical Image Computing and Computer Assisted Intervention
(MICCAI 2022), Springer, 2022. Template derived from the ICBM 2009a symmetric T1 template (McConnell Brain Imaging
Centre, Montreal Neurological Institute); see the extension's data notice. Sample data: C-STAR stroke T1/T2 volumes via
neurolabusc/VolumeRenderingData (MIT).
""")


#
# PartialVolumePreregistrationParameterNode
#


@parameterNodeWrapper
class PartialVolumePreregistrationParameterNode:
    """The module's parameters (saved with the scene).

    model: name of the model file (user models folder first, then shipped; "" = the core's default).
    numPatches: patches drawn from the moving volume (at least the method's minimum of 20).
    localSearch: CSNGF search of the TSPM estimate's neighbourhood before the refinement (off: as in the paper).
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    outputTransform: vtkMRMLLinearTransformNode
    diagnosticsTable: vtkMRMLTableNode
    outputVolume: vtkMRMLScalarVolumeNode
    placeMovingUnderTransform: bool = True
    model: str = ""
    refineMetric: Annotated[str, Choice(["mi", "nmi", "mse", "none"])] = "mi"
    numPatches: Annotated[int, WithinRange(20, 1000)] = 100
    seed: Annotated[int, Minimum(0)] = 0
    localSearch: bool = True
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"


#
# PartialVolumePreregistrationWidget
#


class PartialVolumePreregistrationWidget(ChildRunMixin, ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget,
                                         VTKObservationMixin):
    runName = "PartialVolumePreregistration"

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PartialVolumePreregistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PartialVolumePreregistrationLogic()
        self.ui.progressBar.visible = False

        self.observeSceneClose()  # scene close: stop a run, release / retake the parameter node
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.updateModels)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        # Preselect the first two volumes to save the user a few clicks.
        volumes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                   if not n.IsA("vtkMRMLLabelMapVolumeNode")]
        if not self._parameterNode.fixedVolume and volumes:
            self._parameterNode.fixedVolume = volumes[0]
        if not self._parameterNode.movingVolume and len(volumes) > 1:
            self._parameterNode.movingVolume = volumes[1]
        self.updateModels()

    def setParameterNode(self, inputParameterNode: Optional[PartialVolumePreregistrationParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets carry the "SlicerParameterName" dynamic property in the .ui file.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._checkCanApply()

    def updateModels(self) -> None:
        """List the model files (no model is loaded) and select the parameter node's model."""
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            for name, source, _path in self.logic.availableModels():
                combo.addItem(f"{name} ({_('user') if source == 'user' else _('shipped')})", name)
        finally:
            combo.blockSignals(wasBlocked)
        wanted = self._parameterNode.model if self._parameterNode else ""
        index = combo.findData(wanted) if wanted else -1
        combo.setCurrentIndex(index if index >= 0 else (0 if combo.count else -1))
        self.onModelSelected(combo.currentIndex)

    def onModelSelected(self, index) -> None:
        name = self.ui.modelComboBox.itemData(index) if index >= 0 else ""
        self.ui.modelComboBox.toolTip = self.logic.modelToolTip(name)
        if self._parameterNode is not None and self._parameterNode.model != (name or ""):
            self._parameterNode.model = name or ""
        self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self.isRunning():
            return  # the button is a Cancel button while running
        reason = self.logic.whyCannotRun(self._parameterNode)
        self.ui.applyButton.enabled = not reason
        self.ui.applyButton.toolTip = reason or _(
            "Locate the moving volume in the fixed volume (in a separate process).")

    def _showResult(self, outcome) -> str:
        if self._parameterNode is not None:
            self._parameterNode.outputTransform = outcome.nodes["transform"]
            self._parameterNode.diagnosticsTable = outcome.nodes["table"]
        return self.logic.resultText(outcome.result, outcome.seconds)


#
# PartialVolumePreregistrationLogic
#


class PartialVolumePreregistrationLogic(ScriptedLoadableModuleLogic, PartialPreregLogic):
    """The core's Qt-free node logic plus this module's parameter node; usable without the widget.

    Scripts can call the inherited ``register(fixedVolumeNode, movingVolumeNode, config=None,
    outputTransformNode=None, model=None, progress=None, cancel=None, diagnosticsTableNode=None,
    outputVolumeNode=None)``, which runs in this process and blocks. Apply declares the same run with
    :meth:`runSpecFromParameterNode` and runs it in a child process (``RegistrationSuiteLib.mrml.runner``).
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return PartialVolumePreregistrationParameterNode(super().getParameterNode())

    @staticmethod
    def availableModels():
        """``[(name, source, path)]`` of the model files, user models first (only lists files)."""
        return available_models()

    def modelToolTip(self, name) -> str:
        for modelName, source, path in self.availableModels():
            if modelName == name:
                return _("{source} model: {path}").format(source=source.capitalize(), path=path)
        return _("No model found: add one in the Registration Suite module (Models section).")

    def configFromParameterNode(self, parameterNode):
        """The one place where the module's parameters become a ``PartialPreregConfig`` (no torch needed)."""
        p = parameterNode
        return self.make_config(refine=p.refineMetric, num_patches=int(p.numPatches), seed=int(p.seed),
                                device=p.device, local_search=bool(p.localSearch))

    def whyCannotRun(self, parameterNode) -> str:
        """Why Apply must stay disabled ("" when it can run); shown as the Apply button's tooltip."""
        if parameterNode is None:
            return _("No parameter node.")
        fixed, moving = parameterNode.fixedVolume, parameterNode.movingVolume
        if not fixed or not moving:
            return _("Select a fixed (full) and a moving (partial) volume.")
        if fixed == moving:
            return _("The fixed and moving volumes must be different volumes.")
        if parameterNode.outputVolume in (fixed, moving):
            return _("The resampled volume must be a new volume, not the fixed or moving volume.")
        for node in (fixed, moving):
            if node.GetImageData() is None:
                return _("Volume '{name}' has no voxels.").format(name=node.GetName())
        if not self.availableModels():
            return _("No model found: add a model file in the Registration Suite module (Models section).")
        if parameterNode.model and parameterNode.model not in [m[0] for m in self.availableModels()]:
            return _("Model '{name}' is no longer available: press Refresh.").format(name=parameterNode.model)
        try:
            self.configFromParameterNode(parameterNode)
        except (InputError, ValueError) as error:
            return str(error)
        return ""

    def runSpecFromParameterNode(self, parameterNode):
        """What Apply runs in a child process: a ``RunSpec`` (volumes, ``partial-prereg`` options, outputs)."""
        p = parameterNode
        return self.run_spec(p.fixedVolume, p.movingVolume, self.configFromParameterNode(p), p.outputTransform,
                             p.model or None, p.diagnosticsTable, p.outputVolume, p.placeMovingUnderTransform)

    def runWithParameterNode(self, parameterNode, progress=None, cancel=None):
        """Blocking in-process run of what Apply does (console, tests); returns ``(result, transformNode,
        tableNode)``."""
        p = parameterNode
        result = self.register(p.fixedVolume, p.movingVolume, self.configFromParameterNode(p), p.outputTransform,
                               p.model or None, progress, cancel, p.diagnosticsTable, p.outputVolume)
        scene = p.fixedVolume.GetScene()
        transformNode = scene.GetNodeByID(result.diagnostics["output_transform_node_id"])
        tableNode = scene.GetNodeByID(result.diagnostics["diagnostics_table_node_id"])
        if p.placeMovingUnderTransform:
            p.movingVolume.SetAndObserveTransformNodeID(transformNode.GetID())
        p.outputTransform, p.diagnosticsTable = transformNode, tableNode
        return result, transformNode, tableNode

    @staticmethod
    def resultText(result, elapsedSeconds=None) -> str:
        """The result label: score line and warnings, then the diagnostics table's rows."""
        rows = "\n".join(f"{name}: {value}" for name, value in diagnostics_rows(result) if name != "Time (s)")
        return formatResultSummary(result, elapsedSeconds) + "\n" + rows


#
# PartialVolumePreregistrationTest
#


class PartialVolumePreregistrationTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_applyDisabledWithoutInputs()
        self.setUp()
        self.test_diagnosticsTable()
        self.setUp()
        self.test_locatesRotatedSlab()

    def test_applyDisabledWithoutInputs(self):
        logic = PartialVolumePreregistrationLogic()
        params = logic.getParameterNode()
        self.assertIn("Select", logic.whyCannotRun(params))
        config = logic.configFromParameterNode(params)
        self.assertEqual((config.refine, config.num_patches, config.seed), ("mi", 100, 0))

    def test_diagnosticsTable(self):
        """The table and the verdict from a known result (no torch, no model needed)."""
        import SimpleITK as sitk

        from RegistrationSuiteLib.mrml.partial_prereg_logic import diagnostics_table
        from RegistrationSuiteLib.result import RegistrationResult

        ransac = {"num_inliers": 12, "num_points": 80, "inlier_ratio": 0.15, "threshold_mm": 15.0,
                  "residuals_mm": [3.0, 4.0, 5.0] * 4 + [20.0] * 68}
        result = RegistrationResult("partial_prereg", sitk.Euler3DTransform(), diagnostics={
            "ransac": ransac, "refinement": {"metric": "mi", "before": 0.2, "after": 0.3, "improved": True},
            "doubtful": ["only 15% of the patch predictions agree (RANSAC inliers)"]})
        table = diagnostics_table(result, scene=slicer.mrmlScene)
        rows = {table.GetCellText(r, 0): table.GetCellText(r, 1) for r in range(table.GetNumberOfRows())}
        self.assertEqual(rows["Verdict"], "doubtful")
        self.assertIn("15%", rows["Reason"])
        self.assertEqual((rows["RANSAC inliers"], rows["Median residual (mm)"]), ("12 of 80", "4.00"))

    def test_locatesRotatedSlab(self):
        """Crop the T1 sample to an axial slab, rotate and shift it, locate it in the full T1 sample."""
        import numpy as np

        from RegistrationSuiteLib.geometry import rigid_about_center, rotation_angle_deg, rotation_from_quaternion
        from RegistrationSuiteLib.mrml.volumes import image_from_volume_node, volume_node_from_image
        from RegistrationSuiteLib.sample_data import sample_path

        logic = PartialVolumePreregistrationLogic()
        reason = torchSkipReason() or ("" if logic.availableModels() else "no TSPM model installed")
        if reason:  # "Reload and Test" calls runTest() directly: report and return rather than skipTest
            self.delayDisplay(f"Skipped: {reason}")
            return
        fixed = slicer.util.loadVolume(str(sample_path("T1")))
        full = image_from_volume_node(fixed)
        depth = full.GetSize()[2]
        moving = volume_node_from_image(full[:, :, depth // 2 - 12: depth // 2 + 12], slicer.mrmlScene, "T1 slab")
        bounds = np.zeros(6)
        moving.GetRASBounds(bounds)
        center = bounds.reshape(3, 2).mean(axis=1)
        half = np.radians(12.0) / 2  # 12 degrees about an oblique axis, ~7 mm shift
        axis = np.array([0.2, 0.6, 0.8]) / np.linalg.norm([0.2, 0.6, 0.8])
        rotation = rotation_from_quaternion(np.r_[np.cos(half), np.sin(half) * axis][None])[0]
        appliedMovingToNew = rigid_about_center(rotation, center, [5.0, -4.0, 3.0])  # RAS
        misalign = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        misalign.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(appliedMovingToNew))
        moving.SetAndObserveTransformNodeID(misalign.GetID())
        slicer.vtkSlicerTransformLogic.hardenTransform(moving)

        params = logic.getParameterNode()
        params.fixedVolume, params.movingVolume = fixed, moving
        from RegistrationSuiteLib.methods.partial_prereg import DEFAULT_MODEL  # the shipped MR model (T1, T2, FLAIR)

        names = [name for name, _source, _path in logic.availableModels()]
        params.model = DEFAULT_MODEL if DEFAULT_MODEL in names else names[0]
        params.refineMetric, params.seed, params.device = "mse", 0, "auto"  # same modality
        self.assertEqual(logic.whyCannotRun(params), "")
        import time

        from RegistrationSuiteLib.mrml.runner import SUCCEEDED, ChildRun

        spec = logic.runSpecFromParameterNode(params)  # what Apply does
        run = ChildRun(spec, base_environment=slicer.util.startupEnvironment()).start()
        fractions = []
        while run.poll() == "running":
            fractions.append(run.fraction)
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertEqual(run.state, SUCCEEDED, str(run.error))
        transformNode, tableNode = run.outcome.nodes["transform"], run.outcome.nodes["table"]
        self.assertIn("verdict", run.outcome.result.diagnostics)

        movingToFixed = slicer.util.arrayFromTransformMatrix(transformNode)  # ToParent, RAS
        residual = movingToFixed @ appliedMovingToNew  # identity if recovered exactly
        self.assertLess(float(rotation_angle_deg(residual[:3, :3])), 4.0)
        self.assertLess(float(np.linalg.norm(residual[:3, :3] @ center + residual[:3, 3] - center)), 5.0)
        self.assertGreater(max(fractions), 0.0)
        self.assertEqual(tableNode.GetCellText(0, 0), "Verdict")
        self.assertEqual(moving.GetParentTransformNode(), transformNode)
        role = slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()
        self.assertEqual(transformNode.GetNodeReferenceID(role), moving.GetID())
        self.delayDisplay("Test passed")

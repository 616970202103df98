"""Global Rigid Search: multimodal rigid alignment without initialisation (CSNGF, Öfverstedt et al. 2022).

The mathematics lives in the Qt-free core (``RegistrationSuiteLib.methods.global_rigid``) and the node handling in
``RegistrationSuiteLib.mrml.logic``; this file only connects the GUI to them. Apply runs
``registration-suite rigid-search`` in a child process (``RegistrationSuiteLib.mrml.runner``); torch is imported
only there, so the module loads and its panel works without torch.
"""

import logging
import os
from typing import Annotated, Optional

import vtk

import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLLinearTransformNode, vtkMRMLScalarVolumeNode
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

from RegistrationSuiteLib.mrml.logic import GlobalRigidSearchLogic as GlobalRigidSearchNodeLogic
from RegistrationSuiteWidgets import (
    ChildRunMixin,
    ParameterNodeWidgetMixin,
    formatResultSummary,
    registerSampleVolumes,
    torchSkipReason,
)

#
# GlobalRigidSearch
#


class GlobalRigidSearch(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Global Rigid Search")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["RegistrationSuite contributors (RegistrationSuite project)"]
        self.parent.helpText = _("""
Aligns a moving volume to a fixed volume with a rigid transform, without any initial alignment and across
modalities (e.g. T1/T2 MRI, CT, PET). The similarity of squared normalized gradient fields (CSNGF) is computed
by FFT for all shifts at once, for every rotation of a multi-level random search (uniform rotations at the
coarsest level, perturbations of the best ones at finer levels). Optional labelmap masks restrict the
comparison; the minimum overlap excludes shifts where the volumes barely touch.
<br><br>
Output: a linear transform (moving to fixed); optionally the moving volume placed under it and/or resampled
onto the fixed grid. The result shows the score (mean squared NGF similarity), a confidence (how much the best
solution stands out) and the time.
<br><br>
Same method on the command line: <code>registration-suite rigid-search --fixed F.nii.gz --moving M.nii.gz
--output T.h5</code>. Needs torch (installed through the PyTorch extension); uses a CUDA GPU when available.
""")
        self.parent.acknowledgementText = _("""
Method: J. Öfverstedt, J. Lindblad, N. Sladoje, "Cross-Sim-NGF: FFT-Based Global Rigid Multimodal Alignment
of Image Volumes using Normalized Gradient Fields", Biomedical Image Registration (WBIR 2022), LNCS 13386,
Springer, 2022 (arXiv:2110.10156); building on J. Öfverstedt, J. Lindblad, N. Sladoje, "Fast computation of mutual information
in the frequency domain with applications to global multimodal image alignment", Pattern Recognition Letters
159:196-203, 2022. Sample data: C-STAR stroke T1/T2 volumes via neurolabusc/VolumeRenderingData (MIT).
""")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Register the T1/T2 sample volumes shipped with the core package in the Sample Data module.

    Connected to ``startupCompleted()``: a Qt slot, so a failure is logged, never raised (no sample data is
    better than an error at every start-up)."""
    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    try:
        registerSampleVolumes(
            "RegistrationSuite",
            [
                ("RegistrationSuiteT1", "T1", "GlobalRigidSearchSampleT1.png"),
                ("RegistrationSuiteT2", "T2", "GlobalRigidSearchSampleT2.png"),
            ],
            iconsPath,
        )
    except Exception:  # noqa: BLE001 - a Qt slot at start-up
        logging.exception("RegistrationSuite: could not register the sample data")


#
# GlobalRigidSearchParameterNode
#


@parameterNodeWrapper
class GlobalRigidSearchParameterNode:
    """The module's parameters (saved with the scene).

    rotationsPerLevel: comma-separated rotation counts per pyramid level, coarse to fine ("" = defaults).
    minOverlap: minimum overlap fraction of the volumes for a shift to be considered.
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    fixedMask: vtkMRMLLabelMapVolumeNode
    movingMask: vtkMRMLLabelMapVolumeNode
    outputTransform: vtkMRMLLinearTransformNode
    outputVolume: vtkMRMLScalarVolumeNode
    placeMovingUnderTransform: bool = True
    rotationsPerLevel: str = ""
    minOverlap: Annotated[float, WithinRange(0.05, 1.0)] = 0.5
    seed: Annotated[int, Minimum(0)] = 0
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"


#
# GlobalRigidSearchWidget
#


class GlobalRigidSearchWidget(ChildRunMixin, ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget,
                              VTKObservationMixin):
    runName = "GlobalRigidSearch"

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GlobalRigidSearch.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GlobalRigidSearchLogic()
        self.ui.progressBar.visible = False

        self.observeSceneClose()  # scene close: stop a run, release / retake the parameter node
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
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

    def setParameterNode(self, inputParameterNode: Optional[GlobalRigidSearchParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets carry the "SlicerParameterName" dynamic property in the .ui file.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self.isRunning():
            return  # the button is a Cancel button while running
        reason = self.logic.whyCannotRun(self._parameterNode)
        self.ui.applyButton.enabled = not reason
        self.ui.applyButton.toolTip = reason or _("Run the global rigid search (in a separate process).")

    def _showResult(self, outcome) -> str:
        if self._parameterNode is not None:
            self._parameterNode.outputTransform = outcome.nodes["transform"]
        return formatResultSummary(outcome.result, outcome.seconds)


#
# GlobalRigidSearchLogic
#


class GlobalRigidSearchLogic(ScriptedLoadableModuleLogic, GlobalRigidSearchNodeLogic):
    """The core's Qt-free node logic plus this module's parameter node; usable without the widget.

    Scripts can call the inherited ``register(fixedVolumeNode, movingVolumeNode, config, outputTransformNode=None,
    fixedMaskNode=None, movingMaskNode=None, progress=None, cancel=None, outputVolumeNode=None,
    placeMovingUnderTransform=False)``, which runs in this process and blocks. Apply declares the same run with
    :meth:`runSpecFromParameterNode` and runs it in a child process (``RegistrationSuiteLib.mrml.runner``).
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return GlobalRigidSearchParameterNode(super().getParameterNode())

    @staticmethod
    def parseRotationsPerLevel(text):
        """``"1500,400,40"`` -> ``(1500, 400, 40)``; ``""`` -> ``None`` (the method's defaults)."""
        if not text.strip():
            return None
        try:
            counts = tuple(int(t) for t in text.replace(";", ",").split(",") if t.strip())
        except ValueError:
            counts = ()
        if not counts or min(counts) < 1:
            raise ValueError(f"Rotations per level: expected comma-separated positive integers such as "
                             f"'1500,400,40', got '{text}'")
        return counts

    @staticmethod
    def configFromParameterNode(parameterNode):
        """The one place where the module's parameters become a ``GlobalRigidConfig`` (no torch needed)."""
        from RegistrationSuiteLib.methods.global_rigid.config import GlobalRigidConfig

        options = {"min_overlap": float(parameterNode.minOverlap), "seed": int(parameterNode.seed),
                   "device": parameterNode.device}
        rotations = GlobalRigidSearchLogic.parseRotationsPerLevel(parameterNode.rotationsPerLevel)
        if rotations is not None:
            levels = GlobalRigidConfig().num_levels
            if len(rotations) != levels:
                raise ValueError(f"Rotations per level: expected {levels} counts (one per pyramid level, coarse "
                                 f"to fine), got {len(rotations)}: '{parameterNode.rotationsPerLevel}'")
            options["num_rotations"] = rotations
        return GlobalRigidConfig(**options)

    def whyCannotRun(self, parameterNode) -> str:
        """Why Apply must stay disabled ("" when it can run); shown as the Apply button's tooltip."""
        if parameterNode is None:
            return _("No parameter node.")
        fixed, moving = parameterNode.fixedVolume, parameterNode.movingVolume
        if not fixed or not moving:
            return _("Select a fixed and a moving volume.")
        if fixed == moving:
            return _("The fixed and moving volumes must be different volumes.")
        if parameterNode.outputVolume in (fixed, moving):
            return _("The resampled volume must be a new volume, not the fixed or moving volume.")
        for node in (fixed, moving, parameterNode.fixedMask, parameterNode.movingMask):
            if node and node.GetImageData() is None:
                return _("Volume '{name}' has no voxels.").format(name=node.GetName())
        try:
            self.configFromParameterNode(parameterNode)
        except ValueError as error:
            return str(error)
        return ""

    def runSpecFromParameterNode(self, parameterNode):
        """What Apply runs in a child process: a ``RunSpec`` (inputs, ``rigid-search`` options, outputs)."""
        p = parameterNode
        return self.run_spec(p.fixedVolume, p.movingVolume, self.configFromParameterNode(p), p.outputTransform,
                             p.fixedMask, p.movingMask, p.outputVolume, p.placeMovingUnderTransform)

    def runWithParameterNode(self, parameterNode, progress=None, cancel=None):
        """Blocking in-process run of what Apply does (console, tests); returns ``(result, transformNode)``."""
        p = parameterNode
        result = self.register(p.fixedVolume, p.movingVolume, self.configFromParameterNode(p), p.outputTransform,
                               p.fixedMask, p.movingMask, progress, cancel, outputVolumeNode=p.outputVolume,
                               placeMovingUnderTransform=p.placeMovingUnderTransform)
        transformNode = p.fixedVolume.GetScene().GetNodeByID(result.diagnostics["output_transform_node_id"])
        p.outputTransform = transformNode
        return result, transformNode


#
# GlobalRigidSearchTest
#


class GlobalRigidSearchTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_applyDisabledWithoutInputs()
        self.setUp()
        self.test_childRunRecoversKnownRotationAndCancels()

    def test_applyDisabledWithoutInputs(self):
        logic = GlobalRigidSearchLogic()
        params = logic.getParameterNode()
        self.assertIn("Select", logic.whyCannotRun(params))
        params.rotationsPerLevel = "100,abc"
        with self.assertRaises(ValueError):
            logic.parseRotationsPerLevel(params.rotationsPerLevel)
        self.assertEqual(logic.parseRotationsPerLevel(" 300, 60 ,20"), (300, 60, 20))

    def _misalignedSamples(self):
        """The T2 sample and the T1 sample moved by a known rotation and shift; returns the nodes, the applied
        movingToNew matrix (RAS) and the centre of the moving volume."""
        import numpy as np

        from RegistrationSuiteLib.geometry import rigid_about_center, rotation_from_quaternion
        from RegistrationSuiteLib.sample_data import sample_path

        fixed = slicer.util.loadVolume(str(sample_path("T2")))
        moving = slicer.util.loadVolume(str(sample_path("T1")))
        bounds = np.zeros(6)
        moving.GetRASBounds(bounds)
        center = bounds.reshape(3, 2).mean(axis=1)
        half = np.radians(20.0) / 2  # 20 degrees about an oblique axis, ~10 mm shift
        axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
        rotation = rotation_from_quaternion(np.r_[np.cos(half), np.sin(half) * axis][None])[0]
        appliedMovingToNew = rigid_about_center(rotation, center, [6.0, -6.0, 5.0])  # RAS
        misalign = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        misalign.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(appliedMovingToNew))
        moving.SetAndObserveTransformNodeID(misalign.GetID())
        slicer.vtkSlicerTransformLogic.hardenTransform(moving)
        return fixed, moving, appliedMovingToNew, center

    def test_childRunRecoversKnownRotationAndCancels(self):
        """What Apply does: the child process recovers a known misalignment; a cancelled run writes nothing."""
        import numpy as np

        from RegistrationSuiteLib.geometry import rotation_angle_deg
        from RegistrationSuiteLib.mrml.runner import CANCELLED, SUCCEEDED, ChildRun

        reason = torchSkipReason()
        if reason:  # "Reload and Test" calls runTest() directly: report and return rather than skipTest
            self.delayDisplay(f"Skipped: {reason}")
            return
        fixed, moving, appliedMovingToNew, center = self._misalignedSamples()
        logic = GlobalRigidSearchLogic()
        params = logic.getParameterNode()
        params.fixedVolume, params.movingVolume = fixed, moving
        params.placeMovingUnderTransform = True
        params.rotationsPerLevel, params.seed, params.device = "600,200,40", 0, "auto"  # small but robust
        self.assertEqual(logic.whyCannotRun(params), "")

        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        spec = logic.runSpecFromParameterNode(params)
        cancelled = ChildRun(spec, base_environment=slicer.util.startupEnvironment()).start()
        cancelled.cancel()
        self.assertEqual(cancelled.wait(timeout=60), CANCELLED)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.assertIsNone(moving.GetParentTransformNode())

        params.outputVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "resampled")
        spec = logic.runSpecFromParameterNode(params)
        run = ChildRun(spec, base_environment=slicer.util.startupEnvironment()).start()
        self.assertEqual(run.wait(timeout=600), SUCCEEDED, str(run.error))
        transformNode = run.outcome.nodes["transform"]
        movingToFixed = slicer.util.arrayFromTransformMatrix(transformNode)  # ToParent, RAS
        residual = movingToFixed @ appliedMovingToNew  # identity if recovered exactly
        self.assertLess(float(rotation_angle_deg(residual[:3, :3])), 3.0)
        self.assertLess(float(np.linalg.norm(residual[:3, :3] @ center + residual[:3, 3] - center)), 4.0)
        self.assertTrue(0.0 <= run.outcome.result.confidence <= 1.0)
        role = slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()
        self.assertEqual(transformNode.GetNodeReferenceID(role), moving.GetID())
        self.assertEqual(moving.GetParentTransformNode(), transformNode)
        self.assertEqual(params.outputVolume.GetImageData().GetDimensions(), fixed.GetImageData().GetDimensions())
        self.delayDisplay("Test passed")

"""Deformable Registration: dense displacement field by instance optimisation, optionally started by a network.

The mathematics lives in the Qt-free core (``RegistrationSuiteLib.methods.deformable``) and the node handling in
``RegistrationSuiteLib.mrml.deformable_logic``; this file only connects the GUI to them. Apply runs
``registration-suite deformable`` in a child process (``RegistrationSuiteLib.mrml.runner``); torch is imported only
there, so the module loads and its panel works without torch.
"""

from typing import Annotated, Optional, Union

import vtk

import slicer
from slicer import (
    vtkMRMLGridTransformNode,
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTransformNode,
)
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
from RegistrationSuiteLib.mrml import deformable_logic
from RegistrationSuiteWidgets import ChildRunMixin, ParameterNodeWidgetMixin, torchSkipReason

#
# DeformableRegistration
#


class DeformableRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Deformable Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["RegistrationSuite contributors (RegistrationSuite project)"]
        self.parent.helpText = _("""
Aligns a moving volume to a fixed volume with a dense displacement field, after an optional initial transform (e.g.
the output of Global Rigid Search or Partial-Volume Preregistration). The field lives on a working grid (default
automatic: 1.5 mm, coarser for large volumes; 0 in the spacing box) covering the fixed volume and is found by
instance optimisation (Adam, coarse to fine; LNCC for one contrast, MIND-SSC or NGF across contrasts; diffusion or
bending regularisation), optionally started from a field network's estimate. Two field networks ship
(deformable_mr_synthetic, RegNet scheme; deformable_mr_multimodal, Cao et al. scheme); the default is optimisation
only. The preset sets the number of optimisation steps and
the regularisation weight. With a model, Advanced sets how many times the network is applied (a cascade) and how
many of the coarsest optimisation levels are skipped after its start.
<br><br>
Output: a grid transform (moving to fixed; the initial transform is included), optionally the Jacobian determinant
of the mapping (values below 0 are folds) and the moving volume resampled onto the fixed grid. The result shows the
fraction of folded voxels, the similarity before and after, and the time.
<br><br>
Same method on the command line: <code>registration-suite deformable --fixed F.nii.gz --moving M.nii.gz
--output T.h5</code>. Needs torch (installed through the PyTorch extension); uses a CUDA GPU when available.
""")
        self.parent.acknowledgementText = _("""
Methods: H. Sokooti et al., "Nonrigid Image Registration Using Multi-scale 3D Convolutional Neural Networks"
(RegNet), MICCAI 2017; X. Cao et al., "Deformable Image Registration Using a Cue-Aware Deep Regression Network",
IEEE TBME 2018; M. P. Heinrich et al., "MIND: Modality independent neighbourhood descriptor for multi-modal
deformable registration", Medical Image Analysis 2012.
""")


#
# DeformableRegistrationParameterNode
#


@parameterNodeWrapper
class DeformableRegistrationParameterNode:
    """The module's parameters (saved with the scene).

    model: model name ("" = none: optimisation only).
    preset: fast / balanced / accurate: optimisation steps and regularisation weight.
    overrideRegularization: use ``regularization`` instead of the preset's weight.
    networkPasses, networkSkipLevels: with a model, the network's passes (a cascade) and the coarsest
    optimisation levels skipped after its start (``--network-passes``, ``--network-skip-levels``; defaults
    from ``DeformableConfig``).
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    initialTransform: vtkMRMLTransformNode
    fixedMask: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]
    movingMask: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]
    outputTransform: vtkMRMLGridTransformNode
    outputJacobian: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    placeMovingUnderTransform: bool = True
    model: str = ""
    networkPasses: Annotated[int, WithinRange(*deformable_logic.NETWORK_PASSES_RANGE)] = \
        deformable_logic.DEFAULT_NETWORK_PASSES
    networkSkipLevels: Annotated[int, WithinRange(*deformable_logic.NETWORK_SKIP_LEVELS_RANGE)] = \
        deformable_logic.DEFAULT_NETWORK_SKIP_LEVELS
    preset: Annotated[str, Choice(["fast", "balanced", "accurate"])] = "balanced"
    similarity: Annotated[str, Choice(["auto", "lncc", "ncc", "mind", "ngf"])] = "auto"
    overrideRegularization: bool = False
    regularization: Annotated[float, WithinRange(0.0, 10.0)] = 0.1
    regularizer: Annotated[str, Choice(["diffusion", "bending"])] = "diffusion"
    diffeomorphic: bool = False
    spacing: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    seed: Annotated[int, Minimum(0)] = 0
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"


#
# DeformableRegistrationWidget
#


class DeformableRegistrationWidget(ChildRunMixin, ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget,
                                   VTKObservationMixin):
    runName = "DeformableRegistration"

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DeformableRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DeformableRegistrationLogic()
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

    def setParameterNode(self, inputParameterNode: Optional[DeformableRegistrationParameterNode]) -> None:
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
        """List the model files (no model is loaded) after "none (optimisation only)"; select the parameter
        node's model."""
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            combo.addItem(_("none (optimisation only)"), "")
            for name, source, _path in self.logic.availableModels():
                combo.addItem(f"{name} ({_('user') if source == 'user' else _('shipped')})", name)
        finally:
            combo.blockSignals(wasBlocked)
        wanted = self._parameterNode.model if self._parameterNode else ""
        index = combo.findData(wanted) if wanted else 0
        combo.setCurrentIndex(index if index >= 0 else 0)
        self.onModelSelected(combo.currentIndex)

    def onModelSelected(self, index) -> None:
        name = self.ui.modelComboBox.itemData(index) if index > 0 else ""
        self.ui.modelComboBox.toolTip = self.logic.modelToolTip(name)
        if self._parameterNode is not None and self._parameterNode.model != (name or ""):
            self._parameterNode.model = name or ""
        self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self.isRunning():
            return  # the button is a Cancel button while running
        if self._parameterNode is not None:
            self.ui.regularizationSliderWidget.enabled = self._parameterNode.overrideRegularization
            withModel = bool(self._parameterNode.model)  # the network options matter only with a model
            self.ui.networkPassesSpinBox.enabled = withModel
            self.ui.networkSkipLevelsSpinBox.enabled = withModel
        reason = self.logic.whyCannotRun(self._parameterNode)
        self.ui.applyButton.enabled = not reason
        self.ui.applyButton.toolTip = reason or _("Run the deformable registration (in a separate process).")

    def _showResult(self, outcome) -> str:
        if self._parameterNode is not None:
            self._parameterNode.outputTransform = outcome.nodes["transform"]
            if "jacobian" in outcome.nodes:
                self._parameterNode.outputJacobian = outcome.nodes["jacobian"]
        return self.logic.resultText(outcome.result, outcome.seconds)


#
# DeformableRegistrationLogic
#


class DeformableRegistrationLogic(ScriptedLoadableModuleLogic):
    """This module's parameter node and its translation into a child-process run; usable without the widget
    (``runSpecFromParameterNode`` + ``RegistrationSuiteLib.mrml.runner.ChildRun`` or ``run_blocking``)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return DeformableRegistrationParameterNode(super().getParameterNode())

    @staticmethod
    def availableModels():
        """``[(name, source, path)]`` of the model files, user models first (only lists files)."""
        return deformable_logic.deformable_models()

    def modelToolTip(self, name) -> str:
        if not name:
            return _("No field network: the field is found by instance optimisation alone.")
        for modelName, source, path in self.availableModels():
            if modelName == name:
                return _("{source} model: {path}").format(source=source.capitalize(), path=path)
        return _("Model '{name}' not found: press Refresh.").format(name=name)

    @staticmethod
    def configFromParameterNode(parameterNode):
        """The one place where the module's parameters become a ``DeformableConfig`` (no torch needed)."""
        p = parameterNode
        return deformable_logic.make_config(
            p.preset, similarity=p.similarity, model=p.model or None,
            regularization=float(p.regularization) if p.overrideRegularization else None,
            regularizer=p.regularizer, diffeomorphic=bool(p.diffeomorphic),
            network_passes=int(p.networkPasses), network_skip_levels=int(p.networkSkipLevels),
            spacing_mm=float(p.spacing) if float(p.spacing) > 0 else None,
            seed=int(p.seed), device=p.device)

    def whyCannotRun(self, parameterNode) -> str:
        """Why Apply must stay disabled ("" when it can run); shown as the Apply button's tooltip."""
        if parameterNode is None:
            return _("No parameter node.")
        fixed, moving = parameterNode.fixedVolume, parameterNode.movingVolume
        if not fixed or not moving:
            return _("Select a fixed and a moving volume.")
        if fixed == moving:
            return _("The fixed and moving volumes must be different volumes.")
        for output in (parameterNode.outputVolume, parameterNode.outputJacobian):
            if output in (fixed, moving):
                return _("Output volumes must be new volumes, not the fixed or moving volume.")
        if parameterNode.outputVolume and parameterNode.outputVolume == parameterNode.outputJacobian:
            return _("The resampled volume and the Jacobian volume must be different volumes.")
        if parameterNode.initialTransform and parameterNode.initialTransform == parameterNode.outputTransform:
            return _("The output transform must differ from the initial transform (it will include it).")
        for node in (fixed, moving):
            if node.GetImageData() is None:
                return _("Volume '{name}' has no voxels.").format(name=node.GetName())
        if parameterNode.model and parameterNode.model not in [m[0] for m in self.availableModels()]:
            return _("Model '{name}' is no longer available: press Refresh.").format(name=parameterNode.model)
        try:
            self.configFromParameterNode(parameterNode)
        except (InputError, ValueError) as error:
            return str(error)
        return ""

    def runSpecFromParameterNode(self, parameterNode):
        """What Apply runs in a child process: a ``RunSpec`` (inputs, ``deformable`` options, outputs)."""
        p = parameterNode
        return deformable_logic.deformable_run_spec(
            p.fixedVolume, p.movingVolume, self.configFromParameterNode(p), outputTransformNode=p.outputTransform,
            initialTransformNode=p.initialTransform, fixedMaskNode=p.fixedMask, movingMaskNode=p.movingMask,
            outputJacobianNode=p.outputJacobian, outputVolumeNode=p.outputVolume,
            placeMovingUnderTransform=p.placeMovingUnderTransform)

    @staticmethod
    def resultText(result, elapsedSeconds=None) -> str:
        """The results label: folding %, similarity before → after, model and time, warnings."""
        return "\n".join(deformable_logic.result_lines(result, elapsedSeconds))


#
# DeformableRegistrationTest
#


class DeformableRegistrationTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_applyDisabledWithoutInputs()
        self.setUp()
        self.test_childRunRecoversKnownShiftAndCancels()

    def test_applyDisabledWithoutInputs(self):
        logic = DeformableRegistrationLogic()
        params = logic.getParameterNode()
        self.assertIn("Select", logic.whyCannotRun(params))
        config = logic.configFromParameterNode(params)
        steps, weight = deformable_logic.PRESETS["balanced"]
        self.assertEqual((config.io_steps, config.regularization, config.model), (steps, weight, None))
        self.assertEqual((config.network_passes, config.network_skip_levels),
                         (deformable_logic.DEFAULT_NETWORK_PASSES, deformable_logic.DEFAULT_NETWORK_SKIP_LEVELS))
        params.preset, params.overrideRegularization, params.regularization = "fast", True, 0.7
        config = logic.configFromParameterNode(params)
        self.assertEqual((config.io_steps, config.regularization), (deformable_logic.PRESETS["fast"][0], 0.7))

    def test_childRunRecoversKnownShiftAndCancels(self):
        """What Apply does: the child process finds a known shift (fixed → moving mapping checked at the centre
        of the fixed volume); a cancelled run writes nothing."""
        import numpy as np
        import SimpleITK as sitk

        from RegistrationSuiteLib.mrml.runner import CANCELLED, SUCCEEDED, ChildRun
        from RegistrationSuiteLib.mrml.volumes import volume_node_from_image
        from RegistrationSuiteLib.sample_data import sample_path

        reason = torchSkipReason()
        if reason:  # "Reload and Test" calls runTest() directly: report and return rather than skipTest
            self.delayDisplay(f"Skipped: {reason}")
            return
        shiftLps = np.array([4.0, -3.0, 2.0])  # fixed point x corresponds to moving point x + shift
        t1 = sitk.ReadImage(str(sample_path("T1")), sitk.sitkFloat32)
        small = sitk.Shrink(sitk.SmoothingRecursiveGaussian(t1, 3.0), [2, 2, 2])
        shifted = sitk.Resample(small, small, sitk.TranslationTransform(3, tuple(-shiftLps)), sitk.sitkLinear, 0.0)
        fixed = volume_node_from_image(small, slicer.mrmlScene, "fixed")
        moving = volume_node_from_image(shifted, slicer.mrmlScene, "moving")

        logic = DeformableRegistrationLogic()
        params = logic.getParameterNode()
        params.fixedVolume, params.movingVolume = fixed, moving
        params.preset, params.similarity, params.spacing, params.device = "balanced", "lncc", 4.0, "auto"
        params.placeMovingUnderTransform = True
        self.assertEqual(logic.whyCannotRun(params), "")

        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        cancelled = ChildRun(logic.runSpecFromParameterNode(params),
                             base_environment=slicer.util.startupEnvironment()).start()
        cancelled.cancel()
        self.assertEqual(cancelled.wait(timeout=60), CANCELLED)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.assertIsNone(moving.GetParentTransformNode())

        params.outputJacobian = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "jacobian")
        run = ChildRun(logic.runSpecFromParameterNode(params), base_environment=slicer.util.startupEnvironment())
        run.start()
        self.assertEqual(run.wait(timeout=600), SUCCEEDED, str(run.error))
        transformNode = run.outcome.nodes["transform"]
        self.assertTrue(transformNode.IsA("vtkMRMLGridTransformNode"))
        bounds = np.zeros(6)
        fixed.GetRASBounds(bounds)
        centre = bounds.reshape(3, 2).mean(axis=1)
        mapped = np.asarray(transformNode.GetTransformFromParent().TransformPoint(*centre))  # fixed → moving, RAS
        self.assertLess(float(np.linalg.norm(mapped - centre - shiftLps * [-1.0, -1.0, 1.0])), 1.5)
        self.assertEqual(moving.GetParentTransformNode(), transformNode)
        role = slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()
        self.assertEqual(transformNode.GetNodeReferenceID(role), moving.GetID())
        self.assertIn("Folding:", logic.resultText(run.outcome.result, run.outcome.seconds))
        self.assertEqual(params.outputJacobian.GetDisplayNode().GetColorNodeID(),
                         deformable_logic.JACOBIAN_COLOR_NODE_ID)
        self.delayDisplay("Test passed")

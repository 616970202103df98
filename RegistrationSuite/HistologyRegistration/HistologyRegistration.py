"""Histology Registration: align two slides of consecutive or re-stained sections (H&E, immunohistochemistry).

The mathematics lives in the Qt-free core (``RegistrationSuiteLib.methods.histology``) and the run declaration in
``RegistrationSuiteLib.mrml.histology_logic``; this file only connects the GUI to them. Apply runs
``registration-suite histology`` in a child process (``RegistrationSuiteLib.mrml.runner``); torch is imported only
there, so the module loads and its panel works without torch.
"""

from typing import Annotated, Optional

import vtk

import slicer
from slicer import (
    vtkMRMLGridTransformNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLVectorVolumeNode,
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

from RegistrationSuiteWidgets import ChildRunMixin, ParameterNodeWidgetMixin, formatResultSummary, torchSkipReason

#
# HistologyRegistration
#


class HistologyRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Histology Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["RegistrationSuite contributors (RegistrationSuite project)"]
        self.parent.helpText = _("""
Aligns two histology slides (consecutive or re-stained sections, e.g. H&E and an immunohistochemistry stain):
tissue detection and optical-density features, a full rotation search (0-359 degrees, optionally mirrored
sections), an affine refinement, then optionally the multi-magnification networks (Model: a model name such as
histology_multimag, or none) or a non-rigid instance optimisation.
<br><br>
Inputs: the fixed and moving slides as Slicer loads them (RGB or scalar volumes with one slice); optional
markups on the fixed slide to transfer. Outputs: a grid transform (place the moving slide under it to see it
over the fixed slide), the markups' positions in the moving slide, optionally the moving slide warped onto the
fixed one (colours kept). Results: rotation and mirror found, time, similarity before and after.
<br><br>
Same method on the command line: <code>registration-suite histology --fixed F.png --moving M.png --output
T.h5</code> (also pyramidal TIFF/OME-TIFF/SVS slides and ANHIR landmark files).
""")
        self.parent.acknowledgementText = _("""
Pipeline after the reference of the multi-magnification histology registration paper (WBIR 2022): tissue mask,
rotation search, affine stage, then the paper's multi-magnification local affine and non-rigid patch networks
(small CPU versions trained here, see the model card) or an instance optimisation.
""")


#
# HistologyRegistrationParameterNode
#


@parameterNodeWrapper
class HistologyRegistrationParameterNode:
    """The module's parameters (saved with the scene).

    mirror: also search mirrored sections ("auto"), never ("no"), or only mirrored ("yes").
    workingSize: longest side in pixels of the fixed slide while registering.
    ioSteps: non-rigid instance optimisation steps per level (0 = affine only); not used with a model.
    model: multi-magnification model name or .pt path ("none": classical stages only).
    networkPasses: passes of the networks (with a model).
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    fixedPoints: vtkMRMLMarkupsFiducialNode
    outputTransform: vtkMRMLGridTransformNode
    outputVolume: vtkMRMLVectorVolumeNode
    placeMovingUnderTransform: bool = True
    mirror: Annotated[str, Choice(["auto", "no", "yes"])] = "auto"
    workingSize: Annotated[int, WithinRange(64, 4096)] = 256
    ioSteps: Annotated[int, Minimum(0)] = 0
    model: str = "none"
    networkPasses: Annotated[int, WithinRange(1, 5)] = 3
    seed: Annotated[int, Minimum(0)] = 0
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"


#
# HistologyRegistrationWidget
#


class HistologyRegistrationWidget(ChildRunMixin, ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget,
                                  VTKObservationMixin):
    runName = "HistologyRegistration"

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/HistologyRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = HistologyRegistrationLogic()
        self.ui.progressBar.visible = False

        self.observeSceneClose()  # scene close: stop a run, release / retake the parameter node
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        volumes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                   if not n.IsA("vtkMRMLLabelMapVolumeNode")]
        if not self._parameterNode.fixedVolume and volumes:
            self._parameterNode.fixedVolume = volumes[0]
        if not self._parameterNode.movingVolume and len(volumes) > 1:
            self._parameterNode.movingVolume = volumes[1]

    def setParameterNode(self, inputParameterNode: Optional[HistologyRegistrationParameterNode]) -> None:
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
        self.ui.applyButton.toolTip = reason or _("Register the slides (in a separate process).")

    def _showResult(self, outcome) -> str:
        if self._parameterNode is not None:
            self._parameterNode.outputTransform = outcome.nodes["transform"]
        return self.logic.describeResult(outcome.result, outcome.seconds)


#
# HistologyRegistrationLogic
#


class HistologyRegistrationLogic(ScriptedLoadableModuleLogic):
    """This module's parameter node and the run it declares; usable without the widget.

    Apply declares the run with :meth:`runSpecFromParameterNode` (``RegistrationSuiteLib.mrml.histology_logic``)
    and runs it in a child process (``RegistrationSuiteLib.mrml.runner``).
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return HistologyRegistrationParameterNode(super().getParameterNode())

    @staticmethod
    def optionsFromParameterNode(parameterNode):
        """The CLI options of a run (the one place where the module's parameters become options)."""
        p = parameterNode
        model = (p.model or "none").strip() or "none"
        if model.lower() != "none":
            net = ["--model", model, "--iterations", str(int(p.networkPasses)), "--io-steps", "0"]
        else:
            net = ["--io-steps", str(int(p.ioSteps))]
        return ["--mirror", p.mirror, "--working-size", str(int(p.workingSize)), *net,
                "--seed", str(int(p.seed)), "--device", p.device]

    def whyCannotRun(self, parameterNode) -> str:
        """Why Apply must stay disabled ("" when it can run); shown as the Apply button's tooltip."""
        if parameterNode is None:
            return _("No parameter node.")
        fixed, moving = parameterNode.fixedVolume, parameterNode.movingVolume
        if not fixed or not moving:
            return _("Select a fixed and a moving slide.")
        if fixed == moving:
            return _("The fixed and moving slides must be different volumes.")
        if parameterNode.outputVolume in (fixed, moving):
            return _("The warped slide must be a new volume, not the fixed or moving slide.")
        for node in (fixed, moving):
            if node.GetImageData() is None:
                return _("Volume '{name}' has no voxels.").format(name=node.GetName())
            if node.GetImageData().GetDimensions()[2] != 1:
                return _("Volume '{name}' is not a single slice.").format(name=node.GetName())
        points = parameterNode.fixedPoints
        if points and points.GetNumberOfControlPoints() == 0:
            return _("The markups to transfer have no points.")
        return ""

    def runSpecFromParameterNode(self, parameterNode):
        """What Apply runs in a child process: a ``RunSpec`` (inputs, ``histology`` options, outputs)."""
        from RegistrationSuiteLib.mrml.histology_logic import run_spec

        p = parameterNode
        return run_spec(p.fixedVolume, p.movingVolume, outputTransformNode=p.outputTransform,
                        fixedPointsNode=p.fixedPoints, outputVolumeNode=p.outputVolume,
                        placeMovingUnderTransform=p.placeMovingUnderTransform,
                        options=self.optionsFromParameterNode(p))

    @staticmethod
    def describeResult(result, seconds=None) -> str:
        """Rotation and mirror found, NCC before/after, then the common summary."""
        d = result.diagnostics or {}
        head = _("Rotation {angle:.1f}°{mirror}, NCC {before:.3f} → {after:.3f}").format(
            angle=float(d.get("rotation_deg", float("nan"))),
            mirror=_(" (mirrored)") if d.get("mirrored") else "",
            before=float(d.get("ncc_before", float("nan"))), after=float(d.get("ncc_after", float("nan"))))
        return head + "\n" + formatResultSummary(result, seconds)


#
# HistologyRegistrationTest
#


class HistologyRegistrationTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_applyDisabledWithoutInputs()
        self.setUp()
        self.test_childRunRecoversKnownRotationAndCancels()

    def test_applyDisabledWithoutInputs(self):
        logic = HistologyRegistrationLogic()
        params = logic.getParameterNode()
        self.assertIn("Select", logic.whyCannotRun(params))
        self.assertEqual(logic.optionsFromParameterNode(params)[:2], ["--mirror", "auto"])

    def _slides(self):
        """A synthetic H&E-like slide and a DAB-like copy rotated by 40° about its centre (one slice each)."""
        import numpy as np
        import SimpleITK as sitk
        from scipy import ndimage

        from RegistrationSuiteLib.mrml.histology_logic import vector_volume_node_from_image

        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:200, 0:200] / 200.0
        tissue = (((xx - 0.45) / 0.27) ** 2 + ((yy - 0.52) / 0.2) ** 2 < 1) | \
                 (((xx - 0.68) / 0.1) ** 2 + ((yy - 0.3) / 0.09) ** 2 < 1)
        texture = ndimage.gaussian_filter(rng.normal(size=(200, 200)), 5.0)
        density = tissue * (0.3 + 0.7 * (texture - texture.min()) / np.ptp(texture))
        moved = ndimage.rotate(density, 40.0, reshape=False, order=1)

        def node(values, od, name):
            rgb = np.clip(255 * 0.96 * np.exp(-1.5 * values[..., None] * np.asarray(od)), 0, 255).astype(np.uint8)
            return vector_volume_node_from_image(sitk.GetImageFromArray(rgb, isVector=True), slicer.mrmlScene, name)

        return node(density, [0.55, 0.85, 0.45], "fixed"), node(moved, [0.27, 0.57, 0.78], "moving")

    def test_childRunRecoversKnownRotationAndCancels(self):
        """What Apply does: the child finds the 40° rotation; a cancelled run changes nothing in the scene."""
        from RegistrationSuiteLib.mrml.runner import CANCELLED, SUCCEEDED, ChildRun

        reason = torchSkipReason()
        if reason:  # "Reload and Test" calls runTest() directly: report and return rather than skipTest
            self.delayDisplay(f"Skipped: {reason}")
            return
        fixed, moving = self._slides()
        logic = HistologyRegistrationLogic()
        params = logic.getParameterNode()
        params.fixedVolume, params.movingVolume = fixed, moving
        params.mirror, params.workingSize = "no", 200
        self.assertEqual(logic.whyCannotRun(params), "")

        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        cancelled = ChildRun(logic.runSpecFromParameterNode(params)).start()
        cancelled.cancel()
        self.assertEqual(cancelled.wait(timeout=60), CANCELLED)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.assertIsNone(moving.GetParentTransformNode())

        run = ChildRun(logic.runSpecFromParameterNode(params)).start()
        self.assertEqual(run.wait(timeout=600), SUCCEEDED, str(run.error))
        transformNode = run.outcome.nodes["transform"]
        self.assertTrue(transformNode.IsA("vtkMRMLGridTransformNode"))
        self.assertEqual(moving.GetParentTransformNode(), transformNode)
        angle = run.outcome.result.diagnostics["rotation_deg"]
        self.assertLess(min(abs(angle - 40.0), abs(angle - 320.0)), 2.0)  # either sense of the image axes
        self.assertIn("Rotation", logic.describeResult(run.outcome.result, run.outcome.seconds))
        self.delayDisplay("Test passed")

"""Organ Point Cloud Registration: multi-organ Bayesian coherent point drift (MO-BCPD, Joutard et al. 2022).

The mathematics lives in the Qt-free core (``RegistrationSuiteLib.methods.organ_point_cloud``) and the node
handling in ``RegistrationSuiteLib.mrml.organ_logic``; this file only connects the GUI to them. torch is
imported lazily (through the PyTorch extension), so the module loads even when torch is not installed.
"""

import json
from typing import Annotated, Optional, Union

import qt
import vtk

import slicer
from slicer import vtkMRMLGridTransformNode, vtkMRMLLabelMapVolumeNode, vtkMRMLModelNode, vtkMRMLSegmentationNode
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
from RegistrationSuiteLib.mrml.organ_logic import OrganPointCloudLogic as OrganPointCloudNodeLogic
from RegistrationSuiteLib.mrml.organ_logic import (
    DEFAULT_COMMON_FOV,
    DEFAULT_SAMPLING,
    SAMPLING_CHOICES,
    organ_rows_from_table,
    organ_table_rows,
    parse_matrix,
)
from RegistrationSuiteWidgets import ChildRunMixin, ParameterNodeWidgetMixin, formatResultSummary, torchSkipReason

#: Columns of the organ table.
USE_COLUMN, LABEL_COLUMN, NAME_COLUMN, LAMBDA_COLUMN, BETA_COLUMN = 0, 1, 2, 3, 4

#
# OrganPointCloudRegistration
#


class OrganPointCloudRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Organ Point Cloud Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["RegistrationSuite contributors (RegistrationSuite project)"]
        self.parent.helpText = _("""
Deformable registration of organ surfaces (multi-organ Bayesian coherent point drift, MO-BCPD). Each input is a
segmentation (one organ per segment), a labelmap volume (one organ per label) or a model; organs are matched by
label. Each organ gets its own expected deformation Λ and coherence bandwidth B (organ table); the coherence
preset says how organs move together: <i>independent</i> (organs slide along each other), <i>global</i> (one smooth
field, like BCPD) or a <i>custom</i> matrix. Advanced: points are drawn <i>spread</i> (farthest-point per organ,
the default; not in the paper) or <i>random</i>.
<br><br>
Segment labels: a segment tag <code>label</code>, else the segment's value in the labelmap (segmentations imported
from a label file keep its values), else a number in its name ("Label_3"), else its position + 1.
<br><br>
Output: a displacement field (grid transform, fixed to moving); optionally a transformed copy of the moving
organs in the fixed space. Same method on the command line: <code>registration-suite organ-points --fixed F.nii.gz
--moving M.nii.gz --output T.h5</code>. Needs torch (installed through the PyTorch extension).
""")
        self.parent.acknowledgementText = _("""
Method: Joutard S., Pheiffer T., Audigier C., Wohlfahrt P., Dorent R., Piat S., Vercauteren T., Modat M., Mansi T.,
"A multi-organ point cloud registration algorithm for abdominal CT registration", Biomedical Image Registration
(WBIR 2022), LNCS 13386, Springer, 2022; building on Hirose O., "A Bayesian formulation of coherent point drift",
IEEE TPAMI 43(7):2269-2286, 2021.
""")


#
# OrganPointCloudRegistrationParameterNode
#


@parameterNodeWrapper
class OrganPointCloudRegistrationParameterNode:
    """The module's parameters (saved with the scene).

    organTable: JSON list of the organ table's rows ({label, name, lambda_mm, beta_mm, include, inBoth}).
    coherenceMatrix: custom S, rows separated by ';' and values by ',' (order of the used organs).
    sampling: how surface points and EM subsets are drawn (``--sampling``): spread (farthest-point per organ,
    the configuration's default) or random.
    commonFieldOfView: label-image inputs: register only the organ parts inside the field of view both scans share
    (``--common-fov``; the configuration's default, on).
    """

    # A union of node types must include None: the wrapper writes None when it is created (Slicer's
    # parameter node documentation; UnionSerializer raises TypeError otherwise).
    fixedInput: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, vtkMRMLModelNode, None]
    movingInput: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, vtkMRMLModelNode, None]
    outputTransform: vtkMRMLGridTransformNode
    transformedCopy: bool = True
    placeMovingUnderTransform: bool = False
    organTable: str = ""
    coherence: Annotated[str, Choice(["independent", "global", "custom"])] = "independent"
    coherenceMatrix: str = ""
    defaultLambda: Annotated[float, WithinRange(0.1, 500.0)] = 3.0  # the library's defaults (see its config)
    defaultBeta: Annotated[float, WithinRange(0.1, 500.0)] = 50.0
    pointsPerOrgan: Annotated[int, Minimum(4)] = 1500
    omega: Annotated[float, WithinRange(0.0, 0.99)] = 0.05  # the library default (paper: 0)
    gridSpacing: Annotated[float, WithinRange(0.5, 50.0)] = 3.0
    sampling: Annotated[str, Choice(list(SAMPLING_CHOICES))] = DEFAULT_SAMPLING
    commonFieldOfView: bool = DEFAULT_COMMON_FOV
    seed: Annotated[int, Minimum(0)] = 0
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"


#
# OrganPointCloudRegistrationWidget
#


class OrganPointCloudRegistrationWidget(ChildRunMixin, ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget,
                                        VTKObservationMixin):
    runName = "OrganPointCloudRegistration"

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._tableInputs = None  # (fixed ID, moving ID) the organ table was filled for
        self._fillingTable = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/OrganPointCloudRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = OrganPointCloudRegistrationLogic()
        self.ui.progressBar.visible = False
        setupOrganTable(self.ui.organsTable, self._onOrganTableEdited)

        self.observeSceneClose()  # scene close: stop a run, release / retake the parameter node
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.refreshOrgansButton.connect("clicked(bool)", lambda: self._refreshOrganTable(force=True))
        self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        # Preselect the first two segmentations to save the user a few clicks.
        segmentations = slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
        if not self._parameterNode.fixedInput and segmentations:
            self._parameterNode.fixedInput = segmentations[0]
        if not self._parameterNode.movingInput and len(segmentations) > 1:
            self._parameterNode.movingInput = segmentations[1]

    def setParameterNode(self, inputParameterNode: Optional[OrganPointCloudRegistrationParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        self._tableInputs = None
        if self._parameterNode:
            # Widgets carry the "SlicerParameterName" dynamic property in the .ui file.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self.isRunning():
            return  # the button is a Cancel button while running
        self._refreshOrganTable()
        p = self._parameterNode
        self.ui.coherenceMatrixLineEdit.enabled = p is not None and p.coherence == "custom"
        reason = self.logic.whyCannotRun(p)
        self.ui.applyButton.enabled = not reason
        self.ui.applyButton.toolTip = reason or _("Run the organ point cloud registration (in a separate process).")

    def _refreshOrganTable(self, force=False) -> None:
        """Fill the organ table when the inputs changed (or on Refresh), keeping the user's Λ/B/use edits."""
        p = self._parameterNode
        inputs = (p.fixedInput.GetID() if p and p.fixedInput else None,
                  p.movingInput.GetID() if p and p.movingInput else None)
        if p is None or (inputs == self._tableInputs and not force):
            return
        self._tableInputs = inputs
        try:
            rows = self.logic.organTableRows(p.fixedInput, p.movingInput, self.logic.organTable(p))
        except (InputError, ValueError) as error:
            rows = []
            self.ui.resultsLabel.text = _("Cannot list the organs: {error}").format(error=error)
        self._fillingTable = True
        try:
            fillOrganTable(self.ui.organsTable, rows)
        finally:
            self._fillingTable = False
        self._storeOrganTable()

    def _onOrganTableEdited(self, item) -> None:
        if not self._fillingTable:
            self._storeOrganTable()

    def _storeOrganTable(self) -> None:
        text = json.dumps(readOrganTable(self.ui.organsTable))
        if self._parameterNode is not None and self._parameterNode.organTable != text:
            self._parameterNode.organTable = text

    def _showResult(self, outcome) -> str:
        if self._parameterNode is not None:
            self._parameterNode.outputTransform = outcome.nodes["transform"]
        return formatResultSummary(outcome.result, outcome.seconds)


def setupOrganTable(table, onEdited) -> None:
    """Columns of the organ table (a QTableWidget); ``onEdited(item)`` is called when the user edits a cell."""
    table.setColumnCount(5)
    table.setHorizontalHeaderLabels([_("Use"), _("Label"), _("Organ"), _("Λ (mm)"), _("B (mm)")])
    table.verticalHeader().visible = False
    table.horizontalHeader().setSectionResizeMode(NAME_COLUMN, qt.QHeaderView.Stretch)
    table.connect("itemChanged(QTableWidgetItem*)", onEdited)


def fillOrganTable(table, rows) -> None:
    """Show ``rows`` (dicts from ``organTableRows``); organs missing from one input cannot be used."""
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        use = qt.QTableWidgetItem()
        use.setFlags(qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsEnabled if row["inBoth"] else qt.Qt.ItemIsUserCheckable)
        use.setCheckState(qt.Qt.Checked if row["include"] and row["inBoth"] else qt.Qt.Unchecked)
        use.setToolTip("" if row["inBoth"] else _("Only in one input: cannot be registered"))
        label = qt.QTableWidgetItem(str(row["label"]))
        label.setFlags(qt.Qt.ItemIsEnabled)
        name = qt.QTableWidgetItem(row["name"])
        name.setFlags(qt.Qt.ItemIsEnabled)
        cells = [use, label, name] + [qt.QTableWidgetItem("" if row[k] is None else f"{row[k]:g}")
                                      for k in ("lambda_mm", "beta_mm")]
        for c, item in enumerate(cells):
            table.setItem(r, c, item)


def readOrganTable(table) -> list:
    """The rows shown in the organ table as dicts (Λ/B cells as typed; the logic validates them)."""
    rows = []
    for r in range(table.rowCount):
        use = table.item(r, USE_COLUMN)
        rows.append({
            "label": int(table.item(r, LABEL_COLUMN).text()),
            "name": table.item(r, NAME_COLUMN).text(),
            "lambda_mm": table.item(r, LAMBDA_COLUMN).text().strip() or None,
            "beta_mm": table.item(r, BETA_COLUMN).text().strip() or None,
            "include": use.checkState() == qt.Qt.Checked,
            "inBoth": bool(use.flags() & qt.Qt.ItemIsEnabled),
        })
    return rows


#
# OrganPointCloudRegistrationLogic
#


class OrganPointCloudRegistrationLogic(ScriptedLoadableModuleLogic, OrganPointCloudNodeLogic):
    """The core's Qt-free node logic plus this module's parameter node; usable without the widget.

    Scripts can call the inherited ``register(fixedNode, movingNode, config=None, outputTransformNode=None,
    progress=None, cancel=None, organs=None, transformedMovingCopy=False)``, which runs in this process and blocks.
    Apply declares the same run with :meth:`runSpecFromParameterNode` and runs it in a child process
    (``RegistrationSuiteLib.mrml.runner``).
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return OrganPointCloudRegistrationParameterNode(super().getParameterNode())

    parseMatrix = staticmethod(parse_matrix)

    @staticmethod
    def organTable(parameterNode) -> list:
        """The organ table rows stored in the parameter node (``[]`` when never filled)."""
        return json.loads(parameterNode.organTable) if parameterNode.organTable.strip() else []

    organTableRows = staticmethod(organ_table_rows)

    def organRows(self, parameterNode) -> Optional[list]:
        """``OrganRow`` s of the stored table for the core (organs in both inputs only), ``None`` when empty."""
        return organ_rows_from_table(self.organTable(parameterNode))

    def configFromParameterNode(self, parameterNode):
        """The one place where the module's parameters become the registration config (no torch needed)."""
        from RegistrationSuiteLib.methods.organ_point_cloud.config import OrganPointCloudConfig

        p = parameterNode
        options = {"points_per_organ": int(p.pointsPerOrgan), "lambda_mm": float(p.defaultLambda),
                   "beta_mm": float(p.defaultBeta), "omega": float(p.omega), "grid_spacing_mm": float(p.gridSpacing),
                   "seed": int(p.seed), "device": p.device, "coherence": p.coherence,
                   "spread_sampling": p.sampling == SAMPLING_CHOICES[0], "common_fov": bool(p.commonFieldOfView)}
        organs = self.organRows(p)
        if p.coherence == "custom":
            used = [r.label for r in organs or [] if r.include]
            if not used:
                raise ValueError("Custom matrix: fill the organ table first (the matrix follows its used organs)")
            options.update(coherence=self.parseMatrix(p.coherenceMatrix), labels=used)
        return self.resolve_config(OrganPointCloudConfig(**options), organs)

    def whyCannotRun(self, parameterNode) -> str:
        """Why Apply must stay disabled ("" when it can run); shown as the Apply button's tooltip."""
        if parameterNode is None:
            return _("No parameter node.")
        fixed, moving = parameterNode.fixedInput, parameterNode.movingInput
        if not fixed or not moving:
            return _("Select fixed and moving organs (segmentation, labelmap volume or model).")
        if fixed == moving:
            return _("The fixed and moving organs must be different nodes.")
        rows = self.organRows(parameterNode)
        if rows is not None and not any(r.include for r in rows):
            return _("Tick at least one organ present in both inputs in the organ table.")
        try:
            self.configFromParameterNode(parameterNode)
        except (InputError, ValueError) as error:
            return str(error)
        return ""

    def runSpecFromParameterNode(self, parameterNode):
        """What Apply runs in a child process: a ``RunSpec`` (organ inputs, ``organ-points`` options, outputs)."""
        p = parameterNode
        return self.run_spec(p.fixedInput, p.movingInput, self.configFromParameterNode(p), p.outputTransform,
                             transformedMovingCopy=p.transformedCopy,
                             placeMovingUnderTransform=p.placeMovingUnderTransform)

    def runWithParameterNode(self, parameterNode, progress=None, cancel=None):
        """Blocking in-process run of what Apply does (console, tests); returns ``(result, transformNode)``."""
        p = parameterNode
        result = self.register(p.fixedInput, p.movingInput, self.configFromParameterNode(p), p.outputTransform,
                               progress, cancel, transformedMovingCopy=p.transformedCopy)
        transformNode = p.fixedInput.GetScene().GetNodeByID(result.diagnostics["output_transform_node_id"])
        if p.placeMovingUnderTransform:
            p.movingInput.SetAndObserveTransformNodeID(transformNode.GetID())
        p.outputTransform = transformNode
        return result, transformNode


#
# OrganPointCloudRegistrationTest
#


class OrganPointCloudRegistrationTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_applyDisabledWithoutInputs()
        self.setUp()
        self.test_registersShiftedOrgans()

    def test_applyDisabledWithoutInputs(self):
        logic = OrganPointCloudRegistrationLogic()
        params = logic.getParameterNode()
        self.assertIn("Select", logic.whyCannotRun(params))
        self.assertEqual(logic.parseMatrix(" 1, 0.5; 0.5 ,1"), [[1.0, 0.5], [0.5, 1.0]])
        with self.assertRaises(ValueError):
            logic.parseMatrix("1,0.5;0.5")

    def _organLabelmap(self, name, shift):
        """Labelmap with two ellipsoids (labels 1, 2), the second moved by ``shift`` (LPS mm)."""
        import numpy as np
        import SimpleITK as sitk

        from RegistrationSuiteLib.mrml.volumes import volume_node_from_image

        k, j, i = np.meshgrid(np.arange(40), np.arange(48), np.arange(56), indexing="ij")
        p = np.stack([i * 2.0, j * 2.0, k * 2.5], axis=-1)
        voxels = np.zeros(p.shape[:3], np.uint8)
        voxels[(((p - [35, 45, 50]) / [14, 12, 11]) ** 2).sum(-1) <= 1] = 1
        voxels[(((p - np.add([78, 50, 45], shift)) / [10, 14, 9]) ** 2).sum(-1) <= 1] = 2
        image = sitk.GetImageFromArray(voxels)
        image.SetSpacing((2.0, 2.0, 2.5))
        return volume_node_from_image(image, slicer.mrmlScene, name, labelmap=True)

    def test_registersShiftedOrgans(self):
        """Organ 2 moved by 6 mm relative to organ 1: with independent coherence both are recovered."""
        import numpy as np

        reason = torchSkipReason()
        if reason:  # "Reload and Test" calls runTest() directly: report and return rather than skipTest
            self.delayDisplay(f"Skipped: {reason}")
            return
        fixed = self._organLabelmap("fixed organs", [0.0, 0.0, 0.0])
        moving = self._organLabelmap("moving organs", [6.0, -3.0, 2.0])
        logic = OrganPointCloudRegistrationLogic()
        params = logic.getParameterNode()
        params.fixedInput, params.movingInput = fixed, moving
        params.organTable = json.dumps(logic.organTableRows(fixed, moving))
        params.pointsPerOrgan, params.defaultLambda, params.defaultBeta = 400, 10.0, 20.0
        params.transformedCopy = True
        self.assertEqual(logic.whyCannotRun(params), "")
        from RegistrationSuiteLib.mrml.runner import SUCCEEDED, ChildRun

        spec = logic.runSpecFromParameterNode(params)  # what Apply does
        run = ChildRun(spec, base_environment=slicer.util.startupEnvironment()).start()
        self.assertEqual(run.wait(timeout=600), SUCCEEDED, str(run.error))
        result, transformNode = run.outcome.result, run.outcome.nodes["transform"]

        copy = slicer.mrmlScene.GetNodeByID(result.diagnostics["transformed_moving_node_ids"][0])
        fixedArray, copyArray = slicer.util.arrayFromVolume(fixed), slicer.util.arrayFromVolume(copy)
        for label in (1, 2):
            dice = 2 * np.sum((fixedArray == label) & (copyArray == label)) / (
                np.sum(fixedArray == label) + np.sum(copyArray == label))
            self.assertGreater(dice, 0.85, f"organ {label}")
        role = slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()
        self.assertEqual(transformNode.GetNodeReferenceID(role), moving.GetID())
        self.assertTrue(transformNode.IsA("vtkMRMLGridTransformNode"))
        self.delayDisplay("Test passed")

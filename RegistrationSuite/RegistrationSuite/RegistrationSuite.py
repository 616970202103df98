"""RegistrationSuite hub: what the suite offers, and whether torch is ready.

This module folder also ships the Qt-free core library (``RegistrationSuiteLib``) that every method module
of the extension imports, and the shared widget helpers (``RegistrationSuiteWidgets``).
"""

import html

import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from RegistrationSuiteWidgets import PYTORCH_EXTENSION_MISSING, ensureTorch, torchStatus

#
# RegistrationSuite
#


class RegistrationSuite(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Registration Suite")
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["RegistrationSuite contributors"]
        self.parent.helpText = _("""
Overview of the RegistrationSuite extension: published image registration methods, one module each, sharing
one Python library (also usable outside Slicer as the <code>registration-suite</code> command-line tool).
<br><br>
This panel lists the methods (click one to open it) and shows whether PyTorch is installed and can use a
GPU. PyTorch is installed through the PyTorch extension (SlicerPyTorch), which picks a build that matches
your GPU driver; nothing is installed without asking you.
""")
        self.parent.acknowledgementText = _("""
Each method module cites the paper it implements in its own Help &amp; Acknowledgement section.
""")


#
# RegistrationSuiteWidget
#


class RegistrationSuiteWidget(ScriptedLoadableModuleWidget):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RegistrationSuite.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = RegistrationSuiteLogic()

        self.ui.methodsLabel.connect("linkActivated(QString)", self.onMethodLinkActivated)
        self.ui.checkTorchButton.connect("clicked(bool)", self.onCheckTorchButton)
        self.ui.installTorchButton.connect("clicked(bool)", self.onInstallTorchButton)
        self.updateMethods()
        self.updateTorchStatus(importTorch=False)

    def enter(self) -> None:
        # Modules of the extension may have been loaded since the panel was built.
        self.updateMethods()

    def updateMethods(self) -> None:
        self.ui.methodsLabel.text = self.logic.methodsOverviewHtml()

    def onMethodLinkActivated(self, moduleName) -> None:
        slicer.util.selectModule(moduleName)

    def updateTorchStatus(self, importTorch) -> None:
        status = torchStatus(importTorch=importTorch)
        self.ui.torchVersionValueLabel.text = status["version"]
        self.ui.cudaValueLabel.text = status["cuda"]
        self.ui.deviceValueLabel.text = status["device"]
        self.ui.checkTorchButton.enabled = status["installed"]
        canInstall = status["extension"] and not status["installed"]
        self.ui.installTorchButton.enabled = canInstall
        if not status["extension"]:
            self.ui.torchMessageLabel.text = PYTORCH_EXTENSION_MISSING
            self.ui.installTorchButton.toolTip = PYTORCH_EXTENSION_MISSING
        else:
            self.ui.torchMessageLabel.text = "" if status["installed"] else _(
                "PyTorch is not installed yet. Install it here, or let a method module ask you when you first "
                "press Apply.")
            self.ui.installTorchButton.toolTip = (
                _("Install PyTorch with the PyTorch extension (you are asked to confirm first).") if canInstall
                else _("PyTorch is already installed."))

    def onCheckTorchButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to load PyTorch."), waitCursor=True):
            self.updateTorchStatus(importTorch=True)

    def onInstallTorchButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to install PyTorch."), waitCursor=True):
            torch = ensureTorch(askConfirmation=True)
            self.updateTorchStatus(importTorch=torch is not None)


#
# RegistrationSuiteLogic
#


class RegistrationSuiteLogic(ScriptedLoadableModuleLogic):
    """The suite's catalogue of methods; usable without the widget."""

    #: ``(module name, title, one-line summary)`` of every planned method module, in menu order.
    METHODS = (
        ("GlobalRigidSearch", "Global rigid search",
         "Multimodal rigid alignment without initialisation: FFT cross-similarity of squared normalized "
         "gradient fields over a multi-level random rotation search (Öfverstedt et al., WBIR 2022)."),
        ("PartialVolumePreregistration", "Partial-volume pre-registration",
         "Locates a partial scan in a full one: a patch network predicts template-space positions, RANSAC "
         "fits a rigid transform, a local search refines it (TSPM, Xia et al.)."),
        ("DeformableRegistration", "Deformable registration",
         "Dense displacement fields predicted by networks: RegNet (Sokooti et al.) and inter-modality "
         "registration trained with intra-modality similarity (Cao et al.)."),
        ("OrganPointCloudRegistration", "Organ point cloud registration",
         "Non-rigid registration of organ surface point clouds with per-organ elasticity: multi-organ "
         "Bayesian coherent point drift (MO-BCPD, WBIR 2022)."),
        ("HistologyRegistration", "Histology registration",
         "Alignment of multi-stain histology slides with multi-magnification patch networks (local affine "
         "and non-rigid, WBIR 2022)."),
    )

    @staticmethod
    def isModuleAvailable(moduleName) -> bool:
        """``True`` if the module is loaded in this Slicer session."""
        return hasattr(slicer.modules, moduleName.lower())

    def methodsOverviewHtml(self) -> str:
        """One line per method: a link to the module when it is available, "(planned)" otherwise."""
        lines = []
        for moduleName, title, summary in self.METHODS:
            if self.isModuleAvailable(moduleName):
                head = f'<a href="{moduleName}"><b>{html.escape(title)}</b></a>'
            else:
                head = f"<b>{html.escape(title)}</b> <i>({_('planned')})</i>"
            lines.append(f"<li>{head}: {html.escape(summary)}</li>")
        return "<ul>" + "".join(lines) + "</ul>"


#
# RegistrationSuiteTest
#


class RegistrationSuiteTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_methodsOverview()
        self.setUp()
        self.test_torchStatusDoesNotImportTorch()
        self.setUp()
        self.test_coreLibraryInstalled()

    def test_methodsOverview(self):
        logic = RegistrationSuiteLogic()
        text = logic.methodsOverviewHtml()
        self.assertEqual(len(logic.METHODS), 5)
        for moduleName, title, _summary in logic.METHODS:
            self.assertIn(html.escape(title), text)
        # GlobalRigidSearch is built with this extension, so it must be offered as a link.
        self.assertIn('href="GlobalRigidSearch"', text)

    def test_torchStatusDoesNotImportTorch(self):
        import sys

        wasLoaded = "torch" in sys.modules
        status = torchStatus(importTorch=False)
        self.assertEqual(set(status), {"installed", "version", "cuda", "device", "extension"})
        self.assertEqual("torch" in sys.modules, wasLoaded)

    def test_coreLibraryInstalled(self):
        """The core package and its data files were installed next to this module (CMake lists)."""
        from RegistrationSuiteLib import RegistrationResult  # noqa: F401
        from RegistrationSuiteLib.sample_data import SAMPLES, sample_path

        for key in SAMPLES:
            self.assertTrue(sample_path(key).is_file())
        self.delayDisplay("Test passed")

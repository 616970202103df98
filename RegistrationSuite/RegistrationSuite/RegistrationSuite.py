"""RegistrationSuite hub: what the suite offers, whether torch is ready, and the models of the learned methods.

This module folder also ships the Qt-free core library (``RegistrationSuiteLib``) that every method module
of the extension imports, and the shared widget helpers (``RegistrationSuiteWidgets``).
"""

import html
import sys
from pathlib import Path

import qt

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from RegistrationSuiteWidgets import PYTORCH_EXTENSION_MISSING, ensureTorch, reportErrors, torchStatus

#
# RegistrationSuite
#


class RegistrationSuite(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Registration Suite")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["RegistrationSuite contributors (RegistrationSuite project)"]
        self.parent.helpText = _("""
Overview of the RegistrationSuite extension: published image registration methods, one module each, sharing
one Python library (also usable outside Slicer as the <code>registration-suite</code> command-line tool).
<br><br>
This panel lists the methods (click one to open it), a "Which method do I need?" table (points or images?
partial scan? multimodal? deformation expected?), and shows whether PyTorch is installed and can use a
GPU. PyTorch is installed through the PyTorch extension (SlicerPyTorch), which picks a build that matches
your GPU driver; nothing is installed without asking you.
<br><br>
Models: the networks of the learned methods (e.g. partial-volume preregistration) are model files shipped with
the extension or placed in your user models folder (shown here; <code>REGISTRATION_SUITE_MODELS</code> selects
another folder). Add a model file (it is checked, then copied), open the folder, or clear it (after you confirm;
shipped models are kept). Nothing is downloaded.
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
        self.ui.refreshModelsButton.connect("clicked(bool)", self.onRefreshModelsButton)
        self.ui.addModelButton.connect("clicked(bool)", self.onAddModelButton)
        self.ui.openModelsFolderButton.connect("clicked(bool)", self.onOpenModelsFolderButton)
        self.ui.clearModelsButton.connect("clicked(bool)", self.onClearModelsButton)
        self.ui.clearCacheButton.connect("clicked(bool)", self.onClearCacheButton)
        setupModelsTable(self.ui.modelsTable)
        self.updateMethods()
        self.updateTorchStatus(importTorch=False)
        self.updateModels(readDetails=False)

    def enter(self) -> None:
        # Modules of the extension may have been loaded since the panel was built.
        self.updateMethods()
        self.updateModels(readDetails="torch" in sys.modules)  # details only when that costs no torch import

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
        with reportErrors(_("Failed to load PyTorch."), waitCursor=True):
            self.updateTorchStatus(importTorch=True)

    def onInstallTorchButton(self) -> None:
        with reportErrors(_("Failed to install PyTorch."), waitCursor=True):
            torch = ensureTorch(askConfirmation=True)
            self.updateTorchStatus(importTorch=torch is not None)

    def updateModels(self, readDetails) -> None:
        """Show the user models folder and the model files (kind and summary only when ``readDetails``)."""
        self.ui.userModelsFolderValueLabel.text = str(self.logic.userModelsFolder())
        rows = self.logic.modelRows(readDetails=readDetails)
        fillModelsTable(self.ui.modelsTable, rows)
        userCount = sum(1 for r in rows if r["source"] == "user")
        self.ui.clearModelsButton.enabled = userCount > 0
        if not rows:
            message = _("No model files yet: add one, or copy .pt files into the user models folder.")
        elif not readDetails:
            message = _("Press Refresh to read the models' kind and summary (loads PyTorch).")
        else:
            message = ""
        self.ui.modelsMessageLabel.text = message
        self.updateCache()

    def updateCache(self) -> None:
        """Show the on-disk result cache's folder, entry count and size."""
        usage = self.logic.resultCacheUsage()
        self.ui.cacheLabel.text = _("Result cache: {entries} entries, {size:.1f} kB in {folder}").format(
            entries=usage["entries"], size=usage["bytes"] / 1e3, folder=usage["folder"])
        self.ui.clearCacheButton.enabled = usage["entries"] > 0

    def onClearCacheButton(self) -> None:
        with reportErrors(_("Failed to clear the result cache."), waitCursor=True):
            self.logic.clearResultCache()
        self.updateCache()

    def onRefreshModelsButton(self) -> None:
        with reportErrors(_("Failed to read the model files."), waitCursor=True):
            self.updateModels(readDetails=torchStatus()["installed"])
            if not torchStatus()["installed"]:
                self.ui.modelsMessageLabel.text = _("Install PyTorch to read the models' kind and summary.")

    def onAddModelButton(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Add a model file"), "",
                                              _("Model files (*.pt)"))
        if not path:
            return
        with reportErrors(_("Failed to add the model file."), waitCursor=True):
            if ensureTorch(askConfirmation=True) is None:  # the file is checked with torch before it is copied
                return
            destination = self.logic.userModelPath(path)
            if destination.exists() and not slicer.util.confirmOkCancelDisplay(
                    _("A user model named '{name}' exists. Replace it?").format(name=destination.stem)):
                return
            self.logic.addModelFile(path, overwrite=True)
            self.updateModels(readDetails=True)

    def onOpenModelsFolderButton(self) -> None:
        with reportErrors(_("Failed to open the user models folder."), waitCursor=True):
            folder = self.logic.userModelsFolder(create=True)
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    def onClearModelsButton(self) -> None:
        userRows = [r for r in self.logic.modelRows() if r["source"] == "user"]
        if not userRows:
            self.updateModels(readDetails="torch" in sys.modules)
            return
        question = _("Delete the model files and model cards that RegistrationSuite installed in\n{folder}?\n\n"
                     "Only files added with 'Add model' (and unchanged since) are deleted; files you copied there "
                     "yourself and the shipped models are kept. This cannot be undone.").format(
            folder=self.logic.userModelsFolder())
        if not slicer.util.confirmOkCancelDisplay(question, windowTitle=_("Clear user models")):
            return
        with reportErrors(_("Failed to clear the user models folder."), waitCursor=True):
            self.logic.clearUserModels()
        self.updateModels(readDetails="torch" in sys.modules)


#: Columns of the models table.
MODEL_COLUMNS = (("name", "Name"), ("source", "Source"), ("kind", "Kind"), ("size", "Size"), ("summary", "Summary"))


def setupModelsTable(table) -> None:
    """Columns of the models table (a read-only QTableWidget)."""
    table.setColumnCount(len(MODEL_COLUMNS))
    table.setHorizontalHeaderLabels([_(title) for _key, title in MODEL_COLUMNS])
    table.verticalHeader().visible = False
    table.horizontalHeader().setSectionResizeMode(len(MODEL_COLUMNS) - 1, qt.QHeaderView.Stretch)


def fillModelsTable(table, rows) -> None:
    """Show ``rows`` (dicts from ``RegistrationSuiteLogic.modelRows``); the tooltip of a row is its file path."""
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        values = {**row, "size": f"{row['size_bytes'] / 1e6:.1f} MB", "kind": row["kind"] or ""}
        for c, (key, _title) in enumerate(MODEL_COLUMNS):
            item = qt.QTableWidgetItem(str(values[key] or ""))
            item.setToolTip(row["path"])
            table.setItem(r, c, item)


#
# RegistrationSuiteLogic
#


class RegistrationSuiteLogic(ScriptedLoadableModuleLogic):
    """The suite's catalogue of methods and its model management; usable without the widget.

    Models (``RegistrationSuiteLib.models.registry``): ``userDir`` arguments override the user models folder
    (default: ``$REGISTRATION_SUITE_MODELS``, else ``~/.registration-suite/models``).
    """

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

    #: "Which method do I need?": ``(your case, module names in the order to run them, note)``. Every module
    #: named here is one of :attr:`METHODS`; the hub panel shows this table below the list of methods.
    METHOD_GUIDE = (
        ("Points, surfaces or organ label maps (not intensities)", ("OrganPointCloudRegistration",),
         "each organ deforms with its own elasticity"),
        ("Histology slides (2D, different stains)", ("HistologyRegistration",), "run alone"),
        ("Partial scan (the moving image covers only part of the fixed one)", ("PartialVolumePreregistration",),
         "then Deformable if soft tissue moved"),
        ("Whole scans, same or different modality, unknown starting pose", ("GlobalRigidSearch",),
         "multimodal, no initialisation needed"),
        ("Deformation expected (soft tissue, follow-up, atlas)", ("GlobalRigidSearch", "DeformableRegistration"),
         "rigid first; its transform is the deformable step's initial transform"),
        ("Many pairs (a cohort)", (), "command line: registration-suite batch --pairs COHORT.csv"),
    )

    def methodGuideHtml(self) -> str:
        """The "Which method do I need?" decision table, each module a link when it is loaded."""
        rows = []
        for case, modules, note in self.METHOD_GUIDE:
            titles = dict((m, t) for m, t, _s in self.METHODS)
            steps = " → ".join(
                f'<a href="{m}">{html.escape(titles[m])}</a>' if self.isModuleAvailable(m)
                else f"{html.escape(titles[m])} <i>({_('planned')})</i>" for m in modules)
            rows.append(f"<tr><td>{html.escape(case)}</td><td>{steps}</td><td>{html.escape(note)}</td></tr>")
        return (f"<p><b>{_('Which method do I need?')}</b></p><table border='1' cellpadding='3' cellspacing='0'>"
                f"<tr><th>{_('Your case')}</th><th>{_('Use')}</th><th>{_('Note')}</th></tr>" + "".join(rows) + "</table>")

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
        return "<ul>" + "".join(lines) + "</ul>" + self.methodGuideHtml()

    @staticmethod
    def resultCacheUsage() -> dict:
        """``{"folder", "entries", "bytes"}`` of the on-disk result cache (``RegistrationSuiteLib.cache``)."""
        from RegistrationSuiteLib.cache import cache_usage

        return cache_usage()

    @staticmethod
    def clearResultCache() -> int:
        """Delete the on-disk result cache's entries; returns how many were removed."""
        from RegistrationSuiteLib.cache import clear_cache

        return clear_cache()

    @staticmethod
    def userModelsFolder(userDir=None, create=False) -> Path:
        """The user models folder (created when ``create``)."""
        from RegistrationSuiteLib.models.registry import user_models_dir

        folder = user_models_dir(userDir)
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        return folder

    @staticmethod
    def modelRows(readDetails=False, userDir=None) -> list:
        """The model files, user folder first, as dicts ``{name, path, source, kind, size_bytes, summary}``.

        Without ``readDetails`` only the file system is read (``kind`` is ``None``, no torch import); with it every
        file is loaded and checked (imports torch), unreadable files say why in ``summary``.
        """
        from RegistrationSuiteLib.models import registry

        if readDetails:
            return [m.to_dict() for m in registry.list_models(user_dir=userDir)]
        rows = []
        for source, folder in (("user", registry.user_models_dir(userDir)), ("shipped", registry.shipped_models_dir())):
            if folder.is_dir():
                rows += [{"name": p.stem, "path": str(p), "source": source, "kind": None,
                          "size_bytes": p.stat().st_size, "summary": ""}
                         for p in sorted(folder.glob(f"*{registry.MODEL_SUFFIX}"))]
        return rows

    def userModelPath(self, modelFile, userDir=None) -> Path:
        """Where :meth:`addModelFile` would copy ``modelFile``."""
        from RegistrationSuiteLib.models.registry import MODEL_SUFFIX

        return self.userModelsFolder(userDir) / f"{Path(modelFile).stem}{MODEL_SUFFIX}"

    def addModelFile(self, modelFile, overwrite=False, userDir=None) -> Path:
        """Check a model file (loads it with torch) and copy it and its ``.md`` card into the user folder."""
        from RegistrationSuiteLib.models.model_file import load_model
        from RegistrationSuiteLib.models.registry import install_model

        destination = self.userModelPath(modelFile, userDir)
        if destination.exists() and destination.resolve() == Path(modelFile).resolve():
            load_model(destination)  # already in the user folder: only check it
            return destination
        return install_model(modelFile, user_dir=userDir, overwrite=overwrite)

    @staticmethod
    def clearUserModels(userDir=None) -> list:
        """Delete the model files and cards of the user folder (not the shipped ones); returns the paths."""
        from RegistrationSuiteLib.models.registry import clear_user_models

        return clear_user_models(user_dir=userDir)


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
        self.setUp()
        self.test_modelManagement()

    def test_methodsOverview(self):
        logic = RegistrationSuiteLogic()
        text = logic.methodsOverviewHtml()
        self.assertEqual(len(logic.METHODS), 5)
        for moduleName, title, _summary in logic.METHODS:
            self.assertIn(html.escape(title), text)
        # These modules are built with this extension, so they must be offered as links.
        for moduleName in ("GlobalRigidSearch", "OrganPointCloudRegistration", "PartialVolumePreregistration"):
            self.assertIn(f'href="{moduleName}"', text)

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

    def test_modelManagement(self):
        """List, add and clear models in a temporary user folder (adding needs torch to check the file)."""
        import shutil
        import tempfile

        logic = RegistrationSuiteLogic()
        folder = Path(tempfile.mkdtemp(prefix="RegistrationSuiteModels"))
        try:
            self.assertEqual(logic.userModelsFolder(folder), folder)
            self.assertEqual([r for r in logic.modelRows(userDir=folder) if r["source"] == "user"], [])
            (folder / "broken.pt").write_bytes(b"not a model")
            rows = [r for r in logic.modelRows(userDir=folder) if r["source"] == "user"]
            self.assertEqual([(r["name"], r["kind"]) for r in rows], [("broken", None)])
            if torchStatus()["installed"]:
                import torch

                from RegistrationSuiteLib.models.model_file import CARD_KEYS, ModelFile, save_model

                card = {**dict.fromkeys(CARD_KEYS), "name": "tiny", "summary": "tiny test model"}
                source = folder / "incoming" / "tiny.pt"
                source.parent.mkdir()
                save_model(ModelFile("test", "none", {}, {"w": torch.zeros(2)}, card=card), source)
                self.assertEqual(logic.addModelFile(source, userDir=folder), logic.userModelPath(source, folder))
                self.assertEqual(logic.addModelFile(folder / "tiny.pt", userDir=folder), folder / "tiny.pt")
                details = {r["name"]: r for r in logic.modelRows(readDetails=True, userDir=folder)}
                self.assertEqual((details["tiny"]["kind"], details["tiny"]["summary"]), ("test", "tiny test model"))
                self.assertIn("unreadable", details["broken"]["summary"])
            removed = logic.clearUserModels(userDir=folder)
            self.assertIn(folder / "broken.pt", removed)
            self.assertEqual([r for r in logic.modelRows(userDir=folder) if r["source"] == "user"], [])
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Test passed")

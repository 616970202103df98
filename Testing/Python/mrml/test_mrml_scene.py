"""The headless scene helper, and the bridge's lazy imports."""

import subprocess
import sys

import pytest

slicer = pytest.importorskip("slicer", reason="needs the MRML libraries (pip install slicer-core)")

from RegistrationSuiteLib.mrml.scene import (  # noqa: E402
    HEADLESS_MODULE_LOGICS,
    close_headless_scene,
    create_headless_application,
    module_logic,
)


def test_importing_the_bridge_imports_neither_slicer_nor_vtk():
    code = (
        "import sys, RegistrationSuiteLib.mrml\n"
        "bad = [m for m in ('slicer', 'vtk', 'vtkmodules') if m in sys.modules]\n"
        "sys.exit(f'imported at module import: {bad}' if bad else 0)\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_headless_scene_has_application_and_module_logics(headless_scene):
    assert slicer.mrmlScene is headless_scene
    for name in HEADLESS_MODULE_LOGICS:
        logic = module_logic(name, headless_scene)
        assert logic is not None and logic.GetMRMLScene() is headless_scene, name
        assert logic.GetMRMLApplicationLogic().GetModuleLogic(name) is logic
    assert module_logic("Segmentations") is module_logic("Segmentations", headless_scene)  # global scene
    assert headless_scene.GetFirstNodeByName("Grey") is not None  # colour tables for volume display
    assert headless_scene.GetSingletonNode("Singleton", "vtkMRMLSelectionNode") is not None
    assert module_logic("NoSuchModule", headless_scene) is None


def test_separate_scene_does_not_replace_the_global_one(headless_scene):
    app = create_headless_application(set_global=False)
    try:
        assert slicer.mrmlScene is headless_scene and app.scene is not headless_scene
        assert module_logic("Volumes", app.scene) is not module_logic("Volumes", headless_scene)
    finally:
        app.close()
    assert module_logic("Volumes", app.scene) is None
    assert slicer.mrmlScene is headless_scene


def test_close_releases_global_scene():
    app = create_headless_application()
    scene = app.scene
    assert slicer.mrmlScene is scene
    scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "v")
    close_headless_scene(scene)
    assert slicer.mrmlScene is None
    assert scene.GetFirstNodeByName("v") is None

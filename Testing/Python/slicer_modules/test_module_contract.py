"""Static contract of the Slicer extension layer (CMake, module files, Qt Designer files).

Slicer (``qt``, ``ctk``, ``slicer.ScriptedLoadableModule``) is not available in CI, so the modules cannot be
imported here: they are parsed (``ast``, ``xml.etree``, a small CMake reader) and checked against the
conventions of Slicer's scripted module template and the extension's own rules (SLICER_NOTES.md):

- extension CMake: required ``EXTENSION_*`` variables, ``EXTENSION_DEPENDS`` PyTorch, Slicer includes;
- every module folder is listed in ``RegistrationSuite/CMakeLists.txt`` (modules are discovered from it, so
  a new module is checked without editing this file);
- per module: every file is installed (``MODULE_PYTHON_SCRIPTS`` / ``MODULE_PYTHON_RESOURCES``) and every
  listed file exists, ``slicer_add_python_unittest`` under ``if(BUILD_TESTING)``; Module/Widget/Logic/Test
  classes with the template's base classes; only definitions and allowed imports at file scope (torch only
  lazily, also not through ``RegistrationSuiteLib`` imports); every ``self.ui.<name>`` exists in the .ui with a
  class that has the member used; every ``SlicerParameterName`` names a parameter-node field of a type the
  widget can represent, and every field is bound or used;
- the hub's generated list of core-library files is current; the core never imports Qt.

Each checker returns a list of human-readable problems; the ``test_detects_*`` tests feed them small broken
inputs to prove they fail when they should.
"""

from __future__ import annotations

import ast
import struct
import zlib

import pytest
from slicer_module_contract import (
    HUB_DIR,
    LIB_NAME,
    MODULES_DIR,
    ROOT,
    WIDGETS_NAME,
    check_core_never_imports_qt,
    check_extension_cmake,
    check_file_scope,
    check_module_cmake,
    check_module_source,
    check_modules_listed,
    check_parameter_bindings,
    check_torch_free_imports,
    check_ui,
    check_ui_usage,
    discover_modules,
    load_cmake_list_updater,
    parse_ui,
    png_problems,
    repository_files_of_urls,
)


MODULES = discover_modules()
OWN_ROOTS = {LIB_NAME, WIDGETS_NAME}


def _module(name):
    directory = MODULES_DIR / name
    return directory, directory / f"{name}.py", directory / "Resources" / "UI" / f"{name}.ui"


def test_modules_are_discovered():
    assert {"RegistrationSuite", "GlobalRigidSearch"} <= set(MODULES)


def test_every_module_folder_is_listed():
    assert check_modules_listed(MODULES_DIR) == []


def test_extension_cmake():
    assert check_extension_cmake(ROOT / "CMakeLists.txt") == []


@pytest.mark.parametrize("variable", ["EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"])
def test_extension_urls_point_to_repository_files(variable):
    paths = repository_files_of_urls(ROOT / "CMakeLists.txt", variable)
    assert paths
    assert [p for p in paths if not (ROOT / p).is_file()] == [], f"{variable}: files missing from the repository"


def test_extension_icon():
    assert png_problems(ROOT / "Resources" / "Icons" / "RegistrationSuite.png") == []


def test_extension_packaging_files():
    assert [f for f in ("README.md", "LICENSE") if not (ROOT / f).is_file()] == []


@pytest.mark.parametrize("name", MODULES)
def test_module_cmake(name):
    assert check_module_cmake(MODULES_DIR / name) == []


@pytest.mark.parametrize("name", MODULES)
def test_module_ui(name):
    assert check_ui(_module(name)[2]) == []


@pytest.mark.parametrize("name", MODULES)
def test_module_source(name):
    assert check_module_source(_module(name)[1]) == []


@pytest.mark.parametrize("name", MODULES)
def test_module_ui_usage_and_bindings(name):
    _, source, ui_path = _module(name)
    tree, ui = ast.parse(source.read_text()), parse_ui(ui_path)
    assert check_ui_usage(tree, ui) + check_parameter_bindings(tree, ui) == []


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_do_not_load_torch(name):
    tree = ast.parse(_module(name)[1].read_text())
    assert check_torch_free_imports(tree, HUB_DIR, OWN_ROOTS) == []


@pytest.mark.parametrize("name", MODULES)
def test_module_icon(name):
    assert png_problems(_module(name)[0] / "Resources" / "Icons" / f"{name}.png") == []


def test_widgets_package_is_slicer_layer_only():
    problems = []
    for path in sorted((HUB_DIR / WIDGETS_NAME).glob("*.py")):
        tree = ast.parse(path.read_text())
        problems += [f"{path.name}: {p}" for p in check_file_scope(tree, allow_relative=True)]
        problems += [f"{path.name}: {p}" for p in check_torch_free_imports(tree, HUB_DIR, {LIB_NAME})]
    assert problems == []


def test_core_library_list_is_current():
    updater = load_cmake_list_updater()
    _, _, unplaced = updater.classify_library_files(HUB_DIR)
    assert unplaced == [], f"not installed (move package data to {LIB_NAME}/data/)"
    current = (HUB_DIR / "CMakeLists.txt").read_text()
    assert current == updater.expected_cmake_text(HUB_DIR), "run: python .ci/update_cmake_lists.py"


def test_core_never_imports_qt():
    assert check_core_never_imports_qt(HUB_DIR / LIB_NAME) == []


# ------------------------------------------------------------- the checkers catch broken inputs (tmp_path)

GOOD_UI = """<?xml version="1.0" encoding="UTF-8"?>
<ui version="4.0"><class>Mod</class><widget class="qMRMLWidget" name="Mod"><layout class="QVBoxLayout" name="l">
<item><widget class="qMRMLNodeComboBox" name="inputSelector">
  <property name="nodeTypes"><stringlist><string>vtkMRMLScalarVolumeNode</string></stringlist></property>
  <property name="SlicerParameterName" stdset="0"><string>inputVolume</string></property></widget></item>
<item><widget class="QCheckBox" name="flagCheckBox">
  <property name="SlicerParameterName" stdset="0"><string>flag</string></property></widget></item>
<item><widget class="QPushButton" name="applyButton"/></item>
</layout></widget>
<customwidgets><customwidget><class>qMRMLNodeComboBox</class><extends>QWidget</extends></customwidget>
<customwidget><class>qMRMLWidget</class><extends>QWidget</extends></customwidget></customwidgets>
<connections><connection><sender>Mod</sender><signal>mrmlSceneChanged(vtkMRMLScene*)</signal>
<receiver>inputSelector</receiver><slot>setMRMLScene(vtkMRMLScene*)</slot></connection></connections></ui>
"""

GOOD_SOURCE = '''
import slicer
from slicer.ScriptedLoadableModule import *
from slicer.parameterNodeWrapper import parameterNodeWrapper


class Mod(ScriptedLoadableModule):
    def __init__(self, parent):
        self.parent.title = self.parent.categories = self.parent.dependencies = "x"
        self.parent.contributors = self.parent.helpText = self.parent.acknowledgementText = "x"


@parameterNodeWrapper
class ModParameterNode:
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    flag: bool = False


class ModWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        self.ui = slicer.util.childWidgetVariables(slicer.util.loadUI(self.resourcePath("UI/Mod.ui")))
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.tag = self.logic.getParameterNode().connectGui(self.ui)

    def onApply(self):
        self.ui.applyButton.enabled = self.ui.inputSelector.currentNode() is not None


class ModLogic(ScriptedLoadableModuleLogic):
    pass


class ModTest(ScriptedLoadableModuleTest):
    def setUp(self):
        pass

    def runTest(self):
        pass
'''


def _write_module(tmp_path, source=GOOD_SOURCE, ui=GOOD_UI):
    module_dir = tmp_path / "Mod"
    (module_dir / "Resources" / "UI").mkdir(parents=True)
    (module_dir / "Resources" / "Icons").mkdir(parents=True)
    (module_dir / "Mod.py").write_text(source)
    (module_dir / "Resources" / "UI" / "Mod.ui").write_text(ui)
    (module_dir / "Resources" / "Icons" / "Mod.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (module_dir / "CMakeLists.txt").write_text(
        "set(MODULE_NAME Mod)\nset(MODULE_PYTHON_SCRIPTS ${MODULE_NAME}.py)\n"
        "set(MODULE_PYTHON_RESOURCES Resources/Icons/${MODULE_NAME}.png Resources/UI/${MODULE_NAME}.ui)\n"
        "slicerMacroBuildScriptedModule(NAME ${MODULE_NAME} SCRIPTS ${MODULE_PYTHON_SCRIPTS}\n"
        "  RESOURCES ${MODULE_PYTHON_RESOURCES} WITH_GENERIC_TESTS)\n"
        "if(BUILD_TESTING)\n  slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py) # a comment (with parens)\nendif()\n")
    return module_dir


def _all_problems(module_dir):
    source, ui_path = module_dir / "Mod.py", module_dir / "Resources" / "UI" / "Mod.ui"
    problems = check_module_cmake(module_dir) + check_ui(ui_path) + check_module_source(source)
    if not any("Mod.ui" in p for p in problems):
        tree, ui = ast.parse(source.read_text()), parse_ui(ui_path)
        problems += check_ui_usage(tree, ui) + check_parameter_bindings(tree, ui)
    return problems


def test_good_module_passes(tmp_path):
    assert _all_problems(_write_module(tmp_path)) == []


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("self.ui.inputSelector.currentNode()", "self.ui.applyButton.currentNode()", "QPushButton has no such member"),
        ("self.ui.applyButton.enabled", "self.ui.missingButton.enabled", "missingButton is not a widget"),
        ("flag: bool = False", "flag: str = ''", "str parameter cannot be shown by a QCheckBox"),
        ("    flag: bool = False", "    flag: bool = False\n    unused: int = 0", "unused is neither bound"),
        ("class ModLogic(ScriptedLoadableModuleLogic)", "class ModLogic(object)", "must derive from"),
        ("class ModTest(", "class ModTests(", "class ModTest missing"),
        ("import slicer\n", "import slicer\nimport torch\n", "torch imported at file scope"),
        ("import slicer\n", "import slicer\nimport requests\n", "'requests' is not allowed"),
        ("import slicer\n", "import slicer\nslicer.util.pip_install('x')\n", "code executed at file scope"),
        ("self.parent.contributors = ", "self.contributors = ", "does not set self.parent.contributors"),
        ('"UI/Mod.ui"', '"UI/Other.ui"', "does not load UI/Mod.ui"),
        (".connectGui(self.ui)", ".connect(self.ui)", "never calls connectGui"),
        ("inputVolume: slicer.vtkMRMLScalarVolumeNode", "inputVolume: slicer.vtkMRMLLabelMapVolumeNode",
         "cannot hold"),
    ],
)
def test_detects_source_problems(tmp_path, old, new, expected):
    assert old in GOOD_SOURCE
    problems = _all_problems(_write_module(tmp_path, source=GOOD_SOURCE.replace(old, new)))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("<string>inputVolume</string>", "<string>inputVolumeTypo</string>", "not a field"),
        ("<receiver>inputSelector</receiver>", "<receiver>flagCheckBox</receiver>", "no mrmlSceneChanged"),
        ('<customwidget><class>qMRMLNodeComboBox</class><extends>QWidget</extends></customwidget>', "",
         "has no <customwidget> entry"),
        ('<property name="nodeTypes"><stringlist><string>vtkMRMLScalarVolumeNode</string></stringlist></property>',
         "", "without nodeTypes"),
        ('class="qMRMLWidget" name="Mod"', 'class="QWidget" name="Mod"', "must be a qMRMLWidget"),
        ('class="QCheckBox" name="flagCheckBox"', 'class="QLineEdit" name="flagCheckBox"',
         "bool parameter cannot be shown by a QLineEdit"),
        ("</ui>", "", "Mod.ui"),
    ],
)
def test_detects_ui_problems(tmp_path, old, new, expected):
    assert old in GOOD_UI
    problems = _all_problems(_write_module(tmp_path, ui=GOOD_UI.replace(old, new)))
    assert any(expected in p for p in problems), problems


def test_detects_cmake_problems(tmp_path):
    module_dir = _write_module(tmp_path)
    (module_dir / "Helper.py").write_text("")
    (module_dir / "Resources" / "Icons" / "Extra.png").write_bytes(b"")
    cmake = module_dir / "CMakeLists.txt"
    text = cmake.read_text().replace("if(BUILD_TESTING)\n", "").replace("endif()\n", "")
    cmake.write_text(text.replace("${MODULE_NAME}.py)\n", "${MODULE_NAME}.py Gone.py)\n", 1))
    problems = check_module_cmake(module_dir)
    for expected in ("Helper.py is not listed in MODULE_PYTHON_SCRIPTS",
                     "Resources/Icons/Extra.png is not listed in MODULE_PYTHON_RESOURCES",
                     "listed file does not exist: Gone.py", "inside if(BUILD_TESTING)"):
        assert any(expected in p for p in problems), (expected, problems)


def test_detects_extension_and_listing_problems(tmp_path):
    good = (ROOT / "CMakeLists.txt").read_text()
    bad = tmp_path / "CMakeLists.txt"
    bad.write_text(good.replace('"PyTorch"', '""').replace("include(${Slicer_EXTENSION_CPACK})", ""))
    problems = check_extension_cmake(bad)
    assert any("EXTENSION_DEPENDS" in p for p in problems) and any("CPACK" in p for p in problems), problems
    (tmp_path / "Listed").mkdir()
    (tmp_path / "Forgotten").mkdir()
    (tmp_path / "Forgotten" / "CMakeLists.txt").write_text("")
    (tmp_path / "Listed" / "CMakeLists.txt").write_text("")
    bad.write_text("add_subdirectory(Listed)\nadd_subdirectory(Ghost)\n")
    assert sorted(check_modules_listed(tmp_path)) == [
        "add_subdirectory(Ghost) names no module folder with a CMakeLists.txt",
        "module folder Forgotten/ is not listed in " + tmp_path.name + "/CMakeLists.txt",
    ]


def test_detects_stale_core_library_list(tmp_path):
    updater = load_cmake_list_updater()
    lib = tmp_path / LIB_NAME
    (lib / "data").mkdir(parents=True)
    (lib / "__pycache__").mkdir()
    for relative in ("__init__.py", "new_module.py", "data/sample.nii.gz", "stray.json", "__pycache__/x.pyc"):
        (lib / relative).write_text("")
    (tmp_path / "CMakeLists.txt").write_text(f"{updater.BEGIN}\nset(X\n  {LIB_NAME}/old_module.py\n  )\n{updater.END}\n")
    scripts, resources, unplaced = updater.classify_library_files(tmp_path)
    assert scripts == [f"{LIB_NAME}/__init__.py", f"{LIB_NAME}/new_module.py"]
    assert resources == [f"{LIB_NAME}/data/sample.nii.gz"] and unplaced == [f"{LIB_NAME}/stray.json"]
    expected = updater.expected_cmake_text(tmp_path)
    assert expected != (tmp_path / "CMakeLists.txt").read_text() and "old_module" not in expected
    assert updater.main(["--check", "--module-dir", str(tmp_path)]) == 1
    assert updater.main(["--module-dir", str(tmp_path)]) == 0
    (lib / "stray.json").unlink()
    assert updater.main(["--check", "--module-dir", str(tmp_path)]) == 0


def test_detects_torch_through_core_imports_and_qt_in_core(tmp_path):
    lib = tmp_path / LIB_NAME
    (lib / "methods").mkdir(parents=True)
    (lib / "__init__.py").write_text("from .errors import E\n")
    (lib / "errors.py").write_text("class E(Exception):\n    pass\n")
    (lib / "methods" / "__init__.py").write_text("from .search import run\n")
    (lib / "methods" / "search.py").write_text("try:\n    import torch\nexcept ImportError:\n    torch = None\n")
    (lib / "gui.py").write_text("def f():\n    import qt\n")
    fine = ast.parse(f"from {LIB_NAME}.errors import E\n")
    heavy = ast.parse(f"from {LIB_NAME}.methods import run\n")
    assert check_torch_free_imports(fine, tmp_path, {LIB_NAME}) == []
    problems = check_torch_free_imports(heavy, tmp_path, {LIB_NAME})
    assert problems and f"{LIB_NAME}.methods.search -> torch" in problems[0], problems
    assert [p for p in check_core_never_imports_qt(lib) if "gui.py" in p and "'qt'" in p]


def test_detects_bad_png(tmp_path):
    blank = tmp_path / "blank.png"
    raw = b"".join(b"\x00" + b"\xff" * 128 * 3 for _ in range(128))
    ihdr = struct.pack(">IIBBBBB", 128, 128, 8, 2, 0, 0, 0)

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    blank.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    assert any("blank" in p for p in png_problems(blank))
    assert any("expected (64, 64)" in p for p in png_problems(blank, size=(64, 64)))

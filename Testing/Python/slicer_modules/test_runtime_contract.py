"""What makes the modules fail inside Slicer although they parse (issue 8), checked without Slicer.

Static checks (``slicer_runtime_contract``) run on the repository and on deliberately broken inputs; import
checks run the module files in a subprocess with torch made unimportable (``sys.modules["torch"] = None``)
and the application-only parts of Slicer stubbed (``slicer_stubs``).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from slicer_module_contract import HUB_DIR, LIB_NAME, MODULES_DIR, ROOT, WIDGETS_NAME, discover_modules
from slicer_runtime_contract import (
    check_extension_catalog,
    check_grammar,
    check_module_conventions,
    check_module_tests,
    check_newer_api_calls,
    check_no_reraise_in_slots,
    check_no_threads,
    check_union_fields_include_none,
)

from RegistrationSuiteLib.mrml.slicer_versions import GRAMMAR_PYTHON, NEWER_APIS, SUPPORTED_SLICER

MODULES = discover_modules()
HERE = Path(__file__).resolve().parent
WIDGET_FILES = sorted((HUB_DIR / WIDGETS_NAME).glob("*.py"))
MODULE_FILES = [MODULES_DIR / name / f"{name}.py" for name in MODULES]
SLICER_LAYER = MODULE_FILES + WIDGET_FILES
CORE_FILES = sorted((HUB_DIR / LIB_NAME).rglob("*.py"))
LISTED = {api.name.rsplit(".", 1)[-1]: api.guard for api in NEWER_APIS}


def _tree(path):
    return ast.parse(path.read_text(encoding="utf-8"))


def _rel(path):
    return str(path.relative_to(ROOT))


# --------------------------------------------------------------------------------------- on the repository


@pytest.mark.parametrize("path", MODULE_FILES, ids=_rel)
def test_union_parameter_fields_include_none(path):
    assert check_union_fields_include_none(_tree(path)) == []


@pytest.mark.parametrize("path", SLICER_LAYER + CORE_FILES, ids=_rel)
def test_sources_parse_with_oldest_slicer_grammar(path):
    assert check_grammar(path, GRAMMAR_PYTHON) == []


@pytest.mark.parametrize("path", SLICER_LAYER, ids=_rel)
def test_slicer_layer_has_no_threads_and_no_reraise_in_slots(path):
    tree = _tree(path)
    assert check_no_threads(tree, path.name) + check_no_reraise_in_slots(tree, path.name) == []


@pytest.mark.parametrize("path", MODULE_FILES, ids=_rel)
def test_module_tests_and_conventions(path):
    tree = _tree(path)
    assert check_module_tests(tree, path.name) + check_module_conventions(tree, path.name) == []


@pytest.mark.parametrize("path", SLICER_LAYER, ids=_rel)
def test_newer_slicer_apis_are_listed_and_guarded(path):
    assert check_newer_api_calls(_tree(path), path.name, LISTED) == []


def test_version_table_is_consistent():
    assert len(SUPPORTED_SLICER) == 2  # the current stable release and the one before it
    for api in NEWER_APIS:
        assert api.since not in SUPPORTED_SLICER[:1], f"{api.name} exists in the oldest supported Slicer"
        where = MODULES_DIR / api.where
        text = ast.unparse(ast.parse(where.read_text()))
        assert ast.unparse(ast.parse(api.guard, mode="eval").body) in text, (api.name, api.where)


def test_extension_catalog_entry():
    assert check_extension_catalog(ROOT / "RegistrationSuite.json", "RegistrationSuite") == []


#: Words of the description that name methods, and the module folder (substring) that must ship them.
DESCRIBED_METHODS = {"CSNGF": "GlobalRigidSearch", "TSPM": "PartialVolumePreregistration",
                     "MO-BCPD": "OrganPointCloudRegistration", "histology": "Histology", "deep-learning": "Deformable",
                     "deformable": "Deformable"}


def description_problems(description: str, modules) -> list:
    """Method words in EXTENSION_DESCRIPTION whose module is not shipped."""
    return [f"EXTENSION_DESCRIPTION mentions '{word}' but no {folder} module is shipped"
            for word, folder in DESCRIBED_METHODS.items()
            if word.lower() in description.lower() and not any(folder in m for m in modules)]


def test_extension_description_describes_only_shipped_modules():
    from slicer_module_contract import cmake_commands, cmake_variables

    variables = cmake_variables(cmake_commands((ROOT / "CMakeLists.txt").read_text()))
    description = " ".join(variables["EXTENSION_DESCRIPTION"])
    assert description_problems(description, MODULES) == []
    contributors = " ".join(variables["EXTENSION_CONTRIBUTORS"])
    assert all(re.match(r"^[^,()]+ \([^()]+\)$", c.strip()) for c in contributors.split(",")), contributors
    old = "Published medical image registration methods (global rigid multimodal search, deep-learning deformable"
    without_deformable = [m for m in MODULES if "Deformable" not in m]
    assert description_problems(old, without_deformable)  # before the deformable module: the old text failed


def readme_unavailable_shipped(readme: str, modules) -> list:
    """Shipped modules (CMake ``add_subdirectory``) whose README module-table row does not say 'available'."""
    rows = {m.group(1): m.group(2).strip() for m in re.finditer(r"^\| \**(\w+)\**[^|]*\| ([^|]+) \|", readme, re.M)}
    return [m for m in modules if rows.get(m) != "available"]


def test_readme_module_table_marks_every_shipped_module_available():
    assert readme_unavailable_shipped((ROOT / "README.md").read_text(), MODULES) == []
    # a shipped module still marked 'planned' (as HistologyRegistration once was) is caught
    assert readme_unavailable_shipped("| HistologyRegistration | planned | x |\n", ["HistologyRegistration"])


def test_readme_states_supported_slicer_versions():
    readme = (ROOT / "README.md").read_text()
    for version in SUPPORTED_SLICER:
        assert f"Slicer {version}" in readme


# ------------------------------------------------------------ imports with torch unimportable (subprocess)


def _run_stubbed(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    paths = [str(HERE), str(HUB_DIR)] + [str(MODULES_DIR / name) for name in MODULES]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    prelude = "import sys\nsys.modules['torch'] = None\nsys.modules['torchvision'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_core_method_packages_import_without_torch():
    """Every ``methods/<name>/__init__.py`` and ``config.py`` imports with torch unimportable."""
    methods = sorted(p.parent.name for p in (HUB_DIR / LIB_NAME / "methods").glob("*/__init__.py"))
    assert methods
    proc = _run_stubbed(f"""
        import importlib
        for name in {methods!r}:
            package = importlib.import_module("{LIB_NAME}.methods." + name)
            importlib.import_module("{LIB_NAME}.methods." + name + ".config")
        import {LIB_NAME}.mrml, {LIB_NAME}.mrml.runner, {LIB_NAME}.cli.main
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_torch_made_unimportable_really_fails():
    """The harness itself: a module importing torch at import time fails under it (so the test above can fail)."""
    proc = _run_stubbed("import RegistrationSuiteLib.methods.global_rigid.register\n")
    assert proc.returncode != 0 and "torch" in proc.stderr


@pytest.mark.parametrize("name", MODULES)
def test_module_logic_and_parameter_node_work_without_torch(name):
    """Import the module file, make its Logic, and turn the parameter node's defaults into a config (what
    selecting inputs does on the GUI thread) with torch unimportable."""
    proc = _run_stubbed(f"""
        import slicer_stubs
        slicer_stubs.install()
        import importlib
        module = importlib.import_module({name!r})
        logic = getattr(module, {name!r} + "Logic")()
        print("why:", logic.whyCannotRun(None) if hasattr(logic, "whyCannotRun") else "-")
        wrapper = getattr(module, {name!r} + "ParameterNode", None)
        if wrapper is not None and hasattr(logic, "configFromParameterNode"):
            params = slicer_stubs.parameter_defaults(wrapper)
            try:
                config = logic.configFromParameterNode(params)
                print("config:", type(config).__name__)
            except ValueError as error:  # defaults the module refuses (e.g. no inputs yet): fine, not an import
                print("config refused:", error)
        assert sys.modules.get("torch") is None
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


def test_apply_needs_the_pytorch_extension_only_without_torch():
    """Defect 7: torch installed, PyTorch extension absent → Apply may run (no error shown); torch absent and
    extension absent → one message, nothing runs."""
    proc = _run_stubbed("""
        import slicer_stubs
        stubs = slicer_stubs.install()
        sys.modules["PyTorchUtils"] = None
        from RegistrationSuiteWidgets import torchsupport
        torchsupport.torchStatus = lambda importTorch=False: {"installed": True, "extension": False}
        assert torchsupport.torchReadyForRun() is True
        assert not stubs["errorDisplay"].called
        torchsupport.torchStatus = lambda importTorch=False: {"installed": False, "extension": False}
        assert torchsupport.torchReadyForRun() is False
        assert stubs["errorDisplay"].call_args[0][0] == torchsupport.PYTORCH_EXTENSION_MISSING
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.parametrize("has_category", [True, False], ids=["Slicer 5.12", "Slicer 5.10"])
def test_sample_data_registers_with_and_without_category_api(has_category):
    """Defect 3: before Slicer 5.12 SampleDataLogic has no registerCustomSampleDataCategory."""
    proc = _run_stubbed(f"""
        import slicer_stubs
        stubs = slicer_stubs.install(sample_data_has_category={has_category})
        from RegistrationSuiteWidgets.sampledata import registerSampleVolumes
        registerSampleVolumes("RegistrationSuite", [("RegistrationSuiteT1", "T1", "x.png")], "/icons")
        logic = stubs["SampleData"].SampleDataLogic
        assert logic.registerCustomSampleDataSource.call_count == 1
        if {has_category}:
            logic.registerCustomSampleDataCategory.assert_called_once()
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# ------------------------------------------------------------------- the checkers catch broken inputs


BROKEN = {
    "union without None": (
        "@parameterNodeWrapper\nclass P:\n    a: Union[vtkMRMLSegmentationNode, vtkMRMLModelNode]\n",
        check_union_fields_include_none, "must include None"),
    "thread": ("import threading\n", lambda t: check_no_threads(t, "m.py"), "no threads"),
    "QThread": ("x = qt.QThread()\n", lambda t: check_no_threads(t, "m.py"), "QThread"),
    "tryWithErrorDisplay": ("with slicer.util.tryWithErrorDisplay('x'):\n    pass\n",
                            lambda t: check_no_reraise_in_slots(t, "m.py"), "re-raises"),
    "BaseException": ("try:\n    pass\nexcept BaseException as e:\n    err = e\n",
                      lambda t: check_no_reraise_in_slots(t, "m.py"), "SystemExit"),
    "silent torch install": ("ensureTorch(askConfirmation=False)\n", lambda t: check_module_tests(t, "m.py"),
                             "without asking"),
    "skipTest": ("class T(ScriptedLoadableModuleTest):\n    def runTest(self):\n        self.skipTest('x')\n",
                 lambda t: check_module_tests(t, "m.py"), "skipTest"),
    "untranslated category": ("class M:\n    def __init__(self):\n        self.parent.categories = ['Registration']\n",
                              lambda t: check_module_conventions(t, "m.py"), "translate"),
    "contributor": ("class M:\n    def __init__(self):\n        self.parent.contributors = ['Some people']\n",
                    lambda t: check_module_conventions(t, "m.py"), "First Last (Organisation)"),
    "unguarded newer API": ("SampleData.SampleDataLogic.registerCustomSampleDataCategory('c', title='c')\n",
                            lambda t: check_newer_api_calls(t, "m.py", LISTED), "without its guard"),
    "unlisted newer API": ("slicer.packaging.pip_ensure(['x'])\n",
                           lambda t: check_newer_api_calls(t, "m.py", LISTED), "not in NEWER_APIS"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_checkers_catch_broken_inputs(case):
    source, checker, expected = BROKEN[case]
    problems = checker(ast.parse(source))
    assert any(expected in p for p in problems), problems


def test_good_inputs_pass_the_checkers():
    good = ("@parameterNodeWrapper\nclass P:\n    a: Union[vtkMRMLSegmentationNode, vtkMRMLModelNode, None]\n"
            "    b: Optional[vtkMRMLModelNode]\n"
            "class M:\n    def __init__(self):\n"
            "        self.parent.categories = [translate('qSlicerAbstractCoreModule', 'Registration')]\n"
            "        self.parent.contributors = ['Jane Roe (Example University)']\n"
            "if hasattr(SampleData.SampleDataLogic, 'registerCustomSampleDataCategory'):\n"
            "    SampleData.SampleDataLogic.registerCustomSampleDataCategory('c', title='c')\n")
    tree = ast.parse(good)
    assert (check_union_fields_include_none(tree) + check_module_conventions(tree, "m.py")
            + check_newer_api_calls(tree, "m.py", LISTED)) == []


def test_grammar_check_catches_newer_syntax(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("match x:\n    case 1:\n        pass\n")
    assert check_grammar(path, (3, 9)) and not check_grammar(path, (3, 10))


def test_catalog_check_catches_problems(tmp_path):
    path = tmp_path / "RegistrationSuite.json"
    assert "missing" in check_extension_catalog(path, "RegistrationSuite")[0]
    path.write_text(json.dumps({"$schema": "x", "category": "Registration", "extra": 1}))
    problems = check_extension_catalog(path, "RegistrationSuite")
    for expected in ("$schema", "'scm_url' is required", "PyTorch", "not in the schema"):
        assert any(expected in p for p in problems), (expected, problems)

"""Checkers for the static contract of the Slicer extension layer (used by ``test_module_contract.py``).

Slicer (``qt``, ``ctk``, ``slicer.ScriptedLoadableModule``) is not available in CI, so the modules cannot be
imported: they are parsed (``ast``, ``xml.etree``, a small CMake reader) and compared with the conventions of
Slicer's scripted module template and the extension's rules (SLICER_NOTES.md). Every ``check_*`` function
returns a list of human-readable problems (empty: all good).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import struct
import sys
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path


ROOT = Path(__file__).resolve().parents[3]
MODULES_DIR = ROOT / "RegistrationSuite"
HUB_DIR = MODULES_DIR / "RegistrationSuite"
LIB_NAME = "RegistrationSuiteLib"
WIDGETS_NAME = "RegistrationSuiteWidgets"
MAX_MODULE_LINES = 500

ALLOWED_IMPORT_ROOTS = {"slicer", "qt", "ctk", "vtk", "numpy", "SimpleITK", LIB_NAME, WIDGETS_NAME, "__future__"}
STDLIB = set(getattr(sys, "stdlib_module_names", ())) or {
    "abc", "dataclasses", "enum", "functools", "hashlib", "html", "importlib", "json", "logging", "math", "os",
    "pathlib", "re", "sys", "tempfile", "threading", "time", "traceback", "typing", "unittest",
}
HEAVY_ROOTS = {"torch", "torchvision"}
BASES = {"": "ScriptedLoadableModule", "Widget": "ScriptedLoadableModuleWidget",
         "Logic": "ScriptedLoadableModuleLogic", "Test": "ScriptedLoadableModuleTest"}
EXTENSION_VARIABLES = ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS",
                       "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS")

# ---------------------------------------------------------------------------------------------------- CMake


def cmake_commands(text: str):
    """``[(command_lower, [args], inside_build_testing)]`` of a CMakeLists (comments removed, no expansion)."""
    text = re.sub(r"#\[(=*)\[.*?\]\1\]", "", text, flags=re.S)
    text = "\n".join(re.sub(r'#(?=(?:[^"]*"[^"]*")*[^"]*$).*', "", line) for line in text.splitlines())
    commands, conditions, pos = [], [], 0
    pattern = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")
    while (m := pattern.search(text, pos)) is not None:
        depth, i, quoted = 1, m.end(), False
        while depth and i < len(text):
            quoted ^= text[i] == '"'
            depth += 0 if quoted else {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        args = re.findall(r'"[^"]*"|[^\s()]+', text[m.end(): i - 1])
        args = [a[1:-1] if a.startswith('"') else a for a in args]
        name = m.group(1).lower()
        if name == "if":
            conditions.append(args)
        elif name == "endif" and conditions:
            conditions.pop()
        commands.append((name, args, any("BUILD_TESTING" in c for c in conditions)))
        pos = i
    return commands


def cmake_variables(commands) -> dict:
    """``set()`` variables, each a list with ``${VAR}`` references expanded."""
    variables: dict = {}
    for name, args, _ in commands:
        if name == "set" and args:
            variables[args[0]] = expand(args[1:], variables)
    return variables


def expand(args, variables) -> list:
    out = []
    for arg in args:
        whole = re.fullmatch(r"\$\{(\w+)\}", arg)
        if whole:
            out.extend(variables.get(whole.group(1), []))
        else:
            out.append(re.sub(r"\$\{(\w+)\}", lambda m: ";".join(variables.get(m.group(1), [])), arg))
    return out


def listed_subdirectories(cmake_path: Path) -> list:
    return [args[0] for name, args, _ in cmake_commands(cmake_path.read_text()) if name == "add_subdirectory"]


def discover_modules() -> list:
    return listed_subdirectories(MODULES_DIR / "CMakeLists.txt")


def is_ignored(relative: Path) -> bool:
    """Files that are never installed: hidden, ``__pycache__``, ``*.egg-info``, compiled Python."""
    parts = relative.parts
    return (any(p.startswith(".") or p == "__pycache__" or p.endswith(".egg-info") for p in parts)
            or relative.suffix in (".pyc", ".pyo"))


def check_extension_cmake(path: Path) -> list:
    problems = []
    commands = cmake_commands(path.read_text())
    variables = cmake_variables(commands)
    if not any(n == "project" and a[:1] == ["RegistrationSuite"] for n, a, _ in commands):
        problems.append("project(RegistrationSuite) missing")
    for var in EXTENSION_VARIABLES:
        if not " ".join(variables.get(var, [])).strip():
            problems.append(f"{var} is not set")
    if variables.get("EXTENSION_CATEGORY") != ["Registration"]:
        problems.append(f"EXTENSION_CATEGORY: expected 'Registration', got {variables.get('EXTENSION_CATEGORY')}")
    if "PyTorch" not in " ".join(variables.get("EXTENSION_DEPENDS", [])).split():
        problems.append("EXTENSION_DEPENDS must include PyTorch (SlicerPyTorch provides PyTorchUtils)")
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        if any(not u.startswith("https://") for u in " ".join(variables.get(var, [])).split()):
            problems.append(f"{var}: expected https:// URLs")
    required = [("find_package", "Slicer"), ("include", "${Slicer_USE_FILE}"),
                ("include", "${Slicer_EXTENSION_GENERATE_CONFIG}"), ("include", "${Slicer_EXTENSION_CPACK}"),
                ("add_subdirectory", "RegistrationSuite")]
    for command, first in required:
        if not any(n == command and a and a[0] == first for n, a, _ in commands):
            problems.append(f"{command}({first}) missing")
    return problems


def repository_files_of_urls(cmake_path: Path, variable: str) -> list:
    """Repository paths that ``raw.githubusercontent.com/<owner>/<repo>/<branch>/<path>`` URLs point to."""
    urls = " ".join(cmake_variables(cmake_commands(cmake_path.read_text())).get(variable, [])).split()
    return [re.sub(r"^https://raw\.githubusercontent\.com/[^/]+/[^/]+/[^/]+/", "", u) for u in urls]


def check_modules_listed(modules_dir: Path) -> list:
    listed = set(listed_subdirectories(modules_dir / "CMakeLists.txt"))
    present = {p.name for p in modules_dir.iterdir() if p.is_dir() and (p / "CMakeLists.txt").is_file()}
    return ([f"module folder {m}/ is not listed in {modules_dir.name}/CMakeLists.txt" for m in sorted(present - listed)]
            + [f"add_subdirectory({m}) names no module folder with a CMakeLists.txt" for m in sorted(listed - present)])


def module_cmake_lists(module_dir: Path):
    """``(commands, scripts, resources)`` of a module's CMakeLists (paths relative to the module folder)."""
    commands = cmake_commands((module_dir / "CMakeLists.txt").read_text())
    variables = cmake_variables(commands)
    scripts, resources = [], []
    for name, args, _ in commands:
        if name == "slicermacrobuildscriptedmodule":
            section = None
            for arg in args:
                if arg in ("NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS", "WITH_SUBDIR", "VERBOSE"):
                    section = arg
                elif section == "SCRIPTS":
                    scripts.extend(expand([arg], variables))
                elif section == "RESOURCES":
                    resources.extend(expand([arg], variables))
    scripts = [s if s.endswith(".py") else s + ".py" for s in scripts]
    return commands, scripts, resources


def check_module_cmake(module_dir: Path) -> list:
    name = module_dir.name
    commands, scripts, resources = module_cmake_lists(module_dir)
    problems = []
    if cmake_variables(commands).get("MODULE_NAME") != [name]:
        problems.append(f"set(MODULE_NAME {name}) missing")
    if not any(n == "slicermacrobuildscriptedmodule" for n, _, _ in commands):
        problems.append("slicerMacroBuildScriptedModule(...) missing")
    tests = [(expand(a, cmake_variables(commands)), t) for n, a, t in commands if n == "slicer_add_python_unittest"]
    if not any(args[:2] == ["SCRIPT", f"{name}.py"] and inside for args, inside in tests):
        problems.append(f"slicer_add_python_unittest(SCRIPT {name}.py) missing inside if(BUILD_TESTING)")
    for listed in scripts + resources:
        if not (module_dir / listed).is_file():
            problems.append(f"listed file does not exist: {listed}")
    for must in (f"{name}.py", f"Resources/UI/{name}.ui", f"Resources/Icons/{name}.png"):
        if not (module_dir / must).is_file():
            problems.append(f"missing {must}")
    own_subprojects = {d for n, a, _ in commands if n == "add_subdirectory" for d in a[:1]}
    for path in sorted(module_dir.rglob("*")):
        relative = path.relative_to(module_dir)
        if not path.is_file() or is_ignored(relative) or relative.parts[0] in own_subprojects:
            continue
        if relative.as_posix() == "CMakeLists.txt":
            continue
        where = scripts if path.suffix == ".py" else resources
        if relative.as_posix() not in where:
            kind = "MODULE_PYTHON_SCRIPTS" if path.suffix == ".py" else "MODULE_PYTHON_RESOURCES"
            problems.append(f"{relative.as_posix()} is not listed in {kind}: it would not be installed")
    return problems


# ------------------------------------------------------------------------------------------------- .ui files


def parse_ui(path: Path) -> dict:
    """``{"top": (name, class), "widgets": {name: (class, {property: value})}, "connections": [...],
    "custom": {class}}``; values: str, bool, number, or list (stringlist)."""
    root = ET.parse(path).getroot()
    if root.tag != "ui" or root.get("version") != "4.0":
        raise ValueError(f"{path.name}: expected <ui version=\"4.0\">")
    top = root.find("widget")
    widgets = {}
    for w in root.iter("widget"):
        props = {}
        for p in w.findall("property"):
            value = list(p)[0] if len(p) else None
            if value is None:
                continue
            props[p.get("name")] = ([s.text or "" for s in value] if value.tag == "stringlist"
                                    else (value.text or "") == "true" if value.tag == "bool" else value.text or "")
        if w.get("name") in widgets:
            raise ValueError(f"{path.name}: duplicate widget name {w.get('name')}")
        widgets[w.get("name")] = (w.get("class"), props)
    connections = [tuple(c.findtext(t) for t in ("sender", "signal", "receiver", "slot")) for c in root.iter("connection")]
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    return {"top": (top.get("name"), top.get("class")), "widgets": widgets, "connections": connections, "custom": custom}


def check_ui(path: Path) -> list:
    try:
        ui = parse_ui(path)
    except (ET.ParseError, ValueError) as error:
        return [f"{path.name}: {error}"]
    top_name, top_class = ui["top"]
    problems = [] if top_class == "qMRMLWidget" else [f"top-level widget must be a qMRMLWidget, got {top_class}"]
    for name, (cls, props) in ui["widgets"].items():
        if not cls.startswith("Q") and cls not in ui["custom"]:
            problems.append(f"{name}: class {cls} has no <customwidget> entry")
        if cls == "qMRMLNodeComboBox" and not props.get("nodeTypes"):
            problems.append(f"{name}: qMRMLNodeComboBox without nodeTypes")
        if cls.startswith("qMRML") and name != top_name and (
                top_name, "mrmlSceneChanged(vtkMRMLScene*)", name, "setMRMLScene(vtkMRMLScene*)") not in ui["connections"]:
            problems.append(f"{name}: no mrmlSceneChanged(vtkMRMLScene*) -> setMRMLScene(vtkMRMLScene*) connection")
    for sender, _, receiver, _ in ui["connections"]:
        for end in (sender, receiver):
            if end not in ui["widgets"]:
                problems.append(f"connection names unknown widget {end}")
    return problems


# ------------------------------------------------------------------------------------- widget members table

BUTTONS = {"QPushButton", "QToolButton", "ctkPushButton", "ctkCheckablePushButton", "ctkMenuButton"}
CHECKABLE = BUTTONS | {"QCheckBox", "ctkCheckBox", "QRadioButton", "ctkCollapsibleButton", "QGroupBox",
                       "ctkCollapsibleGroupBox"}
NUMERIC = {"QSpinBox", "QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSpinBox", "QSlider", "ctkDoubleSlider",
           "qMRMLSliderWidget", "qMRMLSpinBox", "QProgressBar", "QDial"}
COMBOS = {"QComboBox", "ctkComboBox"}
TEXT_EDITS = {"QTextEdit", "QPlainTextEdit", "QTextBrowser"}
MEMBER_CLASSES = {
    **dict.fromkeys(("currentNode", "setCurrentNode", "currentNodeID", "setCurrentNodeID", "currentNodeChanged",
                     "nodeTypes", "addEnabled", "removeEnabled", "noneEnabled", "renameEnabled", "noneDisplay",
                     "baseName", "addNode", "nodeAdded", "nodeActivated"), {"qMRMLNodeComboBox"}),
    **dict.fromkeys(("value", "setValue", "valueChanged", "minimum", "maximum", "setMinimum", "setMaximum",
                     "setRange", "singleStep", "setSingleStep"), NUMERIC),
    "decimals": NUMERIC - {"QSpinBox", "QSlider", "QProgressBar", "QDial"},
    **dict.fromkeys(("format", "setFormat", "textVisible", "reset"), {"QProgressBar"}),
    **dict.fromkeys(("checked", "setChecked", "isChecked", "toggled", "checkable", "setCheckable"), CHECKABLE),
    **dict.fromkeys(("clicked", "pressed", "released", "click", "animateClick"), CHECKABLE),
    **dict.fromkeys(("text", "setText"), BUTTONS | CHECKABLE | {"QLabel", "QLineEdit"}),
    **dict.fromkeys(("textChanged", "editingFinished", "returnPressed", "placeholderText",
                     "setPlaceholderText", "readOnly", "setReadOnly"), {"QLineEdit"} | TEXT_EDITS),
    **dict.fromkeys(("wordWrap", "setWordWrap", "linkActivated", "linkHovered", "textFormat", "setTextFormat",
                     "openExternalLinks", "setOpenExternalLinks", "pixmap", "setPixmap"), {"QLabel"}),
    **dict.fromkeys(("currentIndex", "setCurrentIndex", "currentText", "setCurrentText", "addItem", "addItems",
                     "currentIndexChanged", "count", "itemText", "itemData", "findText", "findData"), COMBOS),
    "clear": COMBOS | TEXT_EDITS | {"QLineEdit", "QLabel"},
    **dict.fromkeys(("collapsed", "setCollapsed", "contentsCollapsed", "collapsedChanged"),
                    {"ctkCollapsibleButton", "ctkCollapsibleGroupBox"}),
    **dict.fromkeys(("plainText", "setPlainText", "toPlainText", "append", "appendPlainText", "setHtml", "html"),
                    TEXT_EDITS),
    **dict.fromkeys(("currentPath", "setCurrentPath", "currentPathChanged", "directory", "directoryChanged"),
                    {"ctkPathLineEdit", "ctkDirectoryButton"}),
}
GENERIC_MEMBERS = {"enabled", "setEnabled", "visible", "setVisible", "hidden", "setHidden", "show", "hide",
                   "toolTip", "setToolTip", "connect", "disconnect", "blockSignals", "property", "setProperty",
                   "objectName", "name", "update", "setFocus", "styleSheet", "setStyleSheet", "parent",
                   "layout", "findChildren", "setSizePolicy", "minimumWidth", "setMinimumWidth", "destroyed"}
MRML_MEMBERS = {"setMRMLScene", "mrmlScene", "mrmlSceneChanged"}


def member_allowed(member: str, cls: str) -> bool:
    if member in GENERIC_MEMBERS:
        return True
    if member in MRML_MEMBERS:
        return cls.startswith("qMRML")
    return cls in MEMBER_CLASSES.get(member, set())


def ui_usages(tree: ast.AST) -> list:
    """``[(widget, member_or_None, line)]`` for every ``self.ui.<widget>[.<member>]`` in the code; a
    ``.connect("signal(args)", ...)`` call counts as a use of the signal."""
    def is_ui_widget(node):
        return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self")

    uses, owned = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and is_ui_widget(node.func.value) \
                and node.func.attr == "connect" and node.args and isinstance(node.args[0], ast.Constant):
            uses.append((node.func.value.attr, str(node.args[0].value).split("(")[0], node.lineno))
        if isinstance(node, ast.Attribute) and is_ui_widget(node.value):
            uses.append((node.value.attr, node.attr, node.lineno))
            owned.add(id(node.value))
    for node in ast.walk(tree):
        if is_ui_widget(node) and id(node) not in owned:
            uses.append((node.attr, None, node.lineno))
    return uses


def check_ui_usage(tree: ast.AST, ui: dict) -> list:
    problems = []
    for widget, member, line in ui_usages(tree):
        if widget not in ui["widgets"]:
            problems.append(f"line {line}: self.ui.{widget} is not a widget of the .ui file")
        elif member is not None and not member_allowed(member, ui["widgets"][widget][0]):
            problems.append(f"line {line}: self.ui.{widget}.{member}: a {ui['widgets'][widget][0]} has no such "
                            "member (or add it to MEMBER_CLASSES in the contract test)")
    return problems


# ------------------------------------------------------------------------ parameter node wrapper bindings

BIND_CLASSES = {
    "bool": {"QCheckBox", "ctkCheckBox", "QPushButton", "ctkCheckablePushButton"},
    "int": {"QSpinBox", "QSlider", "QDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "ctkDoubleSlider",
            "ctkDoubleSpinBox", "qMRMLSpinBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "ctkDoubleSlider", "ctkDoubleSpinBox",
              "qMRMLSpinBox"},
    "str": {"QLineEdit", "QLabel", "QTextEdit"},
    "Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
}
NEEDS_BOUNDS = {"ctkSliderWidget", "qMRMLSliderWidget", "QSlider"}
KNOWN_SUBCLASSES = {
    "vtkMRMLVolumeNode": {"vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLVectorVolumeNode"},
    "vtkMRMLScalarVolumeNode": {"vtkMRMLLabelMapVolumeNode"},
    "vtkMRMLTransformNode": {"vtkMRMLLinearTransformNode", "vtkMRMLGridTransformNode", "vtkMRMLBSplineTransformNode"},
}


def annotation_info(node) -> tuple:
    """``(type names, validator names)`` of an annotation: unwraps Annotated, Optional, Union and ``|``."""
    if isinstance(node, ast.Name):
        return {node.id}, set()
    if isinstance(node, ast.Attribute):
        return {node.attr}, set()
    if isinstance(node, ast.Constant):
        return ({node.value} if isinstance(node.value, str) else set()), set()
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        (t1, v1), (t2, v2) = annotation_info(node.left), annotation_info(node.right)
        return t1 | t2, v1 | v2
    if isinstance(node, ast.Subscript):
        head = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
        elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if head == "Annotated":
            types, validators = annotation_info(elts[0])
            names = {getattr(e.func, "id", getattr(e.func, "attr", "")) for e in elts[1:] if isinstance(e, ast.Call)}
            return types, validators | names
        if head in ("Optional", "Union"):
            types, validators = set(), set()
            for e in elts:
                t, v = annotation_info(e)
                types, validators = types | t, validators | v
            return types, validators
        return {head}, set()
    return set(), set()


def wrapper_fields(tree: ast.AST):
    """``(class node, {field: (types, validators)})`` of the ``@parameterNodeWrapper`` class, or ``(None, {})``."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                getattr(d, "id", getattr(d, "attr", None)) == "parameterNodeWrapper" for d in node.decorator_list):
            return node, {s.target.id: annotation_info(s.annotation) for s in node.body
                          if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    return None, {}


def binding_problem(field: str, info: tuple, cls: str, props: dict):
    types, validators = info
    types = types - {"None", None}
    node_types = {t for t in types if str(t).startswith("vtkMRML")}
    if node_types:
        if cls != "qMRMLNodeComboBox":
            return f"{field}: a node parameter needs a qMRMLNodeComboBox, got {cls}"
        allowed = node_types | {s for t in node_types for s in KNOWN_SUBCLASSES.get(t, ())}
        extra = [t for t in props.get("nodeTypes", []) if t not in allowed]
        return f"{field}: combo box offers {extra}, which the field ({sorted(node_types)}) cannot hold" if extra else None
    if cls in COMBOS:
        return None if "Choice" in validators else f"{field}: a {cls} binding needs an Annotated[..., Choice(...)]"
    base = next(iter(types)) if len(types) == 1 else None
    if base not in BIND_CLASSES:
        return f"{field}: cannot check a binding of type {sorted(map(str, types))} to {cls}"
    if cls not in BIND_CLASSES[base]:
        return f"{field}: a {base} parameter cannot be shown by a {cls} (use one of {sorted(BIND_CLASSES[base])})"
    if cls in NEEDS_BOUNDS and "WithinRange" not in validators and not {"Minimum", "Maximum"} <= validators:
        return f"{field}: a {cls} needs a bounded type (Annotated[..., WithinRange(lo, hi)])"
    return None


def check_parameter_bindings(tree: ast.AST, ui: dict) -> list:
    wrapper, fields = wrapper_fields(tree)
    bound = {props.get("SlicerParameterName"): (cls, props) for cls, props in ui["widgets"].values()
             if props.get("SlicerParameterName")}
    problems = []
    if bound and wrapper is None:
        problems.append("the .ui has SlicerParameterName properties but the module has no @parameterNodeWrapper class")
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} - (
        {n.attr for n in ast.walk(wrapper) if isinstance(n, ast.Attribute)} if wrapper else set())
    for name, (cls, props) in bound.items():
        if wrapper is not None and name not in fields:
            problems.append(f"SlicerParameterName '{name}' is not a field of {wrapper.name}")
        elif wrapper is not None and (p := binding_problem(name, fields[name], cls, props)):
            problems.append(p)
    for name in fields:
        if name not in bound and name not in used:
            problems.append(f"parameter {name} is neither bound to a widget nor used in the code")
    if wrapper is not None and "connectGui" not in used:
        problems.append("the widget never calls connectGui(self.ui)")
    return problems


# ------------------------------------------------------------------------------------ module source checks


def import_roots(node) -> list:
    if isinstance(node, ast.Import):
        return [a.name.split(".")[0] for a in node.names]
    return ["."] if node.level else [node.module.split(".")[0]]


def check_file_scope(tree: ast.AST, allow_relative: bool = False) -> list:
    """Only imports of allowed packages and definitions at file scope (constants may be assigned)."""
    problems = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for root in import_roots(node):
                if root == "." and allow_relative:
                    continue
                if root in HEAVY_ROOTS:
                    problems.append(f"line {node.lineno}: {root} imported at file scope (import it lazily)")
                elif root not in ALLOWED_IMPORT_ROOTS and root not in STDLIB:
                    problems.append(f"line {node.lineno}: '{root}' is not allowed at file scope in a Slicer module")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and not any(
                isinstance(n, (ast.Call, ast.Await, ast.Yield, ast.NamedExpr)) for n in ast.walk(node)):
            continue
        else:
            problems.append(f"line {node.lineno}: code executed at file scope ({type(node).__name__})")
    return problems


def check_module_classes(tree: ast.AST, name: str, ui_file: str) -> list:
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    problems = []
    for suffix, base in BASES.items():
        cls = classes.get(name + suffix)
        bases = {getattr(b, "id", getattr(b, "attr", None)) for b in cls.bases} if cls else set()
        if cls is None:
            problems.append(f"class {name}{suffix} missing")
        elif base not in bases:
            problems.append(f"class {name}{suffix} must derive from {base}, derives from {sorted(map(str, bases))}")
    module_cls = classes.get(name)
    if module_cls is not None:
        assigned = {t.attr for n in ast.walk(module_cls) if isinstance(n, ast.Assign) for t in n.targets
                    if isinstance(t, ast.Attribute) and getattr(t.value, "attr", None) == "parent"}
        for attr in ("title", "categories", "dependencies", "contributors", "helpText", "acknowledgementText"):
            if attr not in assigned:
                problems.append(f"{name}.__init__ does not set self.parent.{attr}")
    test_cls = classes.get(name + "Test")
    if test_cls is not None:
        methods = {n.name for n in test_cls.body if isinstance(n, ast.FunctionDef)}
        problems += [f"{name}Test.{m}() missing" for m in ("setUp", "runTest") if m not in methods]
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    if ui_file not in strings:
        problems.append(f"the widget does not load {ui_file} (slicer.util.loadUI(self.resourcePath('{ui_file}')))")
    return problems


def check_module_source(path: Path) -> list:
    text = path.read_text()
    tree = ast.parse(text)
    problems = check_file_scope(tree) + check_module_classes(tree, path.stem, f"UI/{path.stem}.ui")
    lines = len(text.splitlines())
    if lines >= MAX_MODULE_LINES:
        problems.append(f"{path.name} has {lines} lines: move shared code to {WIDGETS_NAME} or the core")
    return problems


# --------------------------------------------------------------------------- imports through the core library


def _module_path(package_parent: Path, dotted: str):
    base = package_parent.joinpath(*dotted.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _file_scope_imports(path: Path, dotted: str) -> list:
    """Absolute names imported when ``dotted`` is imported (file scope, including nested if/try blocks)."""
    package = dotted if path.name == "__init__.py" else dotted.rpartition(".")[0]
    names, stack = [], list(ast.parse(path.read_text()).body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.If, ast.Try)):
            stack += node.body + node.orelse + getattr(node, "finalbody", []) + [
                s for h in getattr(node, "handlers", []) for s in h.body]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def heavy_import_chain(dotted: str, package_parent: Path, own_roots: set):
    """The chain of modules through which importing ``dotted`` imports torch at file scope, or ``None``."""
    seen, queue = set(), [(dotted, [dotted])]
    while queue:
        name, chain = queue.pop(0)
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c imports a, a.b and a.b.c
            current = ".".join(parts[:i])
            if parts[0] in HEAVY_ROOTS:
                return chain
            if current in seen or parts[0] not in own_roots:
                continue
            seen.add(current)
            path = _module_path(package_parent, current)
            if path is not None:
                queue += [(n, chain + [n]) for n in _file_scope_imports(path, current)]
    return None


def check_torch_free_imports(tree: ast.AST, package_parent: Path, own_roots: set) -> list:
    problems = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in own_roots:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.split(".")[0] in own_roots]
        else:
            continue
        for target in targets:
            chain = heavy_import_chain(target, package_parent, own_roots)
            if chain:
                problems.append(f"line {node.lineno}: importing {target} imports torch at load time via "
                                f"{' -> '.join(chain)}; import it inside a function")
                break
    return problems


def check_core_never_imports_qt(lib_dir: Path) -> list:
    problems = []
    for path in sorted(lib_dir.rglob("*.py")):
        if is_ignored(path.relative_to(lib_dir)):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                bad = {r for r in import_roots(node) if r in {"qt", "ctk", "PythonQt", WIDGETS_NAME}}
                if bad:
                    problems.append(f"{path.relative_to(lib_dir.parent)}:{node.lineno} imports {sorted(bad)}")
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)) and {"slicer", "vtk"} & set(import_roots(node)):
                problems.append(f"{path.relative_to(lib_dir.parent)}:{node.lineno} imports slicer/vtk at file "
                                "scope (the core must import without Slicer)")
    return problems


def load_cmake_list_updater():
    spec = importlib.util.spec_from_file_location("update_cmake_lists", ROOT / ".ci" / "update_cmake_lists.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png_problems(path: Path, size=(128, 128)) -> list:
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return [f"{path.name}: not a PNG file"]
    width, height = struct.unpack(">II", data[16:24])
    problems = [] if (width, height) == size else [f"{path.name}: expected {size}, got {(width, height)}"]
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos: pos + 8])
        idat += data[pos + 8: pos + 8 + length] if kind == b"IDAT" else b""
        pos += 12 + length
    if len(set(zlib.decompress(idat))) < 16:
        problems.append(f"{path.name}: looks blank (almost no distinct pixel values)")
    return problems

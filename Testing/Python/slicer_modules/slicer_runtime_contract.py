"""Checkers for what makes the modules fail *inside* Slicer although they look fine statically (issue 8).

Each ``check_*`` returns a list of human-readable problems (empty: all good); ``test_runtime_contract.py``
runs them on the repository and on deliberately broken inputs. Facts checked against Slicer's own source
(tags v5.8.1, v5.10.0, v5.12.x; see SLICER_NOTES.md and ``RegistrationSuiteLib.mrml.slicer_versions``):

- a ``parameterNodeWrapper`` field typed as a union of node classes must include ``None``
  (``UnionSerializer`` raises ``TypeError`` when the wrapper writes the default ``None``);
- module and core sources parse with the grammar of the oldest Slicer's Python;
- no threads in module or widget code (Slicer keeps the GIL while its event loop idles);
- no exception re-raised into a Qt slot (``slicer.util.tryWithErrorDisplay`` re-raises; ``except
  BaseException`` would carry ``SystemExit``, which ends Slicer when raised in a slot);
- module tests never install torch silently and never call ``self.skipTest`` (``runTest`` calls the test
  methods directly, so "Reload and Test" shows a skip as an error);
- categories wrapped in ``translate("qSlicerAbstractCoreModule", ...)``, contributors "Name (Organisation)";
- every call of an API newer than the oldest supported Slicer is listed in ``NEWER_APIS`` and guarded.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

#: Slicer APIs that the oldest supported Slicer lacks (name → first release); a call needs an entry in
#: ``slicer_versions.NEWER_APIS`` with a guard.
KNOWN_NEWER_APIS = {
    "registerCustomSampleDataCategory": "5.12",
    "pip_ensure": "5.12",
}
THREAD_MODULES = {"threading", "_thread", "concurrent", "multiprocessing"}
CONTRIBUTOR = re.compile(r"^[^,()]+ \([^()]+\)$")


def _annotation_names(node) -> list:
    """Flat list of the type names in an annotation (Optional/Union/``|`` unwrapped; ``None`` as "None")."""
    if node is None:
        return []
    if isinstance(node, ast.Constant):
        return ["None"] if node.value is None else [str(node.value)]
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _annotation_names(node.left) + _annotation_names(node.right)
    if isinstance(node, ast.Subscript):
        head = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
        elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if head == "Optional":
            return _annotation_names(elts[0]) + ["None"]
        if head == "Union":
            return [n for e in elts for n in _annotation_names(e)]
        if head == "Annotated":
            return _annotation_names(elts[0])
        return [head]
    return []


def check_union_fields_include_none(tree: ast.AST) -> list:
    """Parameter-node fields typed as a union of several node classes must include ``None``."""
    problems = []
    for cls in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
        if not any(getattr(d, "id", getattr(d, "attr", None)) == "parameterNodeWrapper" for d in cls.decorator_list):
            continue
        for stmt in cls.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                names = _annotation_names(stmt.annotation)
                nodes = [n for n in names if n.startswith("vtkMRML")]
                if len(nodes) > 1 and "None" not in names:
                    problems.append(f"{cls.name}.{stmt.target.id}: a union of node types must include None "
                                    f"(Slicer's UnionSerializer raises TypeError on the default None)")
    return problems


def check_grammar(path: Path, feature_version: tuple) -> list:
    """The file parses with the Python grammar ``feature_version`` (the oldest Slicer's Python)."""
    try:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=feature_version)
    except SyntaxError as error:
        return [f"{path.name}:{error.lineno}: not Python {'.'.join(map(str, feature_version))} grammar: {error.msg}"]
    return []


def check_no_threads(tree: ast.AST, name: str) -> list:
    """No thread or process-pool imports and no ``QThread`` (runs go to a child process instead)."""
    problems = []
    for node in ast.walk(tree):
        roots = []
        if isinstance(node, ast.Import):
            roots = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots = [node.module.split(".")[0]]
        for root in roots:
            if root in THREAD_MODULES:
                problems.append(f"{name}:{node.lineno}: imports '{root}': no threads in Slicer module code")
        if isinstance(node, ast.Attribute) and node.attr == "QThread":
            problems.append(f"{name}:{node.lineno}: uses QThread: no threads in Slicer module code")
    return problems


def check_no_reraise_in_slots(tree: ast.AST, name: str) -> list:
    """No ``slicer.util.tryWithErrorDisplay`` (it re-raises into the slot) and no ``except BaseException``."""
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "tryWithErrorDisplay":
            problems.append(f"{name}:{node.lineno}: tryWithErrorDisplay re-raises in a Qt slot; use reportErrors")
        if isinstance(node, ast.ExceptHandler) and node.type is not None and \
                "BaseException" in _annotation_names(node.type):
            problems.append(f"{name}:{node.lineno}: 'except BaseException' hands SystemExit on (ends Slicer in a slot)")
    return problems


def _test_classes(tree: ast.AST):
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(getattr(b, "id", "") == "ScriptedLoadableModuleTest"
                                                  for b in node.bases):
            yield node


def check_module_tests(tree: ast.AST, name: str) -> list:
    """Module tests: no silent torch install (``askConfirmation=False``) and no ``self.skipTest``."""
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg == "askConfirmation" and isinstance(keyword.value, ast.Constant) and \
                        keyword.value.value is False:
                    problems.append(f"{name}:{node.lineno}: askConfirmation=False installs torch without asking")
    for cls in _test_classes(tree):
        for node in ast.walk(cls):
            if isinstance(node, ast.Attribute) and node.attr == "skipTest":
                problems.append(f"{name}:{node.lineno}: self.skipTest in a module test shows as an error in "
                                f"'Reload and Test' (runTest calls it directly): report and return")
    return problems


def _assigned(tree: ast.AST, attribute: str):
    """Values assigned to ``self.parent.<attribute>``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and target.attr == attribute and \
                        isinstance(target.value, ast.Attribute) and target.value.attr == "parent":
                    yield node.value


def check_module_conventions(tree: ast.AST, name: str) -> list:
    """Categories wrapped in ``translate("qSlicerAbstractCoreModule", ...)``; contributors "Name (Organisation)"."""
    problems = []
    for value in _assigned(tree, "categories"):
        items = value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]
        for item in items:
            ok = (isinstance(item, ast.Call) and getattr(item.func, "id", getattr(item.func, "attr", "")) == "translate"
                  and item.args and isinstance(item.args[0], ast.Constant)
                  and item.args[0].value == "qSlicerAbstractCoreModule")
            if not ok:
                problems.append(f"{name}: categories must be wrapped in translate(\"qSlicerAbstractCoreModule\", ...)")
    for value in _assigned(tree, "contributors"):
        items = value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]
        for item in items:
            text = item.value if isinstance(item, ast.Constant) and isinstance(item.value, str) else None
            if text is None or not CONTRIBUTOR.match(text):
                problems.append(f"{name}: contributor {ast.unparse(item)} is not 'First Last (Organisation)'")
    return problems


def check_newer_api_calls(tree: ast.AST, name: str, listed: dict) -> list:
    """Calls of known newer-than-oldest APIs must be listed (``listed``: API short name → guard text) and the
    call must sit under an ``if`` whose test is that guard."""
    problems = []
    guarded = set()
    listed = {api: ast.unparse(ast.parse(guard, mode="eval").body) for api, guard in listed.items()}
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = ast.unparse(node.test)
            for inner in ast.walk(node):
                if isinstance(inner, ast.Attribute) and inner.attr in KNOWN_NEWER_APIS and \
                        listed.get(inner.attr) == test:
                    guarded.add(id(inner))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in KNOWN_NEWER_APIS:
            since = KNOWN_NEWER_APIS[node.attr]
            if node.attr not in listed:
                problems.append(f"{name}:{node.lineno}: {node.attr} (Slicer {since}+) is not in NEWER_APIS")
            elif id(node) not in guarded:
                problems.append(f"{name}:{node.lineno}: {node.attr} (Slicer {since}+) is called without its guard "
                                f"'{listed[node.attr]}'")
    return problems


def check_extension_catalog(path: Path, extension_name: str) -> list:
    """The ExtensionsIndex catalog entry (``<Extension>.json``): schema, category, scm_url, PyTorch dependency."""
    import json

    if not path.is_file():
        return [f"{path.name} missing: the ExtensionsIndex catalog entry belongs in the repository"]
    try:
        entry = json.loads(path.read_text())
    except ValueError as error:
        return [f"{path.name}: not JSON ({error})"]
    problems = []
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}
    if "slicer-extension-catalog-entry-schema" not in str(entry.get("$schema", "")):
        problems.append(f"{path.name}: $schema must name slicer-extension-catalog-entry-schema")
    for key in ("category", "scm_url"):
        if not entry.get(key):
            problems.append(f"{path.name}: '{key}' is required")
    if "PyTorch" not in entry.get("build_dependencies", []):
        problems.append(f"{path.name}: build_dependencies must list PyTorch (EXTENSION_DEPENDS)")
    if set(entry) - allowed:
        problems.append(f"{path.name}: keys not in the schema: {sorted(set(entry) - allowed)}")
    if path.stem != extension_name:
        problems.append(f"{path.name}: the file must be named {extension_name}.json")
    return problems

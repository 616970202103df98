"""The hub's "Which method do I need?" table: every module it names exists in the catalogue, each kind of case
is answered, and the HTML it produces links the loaded modules (run without Slicer: parsed, not imported)."""

import ast
import html
import types
from html.parser import HTMLParser

from slicer_module_contract import HUB_DIR

SOURCE = HUB_DIR / "RegistrationSuite.py"


def _logic_class() -> ast.ClassDef:
    tree = ast.parse(SOURCE.read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "RegistrationSuiteLogic")


def _constant(cls: ast.ClassDef, name: str):
    node = next(n for n in cls.body if isinstance(n, ast.Assign) and n.targets[0].id == name)
    return ast.literal_eval(node.value)


def test_guide_names_only_catalogued_modules_and_answers_each_question():
    cls = _logic_class()
    modules = {m for m, _t, _s in _constant(cls, "METHODS")}
    guide = _constant(cls, "METHOD_GUIDE")
    named = {m for _case, steps, _note in guide for m in steps}
    assert named <= modules and named == modules  # every method is reachable from the table
    cases = " ".join(case.lower() for case, _s, _n in guide)
    for question in ("points", "histology", "partial", "modality", "deformation", "many pairs"):
        assert question in cases
    chain = next(steps for case, steps, _n in guide if "deformation" in case.lower())
    assert chain[-1] == "DeformableRegistration" and chain[0] == "GlobalRigidSearch"  # rigid before deformable


def test_guide_html_links_loaded_modules_only():
    cls = _logic_class()
    func = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "methodGuideHtml")
    namespace = {"html": html, "_": lambda s: s}
    exec(compile(ast.Module([func], []), str(SOURCE), "exec"), namespace)
    fake = types.SimpleNamespace(METHOD_GUIDE=_constant(cls, "METHOD_GUIDE"), METHODS=_constant(cls, "METHODS"),
                                 isModuleAvailable=lambda m: m == "GlobalRigidSearch")
    text = namespace["methodGuideHtml"](fake)
    links = []

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "a":
                links.append(dict(attrs)["href"])

    P().feed(text)
    assert set(links) == {"GlobalRigidSearch"} and "planned" in text and text.count("<tr>") == 1 + len(fake.METHOD_GUIDE)

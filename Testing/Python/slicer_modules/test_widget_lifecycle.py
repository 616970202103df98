"""The widgets' parameter-node and scene lifecycle (``enter``, ``exit``, scene close, ``cleanup``), run on the real
widget classes with Slicer stubbed and a real MRML scene: the modules that use the shared
``RegistrationSuiteWidgets.ParameterNodeWidgetMixin`` and those that still carry their own copy behave the same."""

import ast

import pytest
from slicer_module_contract import MODULES_DIR, discover_modules
from test_runtime_contract import _run_stubbed

MODULES = [m for m in discover_modules() if m != "RegistrationSuite"]  # the hub shows no parameter node

#: The methods that ParameterNodeWidgetMixin provides: a widget that uses the mixin must not define them again.
MIXIN_METHODS = {"cleanup", "enter", "exit", "onSceneStartClose", "onSceneEndClose"}


@pytest.mark.parametrize("name", MODULES)
def test_widget_uses_the_shared_lifecycle_once(name):
    """The widget lists ParameterNodeWidgetMixin before ScriptedLoadableModuleWidget (so the mixin's ``cleanup``
    wins), observes the scene through ``observeSceneClose`` in ``setup`` and keeps no copy of the mixin's methods."""
    tree = ast.parse((MODULES_DIR / name / f"{name}.py").read_text(encoding="utf-8"))
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{name}Widget")
    bases = [b.id for b in widget.bases if isinstance(b, ast.Name)]
    assert "ParameterNodeWidgetMixin" in bases, bases
    assert bases.index("ParameterNodeWidgetMixin") < bases.index("ScriptedLoadableModuleWidget"), bases
    methods = {n.name for n in widget.body if isinstance(n, ast.FunctionDef)}
    assert not methods & MIXIN_METHODS, sorted(methods & MIXIN_METHODS)
    setup = next(n for n in widget.body if isinstance(n, ast.FunctionDef) and n.name == "setup")
    calls = {c.func.attr for c in ast.walk(setup) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)}
    assert "observeSceneClose" in calls
    assert not {"StartCloseEvent", "EndCloseEvent"} & {a.attr for a in ast.walk(setup) if isinstance(a, ast.Attribute)}


@pytest.mark.parametrize("name", MODULES)
def test_enter_exit_scene_close_and_cleanup(name):
    proc = _run_stubbed(f"""
        import slicer_stubs
        slicer_stubs.install()
        from unittest import mock
        import importlib
        import slicer

        slicer.mrmlScene = slicer.vtkMRMLScene()
        module = importlib.import_module({name!r})
        events = []

        class Params:
            \"\"\"A parameter node wrapper stand-in: GUI connections recorded, observers on a real MRML node.\"\"\"
            def __init__(self):
                self.node = slicer.vtkMRMLScriptedModuleNode()
                self.fixedVolume = self.movingVolume = self.fixedInput = self.movingInput = None
                self.model, self.organTable = "", ""
            def __getattr__(self, name):  # any other parameter: a plain default
                return None
            def __bool__(self):
                return True
            def connectGui(self, ui):
                events.append("connectGui")
                return "tag"
            def disconnectGui(self, tag):
                events.append(f"disconnectGui {{tag}}")
            def AddObserver(self, *args):
                return self.node.AddObserver(*args)
            def RemoveObserver(self, tag):
                return self.node.RemoveObserver(tag)

        params = Params()
        widget = getattr(module, {name!r} + "Widget")(mock.MagicMock())
        widget.ui = mock.MagicMock()
        widget.logic = mock.MagicMock()
        widget.logic.getParameterNode.return_value = params
        widget.logic.whyCannotRun.return_value = ""
        widget._abandonRun = lambda: events.append("abandon")
        if hasattr(widget, "updateModels"):  # a module's own part of initializeParameterNode (lists model files)
            widget.updateModels = lambda: None
        checks = []
        def check(caller=None, event=None):
            checks.append(event)
        widget._checkCanApply = check  # the observer is bound at setParameterNode time: counts Modified events

        # setup's part: observe the scene
        if hasattr(widget, "observeSceneClose"):
            widget.observeSceneClose()
        else:
            widget.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, widget.onSceneStartClose)
            widget.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, widget.onSceneEndClose)

        widget.enter()
        assert events == ["connectGui"], events
        n = len(checks)
        params.node.Modified()
        assert len(checks) == n + 1  # the parameter node is observed while shown

        widget.exit()
        assert events[-1] == "disconnectGui tag" and widget._parameterNodeGuiTag is None, events
        n = len(checks)
        params.node.Modified()
        assert len(checks) == n  # no longer observed once hidden

        widget.enter()
        assert events[-1] == "connectGui", events
        widget.parent.isEntered = True
        slicer.mrmlScene.Clear(0)  # StartCloseEvent, EndCloseEvent
        assert events[-3:] == ["abandon", "disconnectGui tag", "connectGui"], events  # released, retaken
        assert widget._parameterNode is params

        widget.parent.isEntered = False
        slicer.mrmlScene.Clear(0)
        assert events[-2:] == ["abandon", "disconnectGui tag"] and widget._parameterNode is None, events

        widget.cleanup()
        assert events[-1] == "abandon" and widget.Observations == [], widget.Observations
        count = len(events)
        slicer.mrmlScene.Clear(0)
        assert len(events) == count  # nothing observed after cleanup
        print("mixin" if hasattr(widget, "observeSceneClose") else "own copy")
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]

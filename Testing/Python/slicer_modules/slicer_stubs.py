"""Minimal stand-ins for the parts of Slicer that exist only in the application (``qt``, ``ctk``,
``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``, ``slicer.i18n``, ``slicer.app``,
``SampleData``), so that CI can *import* the module files and call their Logic (issue 8: importing a module's
Logic and parameter node must work with torch unimportable).

They only make imports and plain calls possible: widgets are not exercised (that needs Slicer). Used in a
subprocess (``install()`` changes ``sys.modules``).
"""

from __future__ import annotations

import sys
import types
from unittest import mock


class _Base:
    def __init__(self, *args, **kwargs):
        self.parent = mock.MagicMock()


class ScriptedLoadableModuleLogic:
    def __init__(self, *args, **kwargs):
        pass

    def getParameterNode(self):
        return mock.MagicMock()


def _module(name, **attributes):
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def install(sample_data_has_category: bool = True) -> dict:
    """Install the stubs; returns ``{"errorDisplay": MagicMock, "SampleData": module}`` for assertions."""
    sys.modules["qt"] = mock.MagicMock(name="qt")
    sys.modules["ctk"] = mock.MagicMock(name="ctk")
    try:
        import slicer  # the slicer-core wheel, when installed
        import slicer.util  # noqa: F401
    except ImportError:
        slicer = _module("slicer")
        slicer.util = _module("slicer.util", VTKObservationMixin=type("VTKObservationMixin", (), {}))
        for name in ("vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLLinearTransformNode",
                     "vtkMRMLGridTransformNode", "vtkMRMLModelNode", "vtkMRMLSegmentationNode", "vtkMRMLTableNode"):
            setattr(slicer, name, type(name, (), {}))
    error_display = mock.MagicMock(name="errorDisplay")
    slicer.util.errorDisplay = error_display
    slicer.app = mock.MagicMock(name="slicer.app")
    slicer.i18n = _module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text)
    slicer.parameterNodeWrapper = _module(
        "slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls,
        Choice=lambda *a, **k: None, Minimum=lambda *a, **k: None, WithinRange=lambda *a, **k: None,
        Default=lambda *a, **k: None)
    slicer.ScriptedLoadableModule = _module(
        "slicer.ScriptedLoadableModule", ScriptedLoadableModule=type("ScriptedLoadableModule", (_Base,), {}),
        ScriptedLoadableModuleWidget=type("ScriptedLoadableModuleWidget", (_Base,), {}),
        ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest=type("ScriptedLoadableModuleTest", (), {}))
    logic = type("SampleDataLogic", (), {"registerCustomSampleDataSource": staticmethod(mock.MagicMock())})
    if sample_data_has_category:
        logic.registerCustomSampleDataCategory = staticmethod(mock.MagicMock())
    sample_data = _module("SampleData", SampleDataLogic=logic)
    return {"errorDisplay": error_display, "SampleData": sample_data}


def parameter_defaults(cls) -> types.SimpleNamespace:
    """A stand-in parameter node: the wrapper class's field defaults (``None`` where there is none)."""
    fields = {}
    for klass in reversed(cls.__mro__):
        fields.update(getattr(klass, "__annotations__", {}))
    return types.SimpleNamespace(**{name: getattr(cls, name, None) for name in fields})

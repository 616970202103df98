"""Helpers shared by the RegistrationSuite Slicer modules' widgets (Slicer layer only).

This package runs only inside 3D Slicer: it may import ``qt`` and ``slicer`` at top level. The Qt-free core
(``RegistrationSuiteLib``) must never import it. No threads here: runs go to a child process.

- :mod:`.childrun`: run a registration in a child process (``RegistrationSuiteLib.mrml.runner.ChildRun``),
  polled from a ``qt.QTimer``; ``ChildRunMixin`` is the widgets' Apply ↔ Cancel, progress and error display;
  every run gets ``--threads`` from the user setting ``THREADS_SETTING`` (default: every core).
- :mod:`.lifecycle`: ``ParameterNodeWidgetMixin``, the widgets' ``enter``/``exit``/``cleanup`` and scene-close
  handling of the parameter node (Slicer's module template), once.
- :mod:`.torchsupport`: torch status and installation through the PyTorch extension (``PyTorchUtils``).
- :mod:`.sampledata`: register the volumes shipped in ``RegistrationSuiteLib/data`` with Sample Data.
- :mod:`.results`: one-line summaries of a ``RegistrationResult`` for the modules' result labels.

Slicer APIs newer than the oldest supported Slicer, and the guard each call uses, are listed in
``RegistrationSuiteLib.mrml.slicer_versions`` (checked in CI).
"""

from .childrun import (
    THREADS_SETTING,
    ChildRunMixin,
    childProcessThreads,
    reportErrors,
    setApplyButtonRunning,
    showError,
)
from .lifecycle import ParameterNodeWidgetMixin
from .results import formatResultSummary
from .sampledata import registerSampleVolumes
from .torchsupport import (
    PYTORCH_EXTENSION_MISSING,
    ensureTorch,
    pyTorchUtilsAvailable,
    torchReadyForRun,
    torchSkipReason,
    torchStatus,
)

__all__ = [
    "PYTORCH_EXTENSION_MISSING",
    "THREADS_SETTING",
    "ChildRunMixin",
    "ParameterNodeWidgetMixin",
    "childProcessThreads",
    "ensureTorch",
    "formatResultSummary",
    "pyTorchUtilsAvailable",
    "reportErrors",
    "registerSampleVolumes",
    "setApplyButtonRunning",
    "showError",
    "torchReadyForRun",
    "torchSkipReason",
    "torchStatus",
]

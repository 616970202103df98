"""Helpers shared by the RegistrationSuite Slicer modules' widgets (Slicer layer only).

This package runs only inside 3D Slicer: it may import ``qt`` and ``slicer`` at top level. The Qt-free core
(``RegistrationSuiteLib``) must never import it.

- :mod:`.background`: run a registration in a worker thread and poll it from a ``qt.QTimer``, so the GUI
  stays responsive and the run can be cancelled; ``BackgroundRunMixin`` is the widgets' Apply ↔ Cancel.
- :mod:`.torchsupport`: torch status and installation through the PyTorch extension (``PyTorchUtils``).
- :mod:`.sampledata`: register the volumes shipped in ``RegistrationSuiteLib/data`` with Sample Data.
- :mod:`.results`: one-line summaries of a ``RegistrationResult`` for the modules' result labels.
"""

from .background import BackgroundRunMixin, BackgroundTask, setApplyButtonRunning
from .results import formatResultSummary
from .sampledata import registerSampleVolumes
from .torchsupport import PYTORCH_EXTENSION_MISSING, ensureTorch, pyTorchUtilsAvailable, torchStatus

__all__ = [
    "PYTORCH_EXTENSION_MISSING",
    "BackgroundRunMixin",
    "BackgroundTask",
    "ensureTorch",
    "formatResultSummary",
    "pyTorchUtilsAvailable",
    "registerSampleVolumes",
    "setApplyButtonRunning",
    "torchStatus",
]

"""Supported Slicer versions and the Slicer APIs newer than the oldest one (with the guard each call uses).

Qt-free data, read by the modules' documentation and checked by the static CI test
(``Testing/Python/slicer_modules``): every API listed here must appear in the named file next to its guard,
and the module sources must parse with the Python grammar of :data:`GRAMMAR_PYTHON`.

Supported: the current stable Slicer release and the one before it (checked against Slicer's tags: v5.10.0,
v5.12.0 … v5.12.3). Slicer 5.10 and 5.12 ship Python 3.12. The sources are kept to the Python 3.9 grammar of
Slicer 5.8.1 as well, so that the modules still load there (not a supported version: best effort).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Supported Slicer releases (major.minor), oldest first.
SUPPORTED_SLICER = ("5.10", "5.12")
#: Python version shipped by each supported release (``Slicer_REQUIRED_PYTHON_VERSION`` in Slicer's CMake).
SLICER_PYTHON = {"5.8": (3, 9), "5.10": (3, 12), "5.12": (3, 12)}
#: Grammar the module sources and the core must parse with (``ast.parse(..., feature_version=...)``):
#: Slicer 5.8's Python 3.9, stricter than the supported releases' 3.12.
GRAMMAR_PYTHON = SLICER_PYTHON["5.8"]


@dataclass(frozen=True)
class NewerApi:
    """One Slicer API the modules call that the oldest supported Slicer lacks.

    Attributes:
        name: dotted name as called.
        since: first Slicer release that has it.
        guard: the expression the calling code tests before the call (must appear in ``where``).
        fallback: what happens on older Slicer.
        where: file (relative to ``RegistrationSuite/``) holding the call and the guard.
    """

    name: str
    since: str
    guard: str
    fallback: str
    where: str


NEWER_APIS = (
    NewerApi(
        name="SampleData.SampleDataLogic.registerCustomSampleDataCategory",
        since="5.12",
        guard='hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory")',
        fallback="skipped: registerCustomSampleDataSource creates the category itself",
        where="RegistrationSuite/RegistrationSuiteWidgets/sampledata.py",
    ),
)

#: Calls deliberately *not* used because they are newer than the oldest supported Slicer or misbehave there
#: (documented so that nobody "simplifies" the code into them).
AVOIDED_APIS = {
    "slicer.util.launchConsoleProcess(..., blocking=False)": "5.12 only; the runner uses subprocess.Popen",
    "slicer.packaging.pip_ensure": "5.12 only; torch comes from the PyTorch extension (PyTorchUtils)",
}

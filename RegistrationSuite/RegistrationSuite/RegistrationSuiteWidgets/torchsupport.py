"""torch through the PyTorch extension (SlicerPyTorch's ``PyTorchUtils``), never by pip directly.

Nothing here installs or imports torch at import time; :func:`torchStatus` does not even import torch unless
asked to, because importing it takes seconds.
"""

import importlib.metadata
import logging
import sys

import slicer

PYTORCH_EXTENSION_MISSING = (
    "This module needs the PyTorch extension (SlicerPyTorch) from the Extensions Manager. "
    "Install it, restart Slicer, then try again."
)


def pyTorchUtilsAvailable():
    """``True`` if the PyTorch extension's ``PyTorchUtils`` module can be imported."""
    try:
        import PyTorchUtils  # noqa: F401
    except ImportError:
        return False
    return True


def torchStatus(importTorch=False):
    """What is known about torch, as a dict of display strings.

    Args:
        importTorch: import torch (seconds) to report CUDA and the default device; otherwise these are only
            reported when torch is already imported.

    Returns:
        ``{"installed": bool, "version": str, "cuda": str, "device": str, "extension": bool}``.
    """
    status = {"installed": False, "version": "not installed", "cuda": "unknown", "device": "unknown",
              "extension": pyTorchUtilsAvailable()}
    try:
        status["version"] = importlib.metadata.version("torch")
        status["installed"] = True
    except importlib.metadata.PackageNotFoundError:
        return status
    if importTorch or "torch" in sys.modules:
        try:
            import torch
        except Exception as error:  # a broken install: report it rather than fail the panel
            status["cuda"] = f"torch cannot be imported: {error}"
            return status
        available = torch.cuda.is_available()
        status["cuda"] = f"available (CUDA {torch.version.cuda})" if available else "not available"
        status["device"] = torch.cuda.get_device_name(0) if available else "CPU"
    else:
        status["cuda"] = status["device"] = "not checked yet (torch is not loaded)"
    return status


def torchReadyForRun():
    """Before Apply: ``True`` when torch is installed (the child process imports it; the PyTorch extension
    is then not needed). Otherwise offer to install it through the PyTorch extension (the user confirms),
    or say that the extension is missing; ``False`` when nothing should run."""
    if torchStatus()["installed"]:
        return True
    return ensureTorch(askConfirmation=True) is not None


def torchSkipReason():
    """For module tests: why a test needing torch cannot run ("" when it can). Never installs anything:
    a test must not download torch (``installTorch(askConfirmation=False)`` would, silently)."""
    return "" if torchStatus()["installed"] else "torch is not installed (install it from the PyTorch extension)"


def ensureTorch(askConfirmation=True):
    """Return the torch module, installing it through PyTorchUtils if needed (after the user confirms).

    Only for the user's Apply (:func:`torchReadyForRun`) and the hub module's install button, never from a
    test: with ``askConfirmation=False`` PyTorchUtils downloads torch and torchvision without asking.

    Returns:
        the ``torch`` module, or ``None`` if the PyTorch extension is missing (the user is told) or the user
        declined the installation.
    """
    if torchStatus()["installed"]:  # torch is usable without the extension (e.g. pip-installed)
        import torch

        return torch
    try:
        import PyTorchUtils
    except ImportError:
        slicer.util.errorDisplay(PYTORCH_EXTENSION_MISSING)
        return None
    logic = PyTorchUtils.PyTorchUtilsLogic()
    torch = logic.installTorch(askConfirmation=askConfirmation)
    if torch is None:
        logging.info("RegistrationSuite: torch installation declined; nothing was run")
    return torch

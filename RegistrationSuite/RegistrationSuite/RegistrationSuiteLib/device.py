"""Compute-device selection (no global device at import time) and CPU thread counts (torch-free)."""

from __future__ import annotations

import os

from .errors import InputError


def resolve_device(device: str = "auto"):
    """``"auto"`` → CUDA when available, else CPU; ``"cpu"``/``"cuda"``/``"cuda:N"`` as given.

    Raises:
        InputError: unknown name, or CUDA requested but not available.
    """
    import torch

    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device: '{device}' requested but CUDA is not available (torch {torch.__version__})")
        return torch.device(name)
    raise InputError(f"device: expected 'auto', 'cpu' or 'cuda[:N]', got '{device}'")


def default_thread_count() -> int:
    """The CPU cores this process may use (its affinity where the system reports one, else ``os.cpu_count()``),
    at least 1: the default ``--threads`` of a child run started from Slicer, where the user's machine is not
    shared the way a test or benchmark machine is."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # absent on Windows and macOS
        count = os.cpu_count() or 1
    return max(1, int(count))


def thread_count_from_setting(value) -> int:
    """``--threads`` from a user setting: a whole number >= 1 (an ``int`` or the text a settings file returns);
    anything else (unset, empty, 0, not a number) gives :func:`default_thread_count`."""
    try:
        count = int(str(value).strip())
    except (TypeError, ValueError):
        return default_thread_count()
    return count if count >= 1 else default_thread_count()

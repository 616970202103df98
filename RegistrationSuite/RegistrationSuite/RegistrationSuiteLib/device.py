"""Compute-device selection (no global device at import time)."""

from __future__ import annotations

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

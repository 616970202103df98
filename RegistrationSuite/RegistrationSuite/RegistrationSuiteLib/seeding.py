"""The one place where random state is created (see STYLE.md §7)."""

from __future__ import annotations

import random

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (if imported) torch global generators; prefer explicit generators instead."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:  # torch is optional for methods that do not need it
        return
    torch.manual_seed(seed)


def numpy_rng(seed: int | None) -> np.random.Generator:
    """A NumPy generator for ``seed`` (``None`` gives a fresh, non-deterministic one)."""
    return np.random.default_rng(seed)

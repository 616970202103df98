"""The one place where random state is created (see STYLE.md §7).

Reproducibility contract (README "Reproducibility"): the same inputs, options, seed, device and thread count
give the same result. Library functions take an explicit ``seed`` (or generator) for every stochastic step;
:func:`seed_everything` additionally seeds the global generators and asks torch for deterministic algorithms,
and the CLI calls it once per command.

What can still differ: results on another thread count (SimpleITK/torch split reductions per thread, so the
rounding of sums changes), on another device (CUDA kernels round differently; some, e.g. the backward pass of
``grid_sample``, accumulate with atomics and have no deterministic implementation), or with another library
version.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
import random
import sys

import numpy as np

# What every command's ``--seed`` help promises.
SEED_PROMISE = ("the same inputs, options, seed, device and thread count give the same result "
                "(README: Reproducibility)")

# SimpleITK's ``SetMetricSamplingPercentage(p, seed)`` reads seed 0 (``sitkWallClock``) as "seed from the wall
# clock", and takes an unsigned 32-bit seed.
_ITK_SEED_MODULUS = 2**32 - 1


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed Python, NumPy and (if installed) torch global generators; prefer explicit generators instead.

    Args:
        seed: any integer.
        deterministic: also select torch's deterministic algorithms where they exist (a warning, not an
            error, for the few CUDA operations that have none) and turn cuDNN autotuning off; on the CPU
            the cost is within measurement noise (README "Reproducibility").
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:  # torch is optional for methods that do not need it
        return
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace for reproducible matrix products; must be set before the first call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        _deterministic_algorithms(torch)
        # Deterministic mode also NaN-fills every new tensor (a debugging aid for reads of uninitialised memory,
        # which the library does not do): 5-10 % more CPU time in the rigid search, so it is left off.
        import torch.utils.deterministic as torch_deterministic

        torch_deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _deterministic_algorithms(torch) -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without its import of
    ``torch._inductor.config`` (about 1.6 s of CPU time at start-up, measured; the flag it sets there only
    matters to ``torch.compile``, which this package never calls). If torch's inductor is already loaded, or
    torch lacks the internal setter, the public call is made."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
        return
    setter(True, warn_only=True)


def numpy_rng(seed: int | None) -> np.random.Generator:
    """A NumPy generator for ``seed`` (``None`` gives a fresh, non-deterministic one)."""
    return np.random.default_rng(seed)


def itk_seed(seed: int) -> int:
    """The SimpleITK sampling seed for ``seed``: never 0 (which SimpleITK reads as "use the wall clock"),
    within ``[1, 2**32 - 1]``, and different for different seeds in ``[0, 2**32 - 2]``.

    Raises:
        TypeError: ``seed`` is not an integer.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an integer, got {type(seed).__name__} {seed!r}")
    return int(seed) % _ITK_SEED_MODULUS + 1


@contextmanager
def itk_threads(count: int):
    """Run the enclosed SimpleITK calls with ``count`` threads (ITK's process-wide default), then restore it.

    Why: ITK's v4 registration metrics (Mattes MI at least) combine per-thread partial results in an order
    that varies from run to run, so a multi-threaded registration is not bit-reproducible even with a fixed
    sampling seed; ``ImageRegistrationMethod.SetNumberOfThreads`` alone does not reach every part of it.
    Not thread-safe: another Python thread running ITK filters meanwhile sees the changed default.
    """
    import SimpleITK as sitk

    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(count))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)

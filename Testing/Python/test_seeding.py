"""The one seeding module: seed_everything makes torch/NumPy/Python draws repeatable, itk_seed never hands
SimpleITK the wall-clock seed 0, itk_threads restores ITK's thread default."""

import random

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.utils.deterministic as torch_deterministic

from RegistrationSuiteLib.seeding import itk_seed, itk_threads, seed_everything


@pytest.fixture
def restore_torch_determinism():
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch_deterministic.fill_uninitialized_memory
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch_deterministic.fill_uninitialized_memory = fill


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_seed_everything_repeats_global_draws(restore_torch_determinism):
    seed_everything(123)
    first = _draws()
    seed_everything(123)
    assert _draws() == first
    seed_everything(124)
    assert _draws() != first
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch_deterministic.fill_uninitialized_memory is False  # its NaN fill costs 5-10 % CPU, adds nothing


def test_seed_everything_can_leave_algorithms_alone(restore_torch_determinism):
    torch.use_deterministic_algorithms(False)
    seed_everything(5, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("seed, expected", [(0, 1), (1, 2), (41, 42), (2**32 - 2, 2**32 - 1), (2**32 - 1, 1), (-1, 2**32 - 1)])
def test_itk_seed_is_never_the_wall_clock(seed, expected):
    assert itk_seed(seed) == expected  # 0 would be sitkWallClock
    assert 1 <= itk_seed(seed) <= 2**32 - 1


def test_itk_seed_rejects_non_integers():
    with pytest.raises(TypeError, match="seed"):
        itk_seed(1.5)
    with pytest.raises(TypeError, match="seed"):
        itk_seed(True)


def test_itk_threads_restores_the_default():
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    with itk_threads(1):
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before
    with pytest.raises(ZeroDivisionError):
        with itk_threads(1):
            1 / 0
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before


def test_fresh_process_gets_deterministic_algorithms_without_importing_inductor():
    """The CLI seeds once per process: determinism on, warn-only, and torch's inductor (about 1.6 s of CPU
    time, only used by torch.compile) not imported for it."""
    import subprocess
    import sys

    code = ("import sys, torch; from RegistrationSuiteLib.seeding import seed_everything; seed_everything(3); "
            "print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(), "
            "'torch._inductor.config' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "False"]

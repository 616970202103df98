"""Fixtures of the TSPM tests: one torch thread (a shared 2-core CPU runs single-threaded torch fastest)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

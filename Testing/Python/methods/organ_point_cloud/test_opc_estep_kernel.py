"""E-step and kernel known answers: rows of P sum to 1, chunked/k-NN paths equal the dense matrix, the
label transition gates associations, G has the paper's form, low rank approximates exact, PD guard."""

import math

import numpy as np
import pytest
import torch

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.methods.organ_point_cloud import OrganPointCloudConfig
from RegistrationSuiteLib.methods.organ_point_cloud import estep, kernel

from opc_shapes import one_torch_thread  # noqa: F401


def _sets(m=120, n=90, labels=2, seed=0):
    rng = np.random.default_rng(seed)
    y = torch.as_tensor(rng.normal(scale=20.0, size=(m, 3)))
    x = torch.as_tensor(rng.normal(scale=20.0, size=(n, 3)))
    ly = torch.as_tensor(rng.integers(0, labels, m))
    lx = torch.as_tensor(rng.integers(0, labels, n))
    log_w = torch.as_tensor(-math.log(m) - rng.uniform(0, 0.5, m))
    return x, lx, y, ly, log_w


def _stats_from_dense(p, x):
    return p.sum(1), p.sum(0), p @ x


@pytest.mark.parametrize("budget", [1e9, 2000.0])  # one chunk, then a few rows per chunk
def test_rows_sum_to_one_and_chunked_equals_dense(budget):
    x, lx, y, ly, log_w = _sets()
    u = np.array([[0.7, 0.3], [0.2, 0.8]])
    stats = estep.e_step(x, y, estep.build_groups(lx, ly, u), log_w, 30.0, -math.inf, budget_bytes=budget)
    p = estep.dense_probabilities(x, y, lx, ly, u, log_w, 30.0, -math.inf)
    np.testing.assert_allclose(p.sum(0).numpy(), 1.0, atol=1e-12)  # no outliers: every moving point explained
    nu, nu_x, px = _stats_from_dense(p, x)
    np.testing.assert_allclose(stats.nu.numpy(), nu.numpy(), atol=1e-10)
    np.testing.assert_allclose(stats.nu_x.numpy(), nu_x.numpy(), atol=1e-10)
    np.testing.assert_allclose(stats.px.numpy(), px.numpy(), atol=1e-8)


def test_outlier_term_matches_dense_and_lowers_row_sums():
    x, lx, y, ly, log_w = _sets(seed=1)
    log_c = math.log(0.1 / 0.9) - 3 * math.log(80.0) + 1.5 * math.log(2 * math.pi * 30.0)
    groups = estep.build_groups(lx, ly, np.eye(2))
    stats = estep.e_step(x, y, groups, log_w, 30.0, log_c, budget_bytes=3000.0)
    p = estep.dense_probabilities(x, y, lx, ly, np.eye(2), log_w, 30.0, log_c)
    np.testing.assert_allclose(stats.nu_x.numpy(), p.sum(0).numpy(), atol=1e-12)
    assert float(stats.nu_x.max()) < 1.0


def test_identity_transition_forbids_cross_label_association():
    x, lx, y, ly, log_w = _sets(seed=2)
    p = estep.dense_probabilities(x, y, lx, ly, np.eye(2), log_w, 500.0, -math.inf)
    cross = (ly[:, None] != lx[None, :]).numpy()
    assert float(p.numpy()[cross].max()) == 0.0


def test_knn_path_equals_dense_when_sigma_is_small():
    rng = np.random.default_rng(4)
    y = torch.as_tensor(rng.uniform(-60, 60, size=(3000, 3)))
    x = y[::2] + torch.as_tensor(rng.normal(scale=0.5, size=(1500, 3)))
    lx, ly = torch.zeros(1500, dtype=torch.int64), torch.zeros(3000, dtype=torch.int64)
    log_w = torch.full((3000,), -math.log(3000.0), dtype=torch.float64)
    groups = estep.build_groups(lx, ly, np.eye(1))
    state = [estep.SparseState()]
    knn = estep.e_step(x, y, groups, log_w, 4.0, -math.inf, budget_bytes=1e8, cutoff=6.0, sparse_states=state)
    dense = estep.e_step(x, y, groups, log_w, 4.0, -math.inf, budget_bytes=1e8)
    assert knn.sparse and state[0].used == 1 and not dense.sparse
    np.testing.assert_allclose(knn.nu.numpy(), dense.nu.numpy(), atol=1e-6)
    np.testing.assert_allclose(knn.px.numpy(), dense.px.numpy(), atol=1e-4)


def test_kernel_block_has_the_paper_form():
    p = kernel.KernelParams(torch.tensor([10.0, 4.0], dtype=torch.float64), torch.tensor([30.0, 12.0], dtype=torch.float64),
                            torch.tensor([[1.0, 0.3], [0.3, 1.0]], dtype=torch.float64))
    a, b = torch.tensor([[0.0, 0, 0], [5.0, 1, 2]], dtype=torch.float64), torch.tensor([[3.0, 4, 0]], dtype=torch.float64)
    g = kernel.kernel_block(a, torch.tensor([0, 1]), b, torch.tensor([1]), p).numpy()
    expected = [10 * 4 * 0.3 * math.exp(-25 / (2 * 30 * 12)), 4 * 4 * 1.0 * math.exp(-(4 + 9 + 4) / (2 * 12 * 12))]
    np.testing.assert_allclose(g[:, 0], expected, rtol=1e-12)


def test_gp_interpolation_equals_explicit_kernel_sum():
    model = OrganPointCloudConfig(lambda_mm={1: 8.0, 2: 12.0}, beta_mm={1: 20.0, 2: 25.0}, coherence="global").label_model([1, 2])
    p = kernel.KernelParams.from_model(model, torch.float64, "cpu")
    x, lx, y, ly, _ = _sets(m=60, n=40, seed=5)
    w = torch.as_tensor(np.random.default_rng(0).normal(size=(60, 3)))
    v = kernel.gp_interpolate(x, lx, y, ly, w, p, budget_bytes=500.0)
    np.testing.assert_allclose(v.numpy(), (kernel.kernel_block(x, lx, y, ly, p) @ w).numpy(), atol=1e-9)


def test_low_rank_matches_exact_decomposition():
    x, lx, y, ly, _ = _sets(m=400, labels=1, seed=6)
    model = OrganPointCloudConfig().label_model([0])
    p = kernel.KernelParams.from_model(model, torch.float64, "cpu")
    gen = torch.Generator().manual_seed(0)
    exact = kernel.lowrank_kernel(y, ly, model, p, None, jitter=0.0, generator=gen, budget_bytes=1e8, notes=[])
    low = kernel.lowrank_kernel(y, ly, model, p, 30, jitter=0.0, generator=gen, budget_bytes=1e8, notes=[])
    g = kernel.kernel_block(y, ly, y, ly, p)
    assert exact.exact and not low.exact and low.rank == 30
    np.testing.assert_allclose((exact.qh @ exact.qh.T).numpy(), g.numpy(), atol=1e-8 * float(g.max()))
    np.testing.assert_allclose(low.eigenvalues[:20].numpy(), exact.eigenvalues[:20].numpy(), rtol=1e-3)
    assert float(torch.linalg.norm(g - low.qh @ low.qh.T)) < 1e-2 * float(torch.linalg.norm(g))


def _coupled(beta, seed=7, spread=10.0):
    rng = np.random.default_rng(seed)
    y = torch.as_tensor(np.vstack([rng.normal(size=(40, 3)) * spread, rng.normal(size=(40, 3)) * spread]))
    ly = torch.as_tensor(np.repeat([0, 1], 40))
    model = OrganPointCloudConfig(labels=[1, 2], lambda_mm=10.0, beta_mm=beta,
                                  coherence=[[1.0, 1.0], [1.0, 1.0]]).label_model([1, 2])
    return y, ly, model, kernel.KernelParams.from_model(model, torch.float64, "cpu")


def test_non_positive_definite_kernel_is_refused():
    # Coupled organs with different bandwidths break the Schur-product guarantee of eq. 3.
    y, ly, model, p = _coupled({1: 1.0, 2: 50.0}, spread=2.0)
    assert not model.provably_positive_definite([0, 1])
    with pytest.raises(InputError, match=r"kernel G for labels \[1, 2\] is not positive definite"):
        kernel.lowrank_kernel(y, ly, model, p, None, jitter=1e-6, generator=torch.Generator(), budget_bytes=1e8,
                              notes=[])


def test_mildly_indefinite_kernel_gets_documented_jitter():
    y, ly, model, p = _coupled({1: 29.0, 2: 31.0})
    with pytest.raises(InputError, match="not positive definite"):
        kernel.lowrank_kernel(y, ly, model, p, None, jitter=0.0, generator=torch.Generator(), budget_bytes=1e8, notes=[])
    notes = []
    basis = kernel.lowrank_kernel(y, ly, model, p, None, jitter=0.1, generator=torch.Generator(), budget_bytes=1e8,
                                  notes=notes)
    assert basis.jitter_added == pytest.approx(0.1 * 10.0**2) and "jitter" in notes[0]
    assert float(basis.eigenvalues.min()) > 0

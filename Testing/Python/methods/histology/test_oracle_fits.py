"""The landmark model fits behind ``Testing/Benchmarks/oracle_histology.py`` recover known, non-identity models."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "Benchmarks"))
oracle = pytest.importorskip("oracle_histology")

A1 = np.array([[1.05, 0.12], [-0.08, 0.93], [14.0, -9.0]])  # [x y 1] @ A → moved (x, y)
A2 = np.array([[0.97, -0.10], [0.15, 1.08], [-6.0, 21.0]])


def _points(n=80, seed=0):
    return np.random.default_rng(seed).uniform(0, 400, size=(n, 2))


def test_robust_affine_ignores_outliers_least_squares_does_not():
    a = _points()
    b = oracle.apply_affine(A1, a)
    b[:12] += np.random.default_rng(1).normal(0, 40, size=(12, 2))  # 15 % gross outliers
    clean = np.arange(len(a)) >= 12
    for loss in ("huber", "l1"):
        p = oracle.fit_robust_affine(a, b, loss)
        assert np.abs(oracle.apply_affine(p, a[clean]) - b[clean]).max() < 0.05, loss
    ls = oracle.fit_affine(a, b)
    assert np.median(np.linalg.norm(oracle.apply_affine(ls, a[clean]) - b[clean], axis=1)) > 1.0


def test_projective_and_polynomial_recover_their_models():
    a = _points()
    h = np.array([[1.02, 0.05, 8.0], [-0.04, 0.98, -5.0], [2e-4, -1e-4, 1.0]])
    ah = np.c_[a, np.ones(len(a))] @ h.T
    b = ah[:, :2] / ah[:, 2:]
    assert np.abs(oracle.fit_projective(a, b)(a) - b).max() < 1e-6
    b2 = a + 1e-3 * (a - 200.0) ** 2
    assert np.abs(oracle.fit_polynomial(a, b2, 2)(a) - b2).max() < 1e-6
    assert np.abs(oracle.apply_affine(oracle.fit_affine(a, b2), a) - b2).max() > 5.0


def test_similarity_recovers_rotation_scale():
    a = _points()
    t = np.deg2rad(17.0)
    r = 1.1 * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    b = a @ r.T + [5.0, -3.0]
    assert np.abs(oracle.fit_similarity(a, b, scale=True)(a) - b).max() < 1e-6
    assert np.abs(oracle.fit_similarity(a, b, scale=False)(a) - b).max() > 1.0


def test_local_models_beat_global_affine_on_two_piece_motion():
    """Left and right halves moved by different affines: per-region and local affines (leave-one-out) are exact
    away from the boundary; a global affine is not."""
    a = _points(160)
    right = a[:, 0] > 200
    b = np.where(right[:, None], oracle.apply_affine(A2, a), oracle.apply_affine(A1, a))
    global_loo = oracle.loo(a, b, lambda p, q: (lambda P: lambda r: oracle.apply_affine(P, r))(oracle.fit_affine(p, q)))
    region = oracle.region_affine_loo(a, b, right.astype(int))
    assert np.median(global_loo) > 5.0
    assert region.max() < 1e-6
    far = np.abs(a[:, 0] - 200) > 80
    knn = oracle.knn_affine_loo(a, b, 8)
    assert np.median(knn[far]) < 1e-6
    assert np.median(oracle.mls_affine_loo(a, b, 30.0)[far]) < 0.1 * np.median(global_loo)


def test_loo_scores_held_out_point():
    """Leave-one-out never sees the point it predicts: a TPS without smoothing interpolates its training points
    exactly, yet its leave-one-out error on a noisy affine is about the noise, not zero."""
    a = _points()
    rng = np.random.default_rng(3)
    b = oracle.apply_affine(A1, a) + rng.normal(0, 2.0, size=a.shape)
    err = oracle.tps_loo(a, b, 0.0)
    assert np.median(err) > 1.0
    smooth = oracle.tps_loo(a, b, 1e5)
    assert np.median(smooth) < np.median(err)

"""Farthest-point subsets (``methods.organ_point_cloud.sampling``): even cover, per-label shares, seeding."""

import numpy as np
from scipy.spatial import cKDTree

from RegistrationSuiteLib.methods.organ_point_cloud.sampling import (farthest_point_order, spread_per_label,
                                                                       spread_subset)


def _sphere(n, seed, radius=40.0, centre=(0.0, 0.0, -1000.0)):
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return radius * v / np.linalg.norm(v, axis=1, keepdims=True) + np.asarray(centre)


def _gap(points):
    """Largest distance from a sphere point to the nearest kept point (how well the subset covers)."""
    return float(cKDTree(points).query(_sphere(20000, 99))[0].max())


def test_farthest_point_order_is_the_greedy_max_min_sequence():
    pts = _sphere(300, 0)
    order = farthest_point_order(pts, 40, start=7)
    assert order[0] == 7 and len(set(order.tolist())) == 40
    for i in range(1, 40):  # each pick is (one of) the farthest from those before it
        d = np.min(np.linalg.norm(pts[:, None] - pts[order[:i]][None], axis=2), axis=1)
        assert d[order[i]] >= d.max() - 1e-3
    assert farthest_point_order(pts, 1000).shape == (300,)


def test_spread_subset_covers_a_surface_more_evenly_than_a_random_subset():
    pts = _sphere(6000, 1)
    labels = np.zeros(6000, dtype=np.int64)
    spread = pts[spread_subset(pts, labels, 300, seed=0)]
    random = pts[np.random.default_rng(0).choice(6000, 300, replace=False)]
    assert _gap(spread) < 0.7 * _gap(random)
    # and the cover hardly depends on the seed (the random start only)
    gaps = [_gap(pts[spread_subset(pts, labels, 300, seed=s)]) for s in range(3)]
    assert max(gaps) - min(gaps) < 0.25 * np.mean(gaps)


def test_spread_subset_keeps_each_label_share_and_minimum_and_is_seeded():
    pts = np.vstack([_sphere(900, 2), _sphere(90, 3, 10.0), _sphere(10, 4, 5.0)])
    labels = np.repeat([1, 6, 7], [900, 90, 10])
    idx = spread_subset(pts, labels, 200, seed=5, minimum=4)
    counts = {lab: int((labels[idx] == lab).sum()) for lab in (1, 6, 7)}
    assert counts == {1: 180, 6: 18, 7: 4}
    assert np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, spread_subset(pts, labels, 200, seed=5, minimum=4))
    assert not np.array_equal(idx, spread_subset(pts, labels, 200, seed=6, minimum=4))
    assert np.array_equal(spread_subset(pts, labels, None, seed=0), np.arange(1000))


def test_spread_per_label_takes_the_same_number_from_every_label():
    pts = np.vstack([_sphere(500, 5), _sphere(200, 6, 10.0)])
    labels = np.repeat([2, 3], [500, 200])
    idx = spread_per_label(pts, labels, 120, seed=1)
    assert [int((labels[idx] == lab).sum()) for lab in (2, 3)] == [120, 120]

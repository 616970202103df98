"""Seeded synthetic organ shapes for the MO-BCPD tests (small, asymmetric, so correspondences are unique)."""

import numpy as np
import pytest

from RegistrationSuiteLib.geometry import rotation_from_quaternion
from RegistrationSuiteLib.io.points import LabeledPoints


def blob(rng, n, centre, radii):
    """``n`` points on a bumpy ellipsoid (no symmetry, so sliding along the surface is not free)."""
    u = rng.normal(size=(n, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    bumps = 1 + 0.25 * np.sin(3 * u[:, 0]) * np.cos(2 * u[:, 1]) + 0.15 * u[:, 2] ** 2
    return np.asarray(centre, float) + u * np.asarray(radii, float) * bumps[:, None]


def two_organs(n=250, seed=0, gap_x=70.0):
    """Two labelled blobs (labels 1 and 2) side by side along x."""
    rng = np.random.default_rng(seed)
    pts = np.vstack([blob(rng, n, [0, 0, 0], [30, 28, 32]), blob(rng, n, [gap_x, 0, 0], [24, 26, 30])])
    return LabeledPoints(pts, np.repeat([1, 2], n))


def shuffled(points: np.ndarray, labels: np.ndarray, seed=1):
    """The same points in another order (correspondences are unknown to the method)."""
    perm = np.random.default_rng(seed).permutation(len(points))
    return LabeledPoints(points[perm], labels[perm])


ROTATION = rotation_from_quaternion(np.array([0.97, 0.1, 0.15, 0.05]))


def similarity(p, scale=1.05, translation=(10.0, -5.0, 8.0)):
    return scale * p @ ROTATION.T + np.asarray(translation)


def smooth_warp(p):
    """A smooth deformation (≤ ~6 mm) followed by a mild similarity."""
    q = p + 5.0 * np.sin(p[:, [1, 2, 0]] / 25.0)
    return 1.03 * q @ ROTATION.T + np.array([5.0, 3.0, -4.0])


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small LAPACK calls crawl when two torch threads compete with other processes for two cores; the
    tests' sizes gain nothing from a second thread, so they run with one (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

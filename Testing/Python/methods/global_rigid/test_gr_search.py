"""Search building blocks: non-maximum suppression of candidates and the shift <-> anchor frames."""

import numpy as np
import torch

from RegistrationSuiteLib.methods.global_rigid.ngf import INVALID_SCORE
from RegistrationSuiteLib.methods.global_rigid.rotations import axis_angle_matrix
from RegistrationSuiteLib.methods.global_rigid.search import Candidate, LevelData, distinct_best


def _rot(deg, axis=(0.0, 0.0, 1.0)):
    return axis_angle_matrix(np.radians(deg) * np.asarray([axis], float))[0]


def test_distinct_best_suppresses_near_duplicates_only():
    a0 = np.zeros(3)
    cands = [
        Candidate(_rot(0), a0, 0.9, 0),
        Candidate(_rot(3), a0 + 1.0, 0.8, 0),  # 3° and 1.7 mm from the best: suppressed
        Candidate(_rot(3), a0 + 30.0, 0.7, 0),  # same rotation, far anchor: a distinct alignment
        Candidate(_rot(40), a0, 0.6, 0),  # far rotation: distinct
        Candidate(_rot(90), a0, INVALID_SCORE, 0),  # never kept
    ]
    kept = distinct_best(cands, 10, angle_deg=5.0, shift_mm=10.0)
    assert [c.score for c in kept] == [0.9, 0.7, 0.6]
    assert [c.score for c in distinct_best(cands, 2, 5.0, 10.0)] == [0.9, 0.7]
    assert distinct_best(cands[-1:], 3, 5.0, 10.0) == []


def test_level_anchor_and_shift_are_inverse_and_physical():
    axes = _rot(30, (1.0, 1.0, 0.0))[:, ::-1]  # columns: physical directions of array axes (z, y, x)
    level = LevelData(
        spacing=2.0, fixed=torch.zeros(1, 1, 10, 12, 14), fixed_mask=torch.ones(1, 1, 10, 12, 14),
        fixed_origin=np.array([5.0, -3.0, 7.0]), fixed_axes=axes, fixed_center=np.zeros(3),
        moving=torch.zeros(1, 2, 9, 9, 9), moving_origin=np.zeros(3), moving_axes=np.eye(3),
        moving_center=np.array([8.0, 8.0, 8.0]), box_shape=(9, 9, 9),
    )
    shifts = np.array([[0, 0, 0], [2, -3, 5]])
    anchors = level.anchor_from_shift(shifts)
    np.testing.assert_allclose(level.shift_from_anchor(anchors), shifts, atol=1e-12)
    # Shift 0 puts the box centre (4, 4, 4) on fixed voxel (4, 4, 4): 2 mm voxels along the fixed axes.
    np.testing.assert_allclose(anchors[0], level.fixed_origin + 2.0 * axes @ np.full(3, 4.0), atol=1e-12)
    np.testing.assert_allclose(level.moving_center_index(), [4.0, 4.0, 4.0])
    # Index rotation Q = A_M^T R A_F (here A_M = I).
    np.testing.assert_allclose(level.index_rotations(_rot(25)[None])[0], _rot(25) @ axes, atol=1e-12)

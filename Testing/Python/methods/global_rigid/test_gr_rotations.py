"""Rotation sampling (uniform, deterministic, perturbations) and batched rotation of volumes."""

import numpy as np
import pytest
import torch

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.geometry import uniform_random_rotations
from RegistrationSuiteLib.methods.global_rigid.rotations import (
    global_rotations,
    perturb_rotations,
    rotate_volumes,
    rotation_distance_deg,
)


def test_global_rotations_3d_are_proper_uniform_and_cover_so3():
    r = global_rotations(1000, 3, np.random.default_rng(0))
    assert r.shape == (1000, 3, 3)
    np.testing.assert_allclose(np.einsum("nji,njk->nik", r, r), np.broadcast_to(np.eye(3), r.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-9)
    assert np.abs(r.mean(axis=0)).max() < 0.03  # Haar measure: E[R] = 0
    probes = uniform_random_rotations(200, np.random.default_rng(1))
    nearest = rotation_distance_deg(probes[:, None], r[None]).min(axis=1)
    # With 1000 i.i.d. random rotations ~1 % of SO(3) is farther than 25° from every sample; the cover has none.
    assert nearest.max() < 25.0


def test_global_rotations_deterministic_per_seed_and_2d_stratified():
    a = global_rotations(50, 3, np.random.default_rng(7))
    assert np.array_equal(a, global_rotations(50, 3, np.random.default_rng(7)))
    assert not np.allclose(a, global_rotations(50, 3, np.random.default_rng(8)))
    r2 = global_rotations(36, 2, np.random.default_rng(0))
    angles = np.sort(np.degrees(np.arctan2(r2[:, 1, 0], r2[:, 0, 0])) % 360)
    np.testing.assert_allclose(np.diff(angles), 10.0, atol=1e-9)
    with pytest.raises(InputError, match="num_rotations"):
        global_rotations(0, 3, np.random.default_rng(0))


@pytest.mark.parametrize("dim", [2, 3])
def test_perturbations_keep_parents_and_stay_within_the_half_width(dim):
    rng = np.random.default_rng(2)
    parents = global_rotations(4, dim, rng)
    rot, parent = perturb_rotations(parents, 25, 12.0, rng)
    assert rot.shape == (100, dim, dim) and parent.shape == (100,)
    assert np.array_equal(rot[:4], parents) and np.array_equal(parent[:4], np.arange(4))
    dist = rotation_distance_deg(rot, parents[parent])
    assert dist.max() <= 12.0 + 1e-9 and dist[4:].mean() > 4.0
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-9)


def test_rotate_volumes_identity_and_quarter_turns_are_exact():
    torch.manual_seed(0)
    vol = torch.rand(1, 2, 7, 7, 7, dtype=torch.float64)
    eye = np.eye(3)[None]
    out = rotate_volumes(vol, eye, (7, 7, 7), (3.0, 3.0, 3.0))
    torch.testing.assert_close(out, vol)
    # Quarter turn in the (z, y) plane: output (z, y, x) takes input (3 - (y - 3), 3 + (z - 3), x).
    q = np.array([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    out = rotate_volumes(vol, np.concatenate([q, eye]), (7, 7, 7), (3.0, 3.0, 3.0))
    z, y, x = 1, 5, 2
    assert out.shape == (2, 2, 7, 7, 7)
    torch.testing.assert_close(out[0, :, z, y, x], vol[0, :, 3 - (y - 3), 3 + (z - 3), x])
    torch.testing.assert_close(out[1], vol[0])


def test_rotate_volumes_larger_output_pads_with_zeros_2d():
    vol = torch.ones(1, 1, 4, 4)
    out = rotate_volumes(vol, np.eye(2)[None], (8, 8), (1.5, 1.5))
    assert out.shape == (1, 1, 8, 8)
    assert out[0, 0, 2:6, 2:6].min() == 1 and out[0, 0, 0].max() == 0 and out.sum() == 16

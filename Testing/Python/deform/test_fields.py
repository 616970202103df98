"""Known-answer tests of the dense deformation toolkit (fields, warping, Jacobians), 2D and 3D."""

import numpy as np
import pytest
import torch

from RegistrationSuiteLib.deform import (
    compose_fields,
    field_to_physical,
    folding_fraction,
    gaussian_smooth,
    identity_grid,
    integrate_velocity,
    jacobian_determinant,
    normalized_to_voxel,
    resize_field,
    voxel_to_normalized,
    warp_image,
)


def voxel_coords(shape):
    """``(1, d, *S)`` voxel coordinates in channel order (x, y[, z])."""
    mesh = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    return torch.stack(mesh[::-1], 0).unsqueeze(0)


def smooth_field(shape, amplitude, sigma, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = gaussian_smooth(torch.randn(1, len(shape), *shape, generator=g, dtype=torch.float64), sigma)
    return u * (amplitude / u.abs().max())


@pytest.mark.parametrize("shape", [(9, 12), (7, 9, 11)])
def test_identity_grid_matches_voxel_units(shape):
    grid = identity_grid(shape, dtype=torch.float64).movedim(-1, 1)
    vox = normalized_to_voxel(grid + 1.0)  # [-1, 1] → [0, n - 1]
    np.testing.assert_allclose(vox.numpy(), voxel_coords(shape).numpy(), atol=1e-12)
    u = smooth_field(shape, 2.0, 2.0)
    np.testing.assert_allclose(normalized_to_voxel(voxel_to_normalized(u)).numpy(), u.numpy(), atol=1e-12)


@pytest.mark.parametrize("shape", [(10, 13), (8, 10, 12)])
def test_warp_by_integer_shift_reads_the_neighbour_voxel(shape):
    d = len(shape)
    image = torch.rand(1, 1, *shape, dtype=torch.float64)
    u = torch.zeros(1, d, *shape, dtype=torch.float64)
    u[:, 0] = 2.0  # +2 voxels along x (last tensor axis)
    if d == 3:
        u[:, 2] = -1.0  # -1 voxel along z (first spatial axis)
    out = warp_image(image, u)
    if d == 2:
        np.testing.assert_allclose(out[..., :, :-2].numpy(), image[..., :, 2:].numpy(), atol=1e-12)
    else:
        np.testing.assert_allclose(out[..., 1:, :, :-2].numpy(), image[..., :-1, :, 2:].numpy(), atol=1e-12)


@pytest.mark.parametrize("d", [2, 3])
def test_jacobian_of_known_affine(d):
    shape = (12, 14) if d == 2 else (10, 12, 14)
    a = np.array([[1.2, 0.1, 0.05], [-0.2, 0.9, 0.1], [0.05, 0.15, 1.1]])[:d, :d]
    x = voxel_coords(shape)
    u = torch.einsum("ij,nj...->ni...", torch.tensor(a - np.eye(d)), x) + 0.7
    det = jacobian_determinant(u)
    np.testing.assert_allclose(det.numpy(), np.linalg.det(a), rtol=1e-10)
    assert folding_fraction(u) == 0.0


def test_folding_fraction_counts_a_reflection_inside_the_mask():
    shape = (10, 12, 14)
    x = voxel_coords(shape)
    u = torch.zeros_like(x)
    u[:, 0] = -2.0 * x[:, 0] * (x[:, 0] < 7)  # x → -x on the left half: det = -1 there
    mask = torch.zeros(1, 1, *shape)
    mask[..., :4] = 1  # well inside the reflected half
    assert folding_fraction(u, mask) == 1.0
    frac = folding_fraction(u)
    assert 0.4 < frac < 0.6


@pytest.mark.parametrize("shape", [(40, 48), (24, 28, 26)])
def test_compose_equals_sequential_warping(shape):
    x = voxel_coords(shape)
    image = torch.sin(x[:, :1] / 2.5) * torch.cos(x[:, 1:2] / 3.0) + 0.5 * torch.sin(x[:, -1:] / 2.0)
    outer, inner = smooth_field(shape, 2.5, 4.0, seed=1), smooth_field(shape, 2.0, 4.0, seed=2)
    sequential = warp_image(warp_image(image, outer), inner)
    composed = warp_image(image, compose_fields(outer, inner))
    inside = (slice(None), slice(None)) + tuple(slice(4, -4) for _ in shape)
    err = (sequential - composed)[inside].abs().mean()
    change = (image - composed)[inside].abs().mean()
    assert err < 0.1 * change


@pytest.mark.parametrize("d", [2, 3])
def test_compose_of_affine_fields_is_the_matrix_product_in_order(d):
    shape = (30, 34) if d == 2 else (20, 22, 24)
    a1 = np.eye(d) + np.array([[0.05, 0.1, 0.0], [0.0, -0.05, 0.08], [0.02, 0.0, 0.03]])[:d, :d]
    a2 = np.eye(d) + np.array([[0.0, -0.08, 0.04], [0.1, 0.02, 0.0], [0.0, 0.06, -0.04]])[:d, :d]
    b1, b2 = np.array([0.5, -0.3, 0.2])[:d], np.array([-0.4, 0.6, 0.1])[:d]
    x = voxel_coords(shape)

    def affine_field(a, b):
        return torch.einsum("ij,nj...->ni...", torch.tensor(a - np.eye(d)), x) + torch.tensor(b).view(1, d, *[1] * d)

    composed = compose_fields(affine_field(a2, b2), affine_field(a1, b1))  # a1 first, then a2
    expected = affine_field(a2 @ a1, a2 @ b1 + b2)
    # compare where the inner mapping lands inside the grid (outside, the border is replicated)
    target = x + affine_field(a1, b1)
    sizes = torch.tensor(shape[::-1], dtype=torch.float64).view(1, d, *[1] * d)
    inside = ((target >= 0) & (target <= sizes - 1)).all(1, keepdim=True).expand_as(x)
    assert inside.float().mean() > 0.6
    np.testing.assert_allclose(composed[inside].numpy(), expected[inside].numpy(), atol=1e-9)
    wrong_order = affine_field(a1 @ a2, a1 @ b2 + b1)
    assert float((composed - wrong_order)[inside].abs().max()) > 0.1


@pytest.mark.parametrize("d", [2, 3])
def test_scaling_and_squaring_known_answers(d):
    shape = (20, 22) if d == 2 else (14, 16, 18)
    v = torch.zeros(1, d, *shape, dtype=torch.float64)
    v[:, 0] = 1.5
    np.testing.assert_allclose(integrate_velocity(v, 6).numpy(), v.numpy(), atol=1e-10)  # exp of a translation
    a = np.zeros((d, d))
    a[0, 1], a[1, 0] = 0.3, -0.1
    a[-1, -1] = 0.2
    x = voxel_coords(shape)
    centre = torch.tensor([(n - 1) / 2 for n in shape[::-1]], dtype=torch.float64).view(1, d, *([1] * d))
    lin = torch.einsum("ij,nj...->ni...", torch.tensor(a), x - centre)
    det = jacobian_determinant(integrate_velocity(lin, 8))
    inside = (slice(None), slice(None)) + tuple(slice(5, -5) for _ in shape)
    np.testing.assert_allclose(det[inside].numpy(), np.exp(np.trace(a)), rtol=2e-3)  # det(exp A) = e^tr A


@pytest.mark.parametrize("d", [2, 3])
def test_resize_field_keeps_physical_displacement(d):
    shape = (17, 21) if d == 2 else (9, 13, 17)
    a = np.diag([0.2, -0.1, 0.05][:d])
    u = torch.einsum("ij,nj...->ni...", torch.tensor(a), voxel_coords(shape)) + 1.0
    small = tuple((n - 1) // 2 + 1 for n in shape)  # corner-aligned half-resolution grid
    half = resize_field(u, small)
    np.testing.assert_allclose(half.numpy(), (u[(slice(None), slice(None)) + (slice(None, None, 2),) * d] / 2).numpy(),
                               atol=1e-10)
    np.testing.assert_allclose(resize_field(half, shape).numpy(), u.numpy(), atol=1e-10)


def test_field_to_physical_uses_spacing_and_direction():
    u = torch.zeros(1, 3, 2, 3, 4, dtype=torch.float64)
    u[:, 0], u[:, 2] = 1.0, 2.0
    direction = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=float)
    phys = field_to_physical(u, (0.5, 2.0, 3.0), direction)
    np.testing.assert_allclose(phys[0, :, 0, 0, 0].numpy(), direction @ np.array([0.5, 0.0, 6.0]))


def test_bad_field_shape_is_one_clear_error():
    with pytest.raises(ValueError, match="field: expected a tensor"):
        warp_image(torch.zeros(1, 1, 4, 4), torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize("depth", [64, 67])
def test_warp_split_into_slabs_for_threads_gives_the_same_numbers(depth):
    """With several torch threads a large 3D warp is sampled as slabs (batch items torch runs in parallel):
    output and both gradients equal the one-piece grid_sample, an odd number of planes included."""
    import torch.nn.functional as F

    from RegistrationSuiteLib.deform.fields import _cached_identity, voxel_to_normalized

    g = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, depth, 64, 70, generator=g, dtype=torch.float64).requires_grad_(True)
    u = (3 * torch.randn(1, 3, depth, 64, 70, generator=g, dtype=torch.float64)).requires_grad_(True)
    grid = _cached_identity(u.shape[2:], u.device, u.dtype) + voxel_to_normalized(u).movedim(1, -1)
    expected = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = warp_image(image, u)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(got, expected)
    w = torch.rand(expected.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((got * w).sum(), (image, u)), torch.autograd.grad((expected * w).sum(), (image, u))):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
        assert float(b.abs().max()) > 0

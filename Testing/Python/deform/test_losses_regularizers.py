"""Known answers of the similarities (NCC, local NCC, MIND-SSC, NGF) and regularisers, 2D and 3D."""

import numpy as np
import pytest
import torch

from RegistrationSuiteLib.deform import (
    bending_energy,
    diffusion_energy,
    gaussian_smooth,
    lncc_loss,
    make_similarity,
    mind_ssc,
    ncc_loss,
    ngf_loss,
)


def blobs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = gaussian_smooth(torch.rand(1, 1, *shape, generator=g, dtype=torch.float64), 2.0)
    return (x - x.min()) / (x.max() - x.min())


@pytest.mark.parametrize("shape", [(32, 36), (16, 18, 20)])
def test_ncc_and_lncc_ignore_affine_intensity_maps_but_not_shifts(shape):
    a = blobs(shape)
    b = 3.0 * a + 7.0
    shifted = torch.roll(a, 3, dims=-1)
    assert float(ncc_loss(a, b)) < 1e-4
    assert float(lncc_loss(a, b)) < 1e-3
    assert float(ncc_loss(a, shifted)) > 0.2
    assert float(lncc_loss(a, shifted)) > 0.3
    assert float(ncc_loss(a, 1.0 - a)) == pytest.approx(2.0, abs=1e-4)  # inverted contrast is the worst case


def test_weight_restricts_ncc_to_the_mask():
    a = blobs((30, 30))
    b = a.clone()
    b[..., 15:] = torch.rand(1, 1, 30, 15, dtype=torch.float64)  # unrelated right half
    w = torch.zeros(1, 1, 30, 30, dtype=torch.float64)
    w[..., :15] = 1
    assert float(ncc_loss(a, b, w)) < 1e-4
    assert float(ncc_loss(a, b)) > 0.2


@pytest.mark.parametrize("shape,channels", [((24, 26), 4), ((14, 16, 18), 12)])
def test_mind_is_contrast_invariant_and_shift_sensitive(shape, channels):
    a = blobs(shape)
    desc = mind_ssc(a)
    assert desc.shape == (1, channels, *shape)
    assert float(desc.max()) <= 1.0 + 1e-9 and float(desc.min()) > 0
    sim = make_similarity("mind")
    other_contrast = sim.loss(desc, mind_ssc(torch.sqrt(a) * 50))  # monotone, non-linear intensity map
    shifted = sim.loss(desc, mind_ssc(torch.roll(a, 3, dims=-1)))
    assert float(shifted) > 5 * float(other_contrast)


@pytest.mark.parametrize("shape", [(32, 36), (16, 18, 20)])
def test_ngf_accepts_inverted_contrast(shape):
    a = blobs(shape)
    same = float(ngf_loss(a, a))  # > 0: weak edges (|∇I| ~ ε) count less than 1
    assert float(ngf_loss(a, 1.0 - a)) == pytest.approx(same, abs=1e-6)
    assert float(ngf_loss(a, 5.0 * a)) == pytest.approx(same, abs=1e-6)  # ε follows each image's scale
    assert float(ngf_loss(a, torch.roll(a, 3, dims=-1))) > same + 0.1


def test_unknown_similarity_is_one_clear_error():
    with pytest.raises(ValueError, match="similarity: expected one of"):
        make_similarity("mi")


@pytest.mark.parametrize("d", [2, 3])
def test_regularisers_on_linear_and_quadratic_fields(d):
    shape = (12, 14) if d == 2 else (8, 10, 12)
    mesh = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    x = mesh[-1]  # the x coordinate (last tensor axis)
    u = torch.zeros(1, d, *shape, dtype=torch.float64)
    u[:, 0] = 0.3 * x  # ∂x u_x = 0.3 everywhere
    np.testing.assert_allclose(float(diffusion_energy(u)), 0.09, rtol=1e-10)
    assert float(bending_energy(u)) == pytest.approx(0.0, abs=1e-12)
    u[:, 0] = 0.5 * x * x  # ∂xx u_x = 1
    np.testing.assert_allclose(float(bending_energy(u)), 1.0, rtol=1e-10)


@pytest.mark.parametrize("weight", [None, "fixed", "differentiable", "broadcast"])
def test_mind_loss_value_and_written_out_gradient_match_autograd(weight):
    """mind_loss has its gradient written out (speed): value and gradients against the plain autograd
    expression, weights that carry a gradient (a warped moving mask) and batch broadcasting included."""
    from RegistrationSuiteLib.deform import mind_loss

    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 12, 5, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.rand(2, 12, 5, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    w = {None: None,
         "fixed": torch.rand(2, 1, 5, 6, 7, generator=g, dtype=torch.float64),
         "differentiable": torch.rand(2, 1, 5, 6, 7, generator=g, dtype=torch.float64).requires_grad_(True),
         "broadcast": torch.rand(1, 1, 5, 6, 7, generator=g, dtype=torch.float64).requires_grad_(True)}[weight]
    e = (a - b).pow(2).mean(1, keepdim=True)
    expected = e.mean() if w is None else (e * w.expand_as(e)).sum() / w.expand_as(e).sum()
    got = mind_loss(a, b, w)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    inputs = [t for t in (a, b, w) if t is not None and t.requires_grad]
    for x, y in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(expected, inputs)):
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-14)
        assert float(y.abs().max()) > 0
    assert torch.autograd.gradcheck(mind_loss, (a, b, w))


@pytest.mark.parametrize("shape,sigma", [((2, 3, 20, 31, 9), (1.0, 2.5, 0.0)), ((1, 2, 40, 7), (3.0, 0.7)),
                                         ((1, 1, 5, 600), (1.2, 1.2)), ((1, 3, 4, 4, 4), (2.0, 2.0, 2.0))])
def test_gaussian_smooth_equals_the_border_replicated_convolution(shape, sigma):
    """gaussian_smooth uses one matrix product per axis (axes up to 512 voxels) and the padded convolution
    beyond: both against a direct sum over the replicated-border neighbours, kernels wider than an axis
    included; and a constant stays constant."""
    import math

    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    expected = x
    for axis, s in enumerate(sigma):
        if s <= 0:
            continue
        r = max(1, int(math.ceil(3 * s)))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / s) ** 2)
        k = k / k.sum()
        n = shape[2 + axis]
        idx = (torch.arange(n)[:, None] + torch.arange(-r, r + 1)[None, :]).clamp(0, n - 1)
        moved = expected.movedim(2 + axis, -1)
        expected = (moved[..., idx] * k).sum(-1).movedim(-1, 2 + axis)
    got = gaussian_smooth(x, sigma)
    assert got.shape == x.shape
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(got, x, atol=1e-3)
    assert torch.allclose(gaussian_smooth(torch.full(shape, 2.5, dtype=torch.float64), sigma),
                          torch.full(shape, 2.5, dtype=torch.float64))

"""Instance optimisation recovers known smooth fields (2D and 3D), honours masks, reports and cancels."""

import pytest
import torch

from RegistrationSuiteLib.deform import (
    InstanceOptimisationConfig,
    folding_fraction,
    gaussian_smooth,
    optimise_field,
    warp_image,
)
from RegistrationSuiteLib.errors import RegistrationCancelled


def textured(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = gaussian_smooth(torch.rand(1, 1, *shape, generator=g), 1.5)
    return (x - x.min()) / (x.max() - x.min())


def smooth_field(shape, amplitude, wavelength, seed=1):
    """Sinusoidal field: channel c varies along two axes with random phases (mean |u| ~ amplitude / 2)."""
    g = torch.Generator().manual_seed(seed)
    d = len(shape)
    mesh = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    channels = []
    for c in range(d):
        phase = torch.rand(2, generator=g) * 6.28
        a, b = mesh[(c + 1) % d], mesh[(c + 2) % d] if d == 3 else mesh[c]
        channels.append(amplitude * torch.sin(6.28 * a / wavelength + phase[0]) * torch.cos(6.28 * b / wavelength + phase[1]))
    return torch.stack(channels[::-1], 0).unsqueeze(0)


def inner(t, margin=4):
    return t[(slice(None), slice(None)) + tuple(slice(margin, -margin) for _ in t.shape[2:])]


def mean_error(u, truth):
    return float(inner(u - truth).norm(dim=1).mean())


@pytest.mark.parametrize("shape,similarity", [
    ((64, 72), "ncc"), pytest.param((64, 72), "mind", marks=pytest.mark.slow),
    pytest.param((64, 72), "ngf", marks=pytest.mark.slow),
    pytest.param((24, 28, 26), "lncc", marks=pytest.mark.slow), pytest.param((24, 28, 26), "mind", marks=pytest.mark.slow),
])
def test_known_smooth_field_is_recovered(shape, similarity):
    moving = textured(shape)
    truth = smooth_field(shape, 3.0, 40.0)
    fixed = warp_image(moving, truth)  # fixed(x) = moving(x + truth(x)): truth maps fixed → moving
    config = InstanceOptimisationConfig(similarity=similarity, levels=(2, 1), steps=(60, 30), weight=0.1)
    result = optimise_field(fixed, 2.0 * moving + 1.0, config)  # an intensity change the similarities ignore
    identity_error = mean_error(torch.zeros_like(truth), truth)
    assert identity_error > 1.0
    assert mean_error(result.field, truth) < 0.35 * identity_error
    assert result.similarity_after > result.similarity_before
    assert folding_fraction(result.field) < 1e-3


@pytest.mark.slow
def test_diffeomorphic_variant_recovers_without_folding():
    shape = (64, 64)
    moving = textured(shape, seed=3)
    truth = smooth_field(shape, 3.0, 40.0, seed=4)
    fixed = warp_image(moving, truth)
    config = InstanceOptimisationConfig(similarity="ncc", levels=(2, 1), steps=(60, 30), weight=0.1,
                                        diffeomorphic=True)
    result = optimise_field(fixed, moving, config)
    assert result.velocity is not None
    assert mean_error(result.field, truth) < 0.35 * mean_error(torch.zeros_like(truth), truth)
    assert folding_fraction(result.field) < 1e-3  # discrete central differences may flag a border voxel


@pytest.mark.slow
def test_fixed_mask_is_honoured():
    """Only the left half counts: the field follows the true shift there and stays small on the far right,
    where the pair disagrees but the mask says to ignore it."""
    shape = (48, 96)
    moving = textured(shape, seed=5)
    truth = torch.zeros(1, 2, *shape)
    truth[:, 1] = 2.0  # 2 voxels along y everywhere ...
    fixed = warp_image(moving, truth)
    fixed[..., 60:] = textured((48, 36), seed=9)  # ... but the right part of fixed is unrelated
    mask = torch.zeros(1, 1, *shape)
    mask[..., :48] = 1
    config = InstanceOptimisationConfig(similarity="ncc", levels=(2, 1), steps=(60, 30), weight=0.1)
    masked = optimise_field(fixed, moving, config, fixed_mask=mask)
    unmasked = optimise_field(fixed, moving, config)
    left = masked.field[:, :, 6:-6, 6:40]
    assert float((left[:, 1] - 2.0).abs().mean()) < 0.5
    assert float(masked.field[:, :, :, 70:].abs().max()) < 0.5 * float(unmasked.field[:, :, :, 70:].abs().max())


def test_progress_is_monotone_and_cancel_raises():
    shape = (32, 32)
    moving = textured(shape)
    fixed = warp_image(moving, smooth_field(shape, 2.0, 30.0))
    seen = []
    optimise_field(fixed, moving, InstanceOptimisationConfig(levels=(2, 1), steps=(10, 10)),
                   progress=lambda f, m: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 3
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(RegistrationCancelled):
        optimise_field(fixed, moving, InstanceOptimisationConfig(levels=(2, 1), steps=(10, 10)), cancel=cancel)


def test_bad_config_and_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="similarity"):
        InstanceOptimisationConfig(similarity="mutual")
    with pytest.raises(ValueError, match="steps"):
        InstanceOptimisationConfig(levels=(2, 1), steps=(10, 10, 10))
    with pytest.raises(ValueError, match="fixed, moving"):
        optimise_field(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))


def test_written_out_adam_takes_torch_adams_steps():
    """The optimiser's Adam (written out to keep torch._dynamo out of the start-up) against torch.optim.Adam
    on the same gradients, with the step size changed between steps as the cosine schedule does."""
    from RegistrationSuiteLib.deform.optimize import _Adam

    g = torch.Generator().manual_seed(0)
    start = torch.randn(3, 4, 5, generator=g)
    target = torch.randn(3, 4, 5, generator=g)
    ours, ref = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
    opt_ours, opt_ref = _Adam(ours, 0.3), torch.optim.Adam([ref], lr=0.3)
    for step in range(12):
        lr = 0.3 * (1.0 - step / 20)
        opt_ours.lr = lr
        for group in opt_ref.param_groups:
            group["lr"] = lr
        for p, opt in ((ours, opt_ours), (ref, opt_ref)):
            p.grad = None
            ((p - target) ** 4).sum().backward()
            opt.step()
    assert not torch.equal(ours.detach(), start)
    assert torch.allclose(ours.detach(), ref.detach(), rtol=1e-6, atol=1e-7)

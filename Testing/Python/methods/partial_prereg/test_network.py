"""The patch position network: exact size of the paper's network, shapes, errors, a tiny convergence test."""

import numpy as np
import pytest
import torch

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.methods.partial_prereg.network import (
    PatchNetConfig,
    PatchPositionNet,
    count_parameters,
    l1_position_loss,
    predict_positions,
)


def test_parameter_count_matches_the_paper():
    assert count_parameters(PatchPositionNet()) == 3_846_531


def test_forward_shape_and_input_check():
    net = PatchPositionNet().eval()
    assert net(torch.zeros(2, 1, 16, 16, 16)).shape == (2, 3)
    with pytest.raises(InputError, match=r"expected shape \(N, 1, 16, 16, 16\), got \(2, 1, 8, 8, 8\)"):
        net(torch.zeros(2, 1, 8, 8, 8))


def test_config_round_trip_and_validation():
    cfg = PatchNetConfig()
    assert PatchNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="unknown keys"):
        PatchNetConfig.from_dict({"patch_size": 16, "depth": 3})
    with pytest.raises(InputError, match="multiple of 8"):
        PatchNetConfig(patch_size=12)


def test_l1_loss_sums_axes_and_averages_batch():
    p = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    t = torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 0.0]])
    assert torch.isclose(l1_position_loss(p, t), torch.tensor((0.6 + 1.0) / 2))


def test_tiny_convergence_overfits_a_few_patches():
    # Same layout, narrower layers: keeps the test under a second on a shared 2-core CPU.
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(-0.5, 0.5, (4, 1, 16, 16, 16)).astype(np.float32))
    y = torch.from_numpy(rng.uniform(0.2, 0.8, (4, 3)).astype(np.float32))
    net = PatchPositionNet(PatchNetConfig(channels=(8, 16, 16, 32, 32), hidden=32, dropout=0.0))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        opt.zero_grad()
        loss = l1_position_loss(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.1 * losses[0] and losses[-1] < 0.1
    pred = predict_positions(net, x[:, 0].numpy(), device="cpu", batch_size=3)
    assert pred.shape == (4, 3)


def test_mirror_average_is_exactly_left_right_equivariant():
    """Issue 13: the trained network drifted by about -6 mm in x on every volume (left-right ambiguous patches
    sit in the flat region of the L1 loss). With ``mirror_average`` the eval-mode prediction of a patch flipped
    along canvas x is the mirror (x -> 1 - x) of the original's, for any weights, so such a drift cancels; a
    plain network is not equivariant (the state the drift came from)."""
    torch.manual_seed(1)
    small = dict(channels=(4, 8, 8, 8, 8), hidden=16, dropout=0.1)
    plain = PatchPositionNet(PatchNetConfig(**small)).eval()
    with torch.no_grad():
        plain.head[-1].bias += torch.tensor([-0.04, 0.02, 0.01])  # a drift like the one observed
    mirrored = PatchPositionNet(PatchNetConfig(mirror_average=True, **small))
    mirrored.load_state_dict(plain.state_dict(), strict=True)  # same weights: mirror_average is no layer
    mirrored.eval()
    x = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, (6, 1, 16, 16, 16)).astype(np.float32))
    flip = torch.flip(x, dims=(4,))  # array axis 4 = canvas x
    with torch.no_grad():
        a, b = mirrored(x), mirrored(flip)
        pa, pb = plain(x), plain(flip)
    np.testing.assert_allclose((a[:, 0] + b[:, 0]).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(a[:, 1:].numpy(), b[:, 1:].numpy(), atol=1e-6)
    assert float((pa[:, 0] + pb[:, 0] - 1.0).abs().min()) > 1e-3  # the plain network is not equivariant
    # in train mode the network is the plain one (the mirror crops of training are its augmentation)
    mirrored.train()
    plain.train()
    torch.manual_seed(5)
    ta = mirrored(x)
    torch.manual_seed(5)
    assert torch.allclose(ta, plain(x))
    # configs: older files (no key) read as False; True survives the round trip; same architecture
    cfg = PatchNetConfig(mirror_average=True, **small)
    assert "mirror_average" not in PatchNetConfig(**small).to_dict()
    assert PatchNetConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.architecture() == PatchNetConfig(**small) and cfg != PatchNetConfig(**small)

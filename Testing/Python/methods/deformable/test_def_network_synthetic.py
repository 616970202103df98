"""RegNet synthetic fields (the paper's definition), the field U-Net (any size, strict model files, a tiny
convergence test) and scheme-A training batches."""

import numpy as np
import pytest
import torch

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.methods.deformable import REGNET_CLASSES, FieldUNet, load_deformable_model, synthetic_field
from RegistrationSuiteLib.methods.deformable.network import model_file_for, predict_field
from RegistrationSuiteLib.methods.deformable.synthetic import edge_map
from RegistrationSuiteLib.models.model_file import save_model

CARD = {"name": "t", "summary": "test", "training_data": [], "data_licence": "none", "command": "", "seed": 0,
        "metrics": {}}


def test_regnet_classes_are_the_papers():
    assert REGNET_CLASSES == ((35.0, 80, 8.0), (25.0, 100, 8.0), (20.0, 100, 8.0))


@pytest.mark.parametrize("sigma,points,theta", REGNET_CLASSES)
def test_synthetic_field_keeps_the_peak_and_is_smooth(sigma, points, theta):
    shape = (40, 44, 48)
    rng = np.random.default_rng(3)
    u = synthetic_field(shape, 2.0, sigma, points, theta, rng)
    assert u.shape == (3, *shape) and u.dtype == np.float32
    peaks = np.abs(u).reshape(3, -1).max(1)
    assert np.all(peaks <= theta + 1e-4) and np.all(peaks > 0.5 * theta)  # rescaled to the pre-smoothing peak
    # smooth: neighbouring voxels differ by a small fraction of θ (σ is 10-17 voxels here)
    assert np.abs(np.diff(u, axis=-1)).max() < 0.25 * theta
    again = synthetic_field(shape, 2.0, sigma, points, theta, np.random.default_rng(3))
    np.testing.assert_array_equal(u, again)  # the generator is the only randomness


def test_synthetic_points_fall_inside_the_mask():
    shape = (30, 30, 60)
    mask = np.zeros(shape, bool)
    mask[:, :, :20] = True
    u = synthetic_field(shape, 2.0, 6.0, 50, 8.0, np.random.default_rng(0), mask=mask)
    mag = np.linalg.norm(u, axis=0)
    assert mag[:, :, :20].mean() > 5 * mag[:, :, 45:].mean()


def test_edge_map_marks_strong_gradients():
    a = np.zeros((20, 20, 20), np.float32)
    a[:, :, 10:] = 1.0
    e = edge_map(a, quantile=0.9)
    assert e[:, :, 9:11].all() and not e[:, :, :5].any()


@pytest.mark.parametrize("shape", [(13, 22, 17), (20, 16, 24)])
def test_unet_accepts_any_size(shape):
    net = FieldUNet(3, (4, 8, 8), (8, 8, 4))
    out = net(torch.rand(1, 2, *shape))
    assert out.shape == (1, 3, *shape)
    assert float(out.detach().abs().max()) < 1e-2  # starts near the identity


def test_unet_2d_and_diffeomorphic_variant():
    net = FieldUNet(2, (4, 8), (8, 4), diffeomorphic=True)
    assert net(torch.rand(2, 2, 15, 19)).shape == (2, 2, 15, 19)


@pytest.mark.slow
def test_tiny_convergence_on_a_fixed_shift():
    """The network learns a constant 1.5-voxel shift along x from a handful of samples."""
    torch.manual_seed(0)
    net = FieldUNet(3, (4, 8), (8, 4))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    from RegistrationSuiteLib.deform import gaussian_smooth, warp_image

    moving = gaussian_smooth(torch.rand(2, 1, 12, 12, 12), 1.0)
    u = torch.zeros(2, 3, 12, 12, 12)
    u[:, 0] = 1.5
    fixed = warp_image(moving, u)
    x = torch.cat([fixed, moving], 1)
    losses = []
    for _ in range(100):
        opt.zero_grad()
        loss = (net(x) - u).abs().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0]


def test_model_file_roundtrip_and_strict_checks(tmp_path):
    net = FieldUNet(3, (4, 8), (8, 4))
    path = save_model(model_file_for(net, spacing_mm=4.0, modality="mr", card=CARD), tmp_path / "m.pt")
    model = load_deformable_model(path)
    assert model.spacing_mm == 4.0 and model.modality == "mr"
    x = torch.rand(1, 1, 12, 14, 16)
    u = predict_field(model, x, x, spacing_mm=2.0)  # network at 4 mm, field back on the 2 mm grid
    assert u.shape == (1, 3, 12, 14, 16)
    flat = save_model(model_file_for(FieldUNet(2, (4, 8), (8, 4)), spacing_mm=2.0, modality="mr", card=CARD),
                      tmp_path / "m2d.pt")
    with pytest.raises(InputError, match="2D field network"):
        load_deformable_model(flat)
    with pytest.raises(InputError):
        load_deformable_model(tmp_path / "missing.pt")

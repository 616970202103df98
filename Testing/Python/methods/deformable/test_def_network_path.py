"""The network path of register_deformable: the cascade (``network_passes``) and the optimisation schedule
after a network start (``network_skip_levels``)."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RegistrationSuiteLib.deform import gaussian_smooth, warp_image
from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.methods.deformable import DeformableConfig, FieldUNet, register_deformable
from RegistrationSuiteLib.methods.deformable.network import DeformableModel, predict_field


def _correlation_only(radius=1):
    """An untrained FieldUNet with a MIND-SSC correlation layer and a zero U-Net head: it returns the
    smoothed soft-argmin of the correlation, whose reach is ``radius`` voxels per pass."""
    torch.manual_seed(0)
    net = FieldUNet(3, (4, 8), (8, 4), correlation_radius=radius, correlation_sigma=1.0)
    with torch.no_grad():
        net.head.weight.zero_()
        net.log_beta.fill_(4.0)  # sharp soft-argmin
    return DeformableModel(net.eval(), 2.0, "mr", {}, "correlation only")


def _shifted_pair(shift_x):
    torch.manual_seed(1)
    moving = gaussian_smooth(torch.rand(1, 1, 24, 24, 24), 1.5)
    moving = (moving - moving.min()) / (moving.max() - moving.min())
    u = torch.zeros(1, 3, 24, 24, 24)
    u[:, 0] = shift_x
    return warp_image(moving, u), moving  # fixed(x) = moving(x + shift)


def test_cascade_reaches_beyond_one_pass_and_composes_in_the_right_direction():
    """A 2.4-voxel shift is beyond one pass of a radius-1 correlation (at most 1 voxel); the second and third
    passes see the moving image warped by the field so far and add the rest. A composition in the wrong
    direction (or no warping between passes) would not get closer than the first pass."""
    model = _correlation_only()
    fixed, moving = _shifted_pair(2.4)
    inner = (slice(None), slice(None), slice(6, 18), slice(6, 18), slice(6, 18))
    errors = []
    for passes in (1, 2, 3):
        u = predict_field(model, fixed, moving, passes=passes)[inner]
        errors.append(float((u[:, 0] - 2.4).abs().mean()))
        assert float(u[:, 1:].abs().mean()) < 0.3  # little motion along y, z (random texture)
    assert errors[0] > 1.3  # one pass cannot reach
    assert errors[1] < errors[0] - 0.6 and errors[2] < 0.5, errors
    with pytest.raises(InputError, match="passes"):
        predict_field(model, fixed, moving, passes=0)


def test_network_start_skips_the_coarse_levels_only_with_a_network():
    cfg = DeformableConfig(io_steps=120, network_skip_levels=1)
    assert DeformableConfig().network_skip_levels == 1 and DeformableConfig().network_passes == 1
    assert cfg.steps_per_level() == [60, 42, 18]  # optimisation alone: the optimiser's own schedule
    assert cfg.steps_per_level(network=True) == [0, 84, 36]  # 0.35 : 0.15 of all 120 steps
    assert DeformableConfig(io_steps=7, network_skip_levels=2).steps_per_level(network=True) == [0, 0, 7]
    assert DeformableConfig(io_steps=120).steps_per_level(network=True) == [0, 84, 36]  # default: skip 1
    assert DeformableConfig(io_steps=120, network_skip_levels=0).steps_per_level(network=True) == [60, 42, 18]
    single = DeformableConfig(io_steps=5, levels=(1,), level_fractions=(1.0,), network_skip_levels=3)
    assert single.steps_per_level(network=True) == [5]  # the finest level is never skipped
    zero_rest = DeformableConfig(io_steps=10, level_fractions=(1.0, 0.0, 0.0), network_skip_levels=1)
    assert zero_rest.steps_per_level(network=True) == [0, 5, 5]


@pytest.mark.parametrize("field,value", [("network_passes", 0), ("network_skip_levels", -1),
                                         ("network_skip_levels", 1.5), ("network_passes", 1.5)])
def test_network_settings_are_validated(field, value):
    with pytest.raises(InputError, match=field):
        DeformableConfig(**{field: value})


def _image(arr, spacing=2.0):
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing((spacing,) * 3)
    img.SetOrigin((-10.0, 4.0, 7.0))
    return img


def test_register_uses_the_cascade_and_the_schedule_with_a_network():
    """Through register_deformable: a 2.4-voxel (4.8 mm) shift along x, network only. Two passes recover it
    much better than one; with optimisation the coarse level gets no steps after the network start."""
    fixed_t, moving_t = _shifted_pair(2.4)
    fixed, moving = _image(fixed_t[0, 0].numpy()), _image(moving_t[0, 0].numpy())
    model = _correlation_only()
    base = dict(spacing_mm=2.0, levels=(2, 1), level_fractions=(0.5, 0.5), device="cpu", seed=0)
    errors = {}
    for passes in (1, 2):
        res = register_deformable(fixed, moving, DeformableConfig(io_steps=0, network_passes=passes, **base),
                                  model=model)
        d = sitk.GetArrayFromImage(sitk.TransformToDisplacementField(
            res.transform, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(),
            fixed.GetDirection()))
        errors[passes] = float(np.abs(d[6:18, 6:18, 6:18, 0] - 4.8).mean())
        assert res.diagnostics["network_passes"] == passes
    assert errors[2] < errors[1] - 1.0, errors
    res = register_deformable(fixed, moving, DeformableConfig(io_steps=10, network_skip_levels=1, **base), model=model)
    assert res.diagnostics["io"]["steps_per_level"] == [0, 10]
    res = register_deformable(fixed, moving, DeformableConfig(io_steps=10, network_skip_levels=1, **base))
    assert res.diagnostics["io"]["steps_per_level"] == [5, 5] and res.diagnostics["network"] is None

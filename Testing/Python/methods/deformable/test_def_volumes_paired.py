"""Whole-volume samples (scheme A as shipped) and scheme B (Cao et al.): samples obey the direction
(fixed(x) = moving(x + u(x))), mirroring keeps that, the paired loss has its known answer, the half-resolution
U-Net keeps any size, and short volume/paired runs write models that load and resume from checkpoints."""

import csv

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RegistrationSuiteLib.deform import bending_energy, ncc_loss, warp_image
from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.methods.deformable import load_deformable_model
from RegistrationSuiteLib.methods.deformable.network import FieldUNet, model_file_for
from RegistrationSuiteLib.methods.deformable.paired import PairedSampler, load_paired_volume, paired_loss
from RegistrationSuiteLib.methods.deformable.train import DeformableTrainConfig, train_deformable_model
from RegistrationSuiteLib.methods.deformable.volumes import (
    VolumeSampler,
    VolumeSamplerConfig,
    load_volume,
    mirror,
    random_intensity_map,
    weighted_l1,
)
from RegistrationSuiteLib.models.model_file import CARD_KEYS, save_model
from RegistrationSuiteLib.models.training import TrainingConfig
from RegistrationSuiteLib.sample_data import sample_path

CARD = {k: None for k in CARD_KEYS} | {"name": "m"}
BOX = (33, 41, 37)  # fine (2 mm) crop → 17 x 21 x 19 at 4 mm


def _corr(a, b):
    return float(torch.corrcoef(torch.stack([a.ravel(), b.ravel()]))[0, 1])


def _volume():
    return load_volume(sample_path("T1"), 2.0)


def test_volume_sample_encodes_fixed_to_moving_and_mirror_keeps_it():
    cfg = VolumeSamplerConfig(box=BOX, contrast=0.0, deformed_moving=0.0, noise_std=0.0, skull_strip=0.0)
    sampler = VolumeSampler([_volume()], cfg)
    x, t = sampler.sample(np.random.default_rng(3))
    assert x.shape == (2, 17, 21, 19) and t.shape == (4, 17, 21, 19)
    u, w = t[:3], t[3]
    assert float(u.abs().max()) > 0.5
    assert np.allclose(np.unique(w.numpy()), [0.05, 1.0])  # brain weight 1, outside 0.05
    fixed, moving = x[0:1][None], x[1:2][None]
    good, bad = _corr(warp_image(moving, u[None]), fixed), _corr(warp_image(moving, -u[None]), fixed)
    assert good > 0.97 and good > _corr(moving, fixed) + 0.01 and good > bad
    for flips in ([True, False, False], [False, True, True]):
        xm, tm = mirror(x, t, np.array(flips))
        assert _corr(warp_image(xm[1:2][None], tm[:3][None]), xm[0:1][None]) == pytest.approx(good, abs=2e-3)
        wrong = tm[:3].clone()
        wrong[2 - flips.index(True)] *= -1  # forgetting the sign flip breaks the correspondence
        assert _corr(warp_image(xm[1:2][None], wrong[None]), xm[0:1][None]) < good - 0.005


def test_random_intensity_map_keeps_background_and_range():
    x = torch.linspace(0, 1, 101)
    y = random_intensity_map(x, np.random.default_rng(0))
    assert float(y[0]) == 0.0 and float(y.min()) >= 0.0 and float(y.max()) == pytest.approx(1.0)
    assert not torch.allclose(y, x)


def test_weighted_l1_ignores_down_weighted_voxels():
    target = torch.zeros(1, 4, 4, 4, 4)
    target[:, 3] = 1.0
    target[:, 3, 0] = 0.0
    pred = torch.zeros(1, 3, 4, 4, 4)
    pred[:, :, 0] = 5.0  # wrong only where the weight is 0
    assert float(weighted_l1(pred, target)) == 0.0
    pred[:, 0, 1] = 1.0
    assert float(weighted_l1(pred, target)) == pytest.approx(16 / (48 * 3))


def _smooth_field(shape, amp=1.5):
    z, y, x = torch.meshgrid(*[torch.linspace(0, 1, n) for n in shape], indexing="ij")
    bump = torch.sin(np.pi * z) * torch.sin(np.pi * y) * torch.sin(np.pi * x)  # zero at the borders
    return torch.stack([amp * bump, -0.7 * amp * bump, 0.4 * amp * bump])[None]


def test_paired_loss_known_answer_cross_contrast():
    rng = np.random.default_rng(0)
    from scipy.ndimage import gaussian_filter

    shape = (24, 28, 26)
    a = torch.from_numpy(gaussian_filter(rng.random(shape), 1.5).astype(np.float32))[None, None]
    a = (a - a.min()) / (a.max() - a.min())
    b = 1.0 - a  # contrast B: inverted, so A-vs-B NCC is useless
    u = _smooth_field(shape, amp=2.5)
    fixed, fixed_partner = warp_image(a, u), warp_image(b, u)  # I_F (A) and its partner (B)
    moving, moving_partner = b, a  # I_M (B) and its partner (A)
    at_truth, parts = paired_loss(u, fixed, moving, fixed_partner, moving_partner, radius=2)
    expected_reg = 0.5 * float(bending_energy(u)) + 0.01 * float(u.pow(2).sum(1).mean())
    assert parts["ncc_a"] < 1e-3 and parts["ncc_b"] < 1e-3
    assert float(at_truth) == pytest.approx(expected_reg, abs=1e-3)
    at_zero, parts0 = paired_loss(torch.zeros_like(u), fixed, moving, fixed_partner, moving_partner, radius=2)
    assert parts0["bending"] == 0.0 and parts0["l2"] == 0.0
    assert float(at_zero) > float(at_truth) + 0.1
    # a naive cross-contrast NCC at the true field is bad (anti-correlated): the intra-contrast terms matter
    assert float(ncc_loss(fixed, warp_image(moving, u))) > 1.5
    # global NCC variant too, and the weights are the paper's
    g, gp = paired_loss(u, fixed, moving, fixed_partner, moving_partner, radius=0)
    assert gp["ncc_a"] < 1e-4 and float(g) == pytest.approx(expected_reg, abs=1e-3)


def test_paired_sampler_partners_are_aligned(tmp_path):
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_path("T1")), sitk.sitkFloat32))
    ref = sitk.ReadImage(str(sample_path("T1")))
    maps = []
    for k, (lo, hi) in enumerate(((0.2, 0.55), (0.55, 2.0))):  # crude two-class "tissue maps"
        norm = arr / np.percentile(arr, 99.5)
        img = sitk.GetImageFromArray(((norm > lo) & (norm <= hi)).astype(np.float32))
        img.CopyInformation(ref)
        path = tmp_path / f"c{k}.nii.gz"
        sitk.WriteImage(img, str(path))
        maps.append(path)
    vol = load_paired_volume(sample_path("T1"), 2.0, tissue_maps=maps)
    assert vol.tissue.shape[0] == 4  # background, two maps, CSF
    cfg = VolumeSamplerConfig(box=BOX, noise_std=0.0, deformed_moving=0.0, skull_strip=0.0)
    x, t = PairedSampler([vol], cfg).sample(np.random.default_rng(5))
    assert x.shape == (2, 17, 21, 19) and t.shape == (8, 17, 21, 19)
    assert torch.equal(x, t[:2])
    u = t[5:8][None]
    f, m, fp, mp = (t[i:i + 1][None] for i in range(4))
    assert _corr(warp_image(mp, u), f) > 0.95 and _corr(warp_image(m, u), fp) > 0.95
    assert _corr(warp_image(mp, u), f) > _corr(mp, f)


def test_half_resolution_unet_any_size_and_config_checks(tmp_path):
    net = FieldUNet(3, (4, 8, 8), (8, 8), output_stride=2)
    for shape in ((9, 14, 11), (16, 16, 16)):
        assert net(torch.rand(1, 2, *shape)).shape == (1, 3, *shape)
    with pytest.raises(InputError, match="decoder"):
        FieldUNet(3, (4, 8, 8), (8, 8, 4), output_stride=2)
    path = save_model(model_file_for(net, spacing_mm=4.0, modality="mr", card=CARD), tmp_path / "m.pt")
    model = load_deformable_model(path)
    assert model.network.output_stride == 2
    with pytest.raises(InputError, match="3D field network"):
        load_deformable_model(path, dim=2)


def _list(tmp_path, tissue=None):
    img = tmp_path / "t1.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(sample_path("T1"))), str(img))
    lst = tmp_path / "list.csv"
    with open(lst, "w", newline="") as f:
        rows = [["image", "split", "licence", "tissue"], ["t1.nii.gz", "train", "MIT", tissue or ""]]
        csv.writer(f).writerows(rows)
    return lst


def _cfg(epochs):
    optim = TrainingConfig(epochs=epochs, steps_per_epoch=2, batch_size=2, device="cpu")
    return DeformableTrainConfig(optim=optim, spacing_mm=4.0, sampling="volume", fine_spacing_mm=2.0, box=BOX,
                                 pool=3, encoder=(4, 8), decoder=(8,), output_stride=2)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["synthetic", "paired"])
def test_short_volume_runs_write_models_and_resume(tmp_path, scheme):
    lst = _list(tmp_path)
    ckpt = tmp_path / "m.ckpt"
    card = train_deformable_model(lst, tmp_path / "m.pt", _cfg(1), checkpoint=ckpt, scheme=scheme)
    assert card["scheme"] == scheme and card["metrics"]["epochs"] == 1 and ckpt.exists()
    model = load_deformable_model(tmp_path / "m.pt")
    assert model.spacing_mm == 4.0 and model.network.output_stride == 2
    first = torch.load(str(ckpt), weights_only=True)["model"]
    card2 = train_deformable_model(lst, tmp_path / "m.pt", _cfg(2), checkpoint=ckpt, scheme=scheme)
    assert card2["metrics"]["epochs"] == 2 and len(card2["metrics"]["history"]) == 2
    assert card2["metrics"]["history"][0] == card["metrics"]["history"][0]  # epoch 1 came from the checkpoint
    second = torch.load(str(ckpt), weights_only=True)["model"]
    assert any(not torch.equal(first[k], second[k]) for k in first)
    # other settings with the same checkpoint are refused, not mixed
    other = _cfg(3)
    other.contrast = 0.9
    with pytest.raises(InputError, match="other settings"):
        train_deformable_model(lst, tmp_path / "m.pt", other, checkpoint=ckpt, scheme=scheme)


def test_init_model_must_match_the_architecture(tmp_path):
    lst = _list(tmp_path)
    other = save_model(model_file_for(FieldUNet(3, (4, 8, 8), (8, 8), output_stride=2), spacing_mm=4.0,
                                      modality="mr", card=CARD), tmp_path / "o.pt")
    with pytest.raises(InputError, match="another architecture"):
        train_deformable_model(lst, tmp_path / "m.pt", _cfg(1), scheme="paired", init_model=other)
    with pytest.raises(InputError, match="volume sampling"):
        train_deformable_model(lst, tmp_path / "m.pt", DeformableTrainConfig(), scheme="paired")


@pytest.mark.parametrize("stride", [1, 2])
def test_correlation_layer_finds_a_known_shift_in_itk_channel_order(stride):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(2)
    big = torch.from_numpy(gaussian_filter(rng.random((40, 44, 48)), 1.5).astype(np.float32))
    shift = (0, 2, -2)  # tensor order (z, y, x): u = (x, y, z) = (-2, 2, 0) voxels
    fixed = big[8:32, 8:36, 8:40]
    moving = big[8 - shift[0]:32 - shift[0], 8 - shift[1]:36 - shift[1], 8 - shift[2]:40 - shift[2]]
    # fixed(p) = big(p + 8) = moving(p + shift): the true fixed → moving field is +shift
    moving = 1.0 - moving  # inverted contrast: MIND-SSC features do not care
    net = FieldUNet(3, (4, 8, 8), (8, 8), output_stride=2, correlation_radius=2 if stride == 1 else 1,
                    correlation_stride=stride, correlation_sigma=1.0).eval()
    with torch.no_grad():
        base, conf = net.correlation(torch.stack([fixed, moving])[None])
        full = net(torch.stack([fixed, moving])[None])
    inner = base[0, :, 6:-6, 6:-6, 6:-6].mean((1, 2, 3))
    assert inner.tolist() == pytest.approx([-2.0, 2.0, 0.0], abs=0.5)
    assert conf.shape == (1, 1, 24, 28, 32) and float(conf.mean()) > 1 / 27
    assert torch.allclose(full, base, atol=1e-2)  # untrained residual head starts near zero

"""Multi-magnification patch networks: patch sets, shapes, whole-slide aggregation, composition, the loss
learning a known shift, model files refused when they do not match, and ``train-histology``'s bad inputs."""

import numpy as np
import pytest
import torch

from RegistrationSuiteLib.cli.main import main
from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.methods.histology.networks import (
    MODEL_KIND, NETWORK_NAME, MultiMagNet, NetworkConfig, affine_displacement, aggregate, build_networks, compose,
    curvature_energy, load_histology_model, patch_sets, predict_field, registration_loss, tile_centres, window)
from RegistrationSuiteLib.models.model_file import ModelFile, save_model


def _ramp(h=80, w=100):
    """Image whose value is ``x + 1000 y`` (pixel x, y): every sample tells where it was taken."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return (xs + 1000.0 * ys)[None, None]


def test_patch_sets_target_is_centre_crop_and_context_twice_the_field_of_view():
    image = _ramp()
    centres = torch.tensor([[50.5, 40.5], [30.0, 35.0]])
    target, context = patch_sets(image, centres, 16, 0.5)
    assert target.shape == context.shape == (2, 1, 16, 16)
    k = torch.arange(16, dtype=torch.float32) - 7.5
    for n in range(2):
        cx, cy = centres[n]
        expected_t = (cx + k)[None, :] + 1000.0 * (cy + k)[:, None]
        torch.testing.assert_close(target[n, 0], expected_t, atol=1e-2, rtol=0)
        # context pixel (i, j): mean of the 2 × 2 block centred at centre + 2 (i, j − 7.5) (exact for a ramp)
        expected_c = (cx + 2 * k)[None, :] + 1000.0 * (cy + 2 * k)[:, None]
        torch.testing.assert_close(context[n, 0], expected_c, atol=1e-2, rtol=0)


def test_patch_sets_zero_outside_the_image():
    target, context = patch_sets(torch.ones(1, 1, 40, 40), torch.tensor([[2.5, 20.5]]), 16, 0.5)
    assert target[0, 0, :, 0].abs().max() == 0  # x = 2.5 − 7.5 = −5: outside
    assert target[0, 0, :, 10].min() == 1
    assert context[0, 0, :, 0].abs().max() == 0


@pytest.mark.parametrize("head", ["affine", "nonrigid"])
@pytest.mark.parametrize("multi", [True, False])
def test_network_shapes_and_identity_start(head, multi):
    cfg = NetworkConfig(patch=32, width=4, context=multi, grid_size=64)
    net = MultiMagNet(head, cfg)
    x = torch.rand(3, 2, 32, 32)
    v = net(x, torch.rand(3, 2, 32, 32) if multi else None)
    assert v.shape == (3, 2, 32, 32)
    assert v.abs().max() == 0  # zero heads: identity before training
    if head == "affine":
        assert net.last_params.shape == (3, 6)
    assert hasattr(net, "context") == multi


def test_multi_magnification_network_needs_context():
    net = MultiMagNet("nonrigid", NetworkConfig(patch=16, width=4, grid_size=64))
    with pytest.raises(InputError, match="context patches are required"):
        net(torch.rand(1, 2, 16, 16))


def test_affine_displacement_known_answer():
    params = torch.tensor([[1.0, -0.5, 0.2, 0.0, 0.5, -1.0]])
    v = affine_displacement(params, 16)
    d = torch.tensor([[0.1, -0.05], [0.02, 0.0]])
    t = torch.tensor([2.0, -4.0])  # params[4:] * 16 / 4
    i, j = 3, 12  # pixel x = 3, y = 12; centre 7.5
    expected = d @ torch.tensor([3 - 7.5, 12 - 7.5]) + t
    torch.testing.assert_close(v[0, :, j, i], expected)


@pytest.mark.parametrize("shape", [(100, 77), (64, 64), (50, 130)])
def test_window_tiling_is_a_partition_of_unity(shape):
    centres = tile_centres(shape, 32)
    value = torch.tensor([1.5, -2.0])
    field, weight = aggregate(value[None, :, None, None].expand(len(centres), 2, 32, 32), centres, shape)
    torch.testing.assert_close(weight, torch.ones(shape), atol=1e-5, rtol=0)
    torch.testing.assert_close(field, value[:, None, None].expand(2, *shape), atol=1e-5, rtol=0)
    assert window(32).min() > 0 and window(32).max() <= 1


def test_aggregation_of_local_affines_reproduces_a_global_affine():
    """Every patch predicts the same global affine, expressed about its own centre: the blended field equals
    the global affine field everywhere (a convex combination of identical values)."""
    shape, p = (70, 90), 16
    d = torch.tensor([[0.03, -0.02], [0.01, 0.04]])
    t = torch.tensor([1.5, -0.7])
    c0 = torch.tensor([40.0, 30.0])
    centres = tile_centres(shape, p)
    r = torch.arange(p, dtype=torch.float32) - (p - 1) / 2
    gy, gx = torch.meshgrid(r, r, indexing="ij")
    local = torch.stack([gx, gy]).reshape(2, -1)
    patches = torch.stack([(d @ (local + (c - c0)[:, None]) + t[:, None]).reshape(2, p, p) for c in centres])
    field, _ = aggregate(patches, centres, shape)
    ys, xs = torch.meshgrid(torch.arange(shape[0], dtype=torch.float32), torch.arange(shape[1], dtype=torch.float32),
                            indexing="ij")
    pts = torch.stack([xs - c0[0], ys - c0[1]]).reshape(2, -1)
    expected = (d @ pts + t[:, None]).reshape(2, *shape)
    torch.testing.assert_close(field, expected, atol=1e-4, rtol=0)


def test_compose_known_answer():
    """``compose(u, v)(x) = v(x) + u(x + v(x))``: with ``u`` linear and ``v`` constant, exact in the interior."""
    h, w = 40, 50
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    u = torch.stack([0.05 * xs, -0.02 * ys])
    v = torch.stack([torch.full((h, w), 2.0), torch.full((h, w), -1.0)])
    out = compose(u, v)
    expected = torch.stack([2.0 + 0.05 * (xs + 2.0), -1.0 - 0.02 * (ys - 1.0)])
    torch.testing.assert_close(out[:, 2:-3, 2:-3], expected[:, 2:-3, 2:-3], atol=1e-4, rtol=0)


def test_curvature_energy_zero_for_affine_positive_for_bumps():
    ys, xs = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    affine = torch.stack([0.1 * xs + 0.2 * ys + 1, -0.3 * xs])[None]
    assert float(curvature_energy(affine)) < 1e-8
    bump = torch.stack([torch.exp(-((xs - 10) ** 2 + (ys - 10) ** 2) / 8.0), torch.zeros_like(xs)])[None]
    assert float(curvature_energy(bump)) > 1e-3


def _blobs(size=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)


@pytest.mark.parametrize("multi", [True, False])
def test_affine_network_learns_a_known_shift_with_the_right_sign(multi):
    """Tiny overfit: fixed(x) = moving(x + s) with s = (2, −1.5) px; the unsupervised NCC loss must fall and
    the predicted displacement must approach +s (fixed → moving: moving(x + v(x)) ≈ fixed(x))."""
    torch.manual_seed(0)
    p = 16
    base = _blobs(96)
    s = torch.tensor([2.0, -1.5])
    from RegistrationSuiteLib.methods.histology.networks import _sample_square

    centres = torch.tensor([[40.0, 40.0], [56.0, 48.0], [44.0, 60.0], [60.0, 36.0]])
    offs = torch.arange(p, dtype=torch.float32) - (p - 1) / 2
    fixed_img = _sample_square(base, torch.tensor([[47.5 + 2.0, 47.5 - 1.5]]), torch.arange(96.0) - 47.5)
    ft, fc = patch_sets(fixed_img, centres, p, 0.5)
    mt, mc = patch_sets(base, centres, p, 0.5)
    mbase = _sample_square(base, centres, torch.arange(2 * p, dtype=torch.float32) - (2 * p - 1) / 2)
    net = MultiMagNet("affine", NetworkConfig(patch=p, width=4, context=multi, grid_size=64))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss, v = registration_loss(net, ft, mt, fc, mc, mbase, torch.ones_like(ft), 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * losses[0]
    mean_v = v.detach().mean(dim=(0, 2, 3))
    assert float((mean_v - s).norm()) < 0.6, mean_v


def test_nonrigid_loss_includes_curvature():
    cfg = NetworkConfig(patch=16, width=4, grid_size=64)
    net = MultiMagNet("nonrigid", cfg)
    torch.nn.init.normal_(net.out.weight, std=0.5)
    x = torch.rand(2, 1, 16, 16)
    args = (x, x, x, x, torch.rand(2, 1, 32, 32), torch.ones(2, 1, 16, 16))
    plain, v = registration_loss(net, *args, lam=0.0)
    regular, _ = registration_loss(net, *args, lam=10.0)
    torch.testing.assert_close(regular - plain, 10.0 * curvature_energy(v), atol=1e-5, rtol=1e-4)


def test_predict_field_skips_glass_and_is_zero_for_identity_networks():
    cfg = NetworkConfig(patch=16, width=4, grid_size=64)
    affine, _ = build_networks(cfg)
    img = _blobs(64)
    assert predict_field(affine, img, img).abs().max() == 0
    assert predict_field(affine, torch.zeros(1, 1, 64, 64), img).abs().max() == 0


def _card():
    return {k: None for k in ("name", "summary", "training_data", "data_licence", "command", "seed", "metrics")}


def test_model_round_trip_and_mismatches_refused(tiny_model, tmp_path):
    affine, nonrigid, cfg, model = load_histology_model(str(tiny_model))
    assert cfg.patch == 16 and cfg.grid_size == 64 and model.kind == MODEL_KIND
    state = dict(model.state_dict)
    # weights of another width under this architecture
    wide = dict(model.network_config, width=8)
    path = tmp_path / "wide.pt"
    save_model(ModelFile(kind=MODEL_KIND, network_name=NETWORK_NAME, network_config=wide, state_dict=state,
                         card=_card()), path)
    with pytest.raises(InputError, match="shape"):
        load_histology_model(str(path))
    # an architecture key this version does not know (e.g. a 3D model's depth)
    path3 = tmp_path / "three_d.pt"
    save_model(ModelFile(kind=MODEL_KIND, network_name=NETWORK_NAME, network_config=dict(model.network_config, depth=16),
                         state_dict=state, card=_card()), path3)
    with pytest.raises(InputError, match="unknown keys"):
        load_histology_model(str(path3))
    # single-magnification config with multi-magnification weights: unexpected context keys
    single = tmp_path / "single.pt"
    save_model(ModelFile(kind=MODEL_KIND, network_name=NETWORK_NAME,
                         network_config=dict(model.network_config, context=False), state_dict=state, card=_card()), single)
    with pytest.raises(InputError, match="unexpected keys"):
        load_histology_model(str(single))
    with pytest.raises(InputError, match="histology_multimag"):
        other = tmp_path / "other.pt"
        save_model(ModelFile(kind="deformable_field", network_name="x", network_config={}, state_dict=state,
                             card=_card()), other)
        load_histology_model(str(other))


# ----------------------------------------------------------------------------------- train-histology CLI
def _train_argv(images, output, *extra):
    return ["train-histology", "--images", str(images), "--output", str(output), "--steps-affine", "1",
            "--steps-nonrigid", "1", "--grid-size", "64", "--patch", "16", "--width", "4", "--batch-size", "2", *extra]


def _refused(capsys, folder, argv, match):
    before = sorted(p.name for p in folder.iterdir())
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(err) == 1 and match in err[0], err
    assert sorted(p.name for p in folder.iterdir()) == before


@pytest.fixture
def image_list(tmp_path):
    from .conftest import HE_OD, stain, tissue_density
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(stain(tissue_density(96), HE_OD), isVector=True), str(tmp_path / "a.png"))
    (tmp_path / "list.csv").write_text("image,licence\na.png,CC0 (synthetic)\n")
    return tmp_path / "list.csv"


def test_train_cli_bad_inputs(tmp_path, image_list, capsys):
    d = tmp_path
    _refused(capsys, d, _train_argv(d / "missing.csv", d / "m.pt"), "--images: file not found")
    (d / "nocol.csv").write_text("path\na.png\n")
    _refused(capsys, d, _train_argv(d / "nocol.csv", d / "m.pt"), "column 'image'")
    (d / "gone.csv").write_text("image\nnot_there.png\n")
    _refused(capsys, d, _train_argv(d / "gone.csv", d / "m.pt"), "image not found")
    _refused(capsys, d, _train_argv(image_list, d / "m.pth"), "--output: model file must end with .pt")
    _refused(capsys, d, _train_argv(image_list, d / "nofolder" / "m.pt"), "--output: folder does not exist")
    _refused(capsys, d, _train_argv(image_list, d / "m.pt", "--patch", "20"), "patch: expected a multiple of 8")
    _refused(capsys, d, _train_argv(image_list, d / "m.pt", "--steps-affine", "-1"), "steps_affine")


@pytest.mark.slow
def test_train_cli_writes_a_usable_model_and_resume_checks_settings(tmp_path, image_list, capsys):
    out = tmp_path / "m.pt"
    assert main(_train_argv(image_list, out, "--threads", "1")) == 0
    affine, nonrigid, cfg, model = load_histology_model(str(out))
    assert cfg.grid_size == 64 and model.card["training"]["steps_done"] == {"affine": 1, "nonrigid": 1}
    assert "synthetic_epe_px_identity" in model.card["metrics"] and (tmp_path / "m.md").is_file()
    assert (tmp_path / "m.pt.ckpt").is_file()
    capsys.readouterr()
    # resuming with another CPU budget is allowed (the run is the same); other settings are refused
    assert main(_train_argv(image_list, out, "--max-cpu-minutes", "0.5")) == 0
    assert "resumed from" in capsys.readouterr().out
    _refused(capsys, tmp_path, _train_argv(image_list, out, "--lr", "0.01"), "--checkpoint")


def _slides():
    from RegistrationSuiteLib.methods.histology.slides import from_array

    from .conftest import DAB_OD, HE_OD, about_centre, moving_density, rotation, stain, tissue_density

    d = tissue_density(256)
    matrix = rotation(25.0)
    offset = about_centre(matrix, (128, 128), (5.0, -3.0))
    fixed = from_array(stain(d, HE_OD), name="fixed")
    moving = from_array(stain(moving_density(d, matrix, offset), DAB_OD, 1.2), name="moving")
    return fixed, moving


@pytest.mark.slow
def test_network_displacement_is_composed_fixed_to_moving(tiny_model, tmp_path):
    """Known answer through the whole pipeline: an affine network whose output is a constant translation
    ``t`` (net-grid pixels) must turn the initial mapping ``x → A x + b`` into ``x → A (x + t·spacing) + b``
    inside the tissue; identity networks must leave the initial alignment unchanged."""
    from RegistrationSuiteLib.methods.histology import HistologyConfig, register_histology, transfer_landmarks
    from RegistrationSuiteLib.methods.histology.networks import load_histology_model

    fixed, moving = _slides()
    pts = np.array([[128.0, 128.0], [100.0, 140.0], [140.0, 120.0]])
    base = register_histology(fixed, moving, HistologyConfig(working_size=128, search_size=96))
    same = register_histology(fixed, moving, HistologyConfig(working_size=128, search_size=96, model=str(tiny_model),
                                                             iterations=2))
    np.testing.assert_allclose(transfer_landmarks(same, pts), transfer_landmarks(base, pts), atol=1e-3)
    # a model whose affine head outputs a constant translation of (1, -0.5) net-grid pixels
    affine, nonrigid, cfg, model = load_histology_model(str(tiny_model))
    state = dict(model.state_dict)
    state["affine.out.bias"] = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0 / (cfg.patch / 4), -0.5 / (cfg.patch / 4)])
    shifted = tmp_path / "shift.pt"
    save_model(ModelFile(kind=MODEL_KIND, network_name=NETWORK_NAME, network_config=model.network_config,
                         state_dict=state, card=_card()), shifted)
    out = register_histology(fixed, moving, HistologyConfig(working_size=128, search_size=96, model=str(shifted),
                                                            network_stages="affine", iterations=1))
    spacing = 256 / cfg.grid_size  # physical units (pixels here) per net-grid pixel
    a = base.affine[:2, :2]
    expected = transfer_landmarks(base, pts) + (a @ np.array([1.0, -0.5]) * spacing)[None]
    np.testing.assert_allclose(transfer_landmarks(out, pts), expected, atol=0.05)
    assert out.diagnostics["networks"]["passes"][0]["network"] == "affine"


def test_correlation_peaks_at_the_displacement():
    """``m(x + (2, −1)) = f(x)``: the cost volume's largest channel is the one of (dx, dy) = (2, −1)."""
    from RegistrationSuiteLib.methods.histology.networks import correlation

    torch.manual_seed(0)
    f = torch.randn(1, 64, 20, 20)
    m = torch.zeros_like(f)
    m[..., 0:19, 2:20] = f[..., 1:20, 0:18]  # m(y) = f(y − (2, −1))
    cv = correlation(f, m, 3)
    assert cv.shape == (1, 49, 20, 20)
    best = cv[0, :, 4:-4, 4:-4].argmax(0)
    expected = (-1 + 3) * 7 + (2 + 3)
    assert (best == expected).float().mean() == 1.0


@pytest.mark.parametrize("name,multi", [("histology_multimag", True), ("histology_singlemag", False)])
def test_shipped_models_load_with_a_card_and_are_small(name, multi):
    from RegistrationSuiteLib.models.registry import resolve_model

    path = resolve_model(name)
    assert path.stat().st_size < 20 * 1024 * 1024
    affine, nonrigid, cfg, model = load_histology_model(name)
    assert cfg.context is multi
    card = model.card
    assert "train-histology" in card["command"] and card["seed"] == 0
    assert "Rat-Kidney" not in card["training_data"] and "Izd2" not in card["training_data"]  # evaluation pairs
    assert card["metrics"]["synthetic_epe_px_identity"] > 0
    assert path.with_suffix(".md").is_file()

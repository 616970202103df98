"""TSPM training data: PAIRS.csv parsing, canvas volumes, the seeded patch sampler."""

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.geometry import rigid_about_center, sitk_affine_from_matrix
from RegistrationSuiteLib.io import write_transform
from RegistrationSuiteLib.methods.partial_prereg.patches import IntensityConfig
from RegistrationSuiteLib.methods.partial_prereg.template import load_template
from RegistrationSuiteLib.methods.partial_prereg.train import (
    PatchSampler,
    TSPMTrainConfig,
    read_pairs_csv,
    volume_on_canvas,
)
from RegistrationSuiteLib.models.training import TrainingConfig
from RegistrationSuiteLib.sample_data import sample_path


@pytest.fixture(scope="module")
def template():
    return load_template()


def _pairs(tmp_path, rows, header="image,template_to_image,split,licence,name"):
    (tmp_path / "PAIRS.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return tmp_path / "PAIRS.csv"


def test_read_pairs_with_transform(tmp_path):
    sitk.WriteImage(sitk.ReadImage(str(sample_path("T1"))), str(tmp_path / "t1.nii.gz"))
    m = rigid_about_center(np.eye(3), [0, 0, 0], [5.0, 0.0, 0.0])
    write_transform(sitk_affine_from_matrix(m), tmp_path / "t.tfm")
    cases = read_pairs_csv(_pairs(tmp_path, ["t1.nii.gz,t.tfm,train,MIT,a", "t1.nii.gz,,val,MIT,"]))
    assert [c.split for c in cases] == ["train", "val"] and cases[1].name == "t1" and cases[1].template_to_image is None
    np.testing.assert_allclose(cases[0].template_to_image, m, atol=1e-9)


@pytest.mark.parametrize("rows,header,message", [
    ([], "image,split", "at least one row"),
    (["x.nii.gz"], "file", "'image' column"),
    (["missing.nii.gz,,train,,"], "image,template_to_image,split,licence,name", "image not found"),
])
def test_bad_pairs(tmp_path, rows, header, message):
    with pytest.raises(InputError, match=message):
        read_pairs_csv(_pairs(tmp_path, rows, header))


def test_bad_split(tmp_path):
    sitk.WriteImage(sitk.ReadImage(str(sample_path("T1"))), str(tmp_path / "t1.nii.gz"))
    with pytest.raises(InputError, match="split must be 'train' or 'val', got 'test'"):
        read_pairs_csv(_pairs(tmp_path, ["t1.nii.gz,,test,,"]))


def test_sampler_is_seeded_and_labels_are_canvas_positions(tmp_path, template):
    sitk.WriteImage(sitk.ReadImage(str(sample_path("T1"))), str(tmp_path / "t1.nii.gz"))
    case = read_pairs_csv(_pairs(tmp_path, ["t1.nii.gz,,train,MIT,t1"]))[0]
    brain = sitk.GetArrayFromImage(template.foreground_mask()).astype(bool)
    vol = volume_on_canvas(case, template, brain, 0.6, IntensityConfig())
    assert vol.values.shape == (128, 128, 128) and len(vol.candidates) > 1000
    cfg = TSPMTrainConfig(optim=TrainingConfig(batch_size=16), patches_per_crop=8)
    sampler = PatchSampler([vol], template, IntensityConfig(), cfg)
    x1, y1 = sampler(np.random.default_rng(3), 0)
    x2, y2 = sampler(np.random.default_rng(3), 0)
    assert x1.shape == (16, 1, 16, 16, 16) and y1.shape == (16, 3)
    assert np.array_equal(x1.numpy(), x2.numpy()) and np.array_equal(y1.numpy(), y2.numpy())
    assert float(x1.min()) >= -0.5 and float(x1.max()) <= 0.5
    assert float(y1.min()) > 0 and float(y1.max()) < 1
    with pytest.raises(InputError, match="patches_per_crop"):
        TSPMTrainConfig(optim=TrainingConfig(batch_size=16), patches_per_crop=5)


def test_synthetic_contrasts_enter_the_batches(tmp_path, template):
    """With synthetic_fraction = 1 every crop comes from a synthetic contrast of the tissue maps: the labels
    are the same canvas positions as for the real scan (same anatomy), the intensities are not the scan's,
    and a new contrast replaces one in the pool every ``synthetic_refresh`` steps."""
    from RegistrationSuiteLib.methods.partial_prereg.train import read_tissue_csv, tissue_on_canvas

    t1 = sitk.ReadImage(str(sample_path("T1")), sitk.sitkFloat32)
    sitk.WriteImage(t1, str(tmp_path / "t1.nii.gz"))
    arr = sitk.GetArrayFromImage(t1)
    hi = np.percentile(arr, 99)
    for name, sel in (("dark", arr < 0.6 * hi), ("bright", arr >= 0.6 * hi)):
        m = sitk.GetImageFromArray(((arr > 0.1 * hi) & sel).astype(np.float32))
        m.CopyInformation(t1)
        sitk.WriteImage(m, str(tmp_path / f"{name}.nii.gz"))
    (tmp_path / "TISSUE.csv").write_text("class,image,anatomy\ndark,dark.nii.gz,t1\nbright,bright.nii.gz,t1\n")
    maps = read_tissue_csv(tmp_path / "TISSUE.csv")
    assert [m.name for m in maps] == ["dark", "bright"] and maps[0].template_to_image is None
    case = read_pairs_csv(_pairs(tmp_path, ["t1.nii.gz,,train,MIT,t1"]))[0]
    brain = sitk.GetArrayFromImage(template.foreground_mask()).astype(bool)
    vol = volume_on_canvas(case, template, brain, 0.6, IntensityConfig())
    scan = np.clip(vol.values / np.percentile(vol.values[vol.valid], 99.5), 0, 1)
    tissue = tissue_on_canvas(maps, template, (scan > 0.1).astype(np.float32), scan)
    assert tissue.shape == (5,) + vol.values.shape and np.allclose(tissue.sum(axis=0), 1.0, atol=1e-4)
    cfg = TSPMTrainConfig(optim=TrainingConfig(batch_size=16), patches_per_crop=8, synthetic_fraction=1.0,
                          synthetic_pool=1, synthetic_refresh=2)
    real = PatchSampler([vol], template, IntensityConfig(), TSPMTrainConfig(optim=TrainingConfig(batch_size=16),
                                                                            patches_per_crop=8))
    synth = PatchSampler([vol], template, IntensityConfig(), cfg)
    synth.add_synthetic(tissue, vol, np.random.default_rng(0))
    first = synth.synthetic[0].values.copy()
    assert not np.allclose(first[vol.valid], vol.values[vol.valid] / vol.values.max(), atol=0.05)
    xr, yr = real(np.random.default_rng(5), 1)
    xs, ys = synth(np.random.default_rng(5), 1)
    # the crop positions are drawn from the same candidates with the same generator: same labels, other voxels
    assert np.array_equal(yr.numpy(), ys.numpy()) and not np.allclose(xr.numpy(), xs.numpy(), atol=0.05)
    synth(np.random.default_rng(6), 2)  # step 2: the pool's contrast is redrawn
    assert not np.array_equal(synth.synthetic[0].values, first)
    with pytest.raises(InputError, match="synthetic_fraction"):
        TSPMTrainConfig(synthetic_fraction=1.5)


def test_mirror_crops_flip_patches_and_mirror_targets(tmp_path, template):
    """mirror_prob = 1: every crop is the mirror image of the crop mirror_prob = 0 draws with the same generator
    (patch flipped along canvas x, target x -> 1 - x); needs a symmetric template (the shipped one is)."""
    from RegistrationSuiteLib.methods.partial_prereg.template import is_mirror_symmetric, template_from_image

    sitk.WriteImage(sitk.ReadImage(str(sample_path("T1"))), str(tmp_path / "t1.nii.gz"))
    case = read_pairs_csv(_pairs(tmp_path, ["t1.nii.gz,,train,MIT,t1"]))[0]
    brain = sitk.GetArrayFromImage(template.foreground_mask()).astype(bool)
    vol = volume_on_canvas(case, template, brain, 0.6, IntensityConfig())
    plain = PatchSampler([vol], template, IntensityConfig(),
                         TSPMTrainConfig(optim=TrainingConfig(batch_size=8), patches_per_crop=8))
    mirror = PatchSampler([vol], template, IntensityConfig(),
                          TSPMTrainConfig(optim=TrainingConfig(batch_size=8), patches_per_crop=8, mirror_prob=1.0))
    x0, y0 = plain(np.random.default_rng(4), 0)
    x1, y1 = mirror(np.random.default_rng(4), 0)
    assert not np.allclose(x0.numpy(), x1.numpy())
    np.testing.assert_array_equal(x1.numpy(), x0.numpy()[..., ::-1])
    np.testing.assert_allclose(y1[:, 0].numpy(), 1.0 - y0[:, 0].numpy(), atol=1e-6)
    np.testing.assert_array_equal(y1[:, 1:].numpy(), y0[:, 1:].numpy())
    with pytest.raises(InputError, match="mirror_prob"):
        TSPMTrainConfig(mirror_prob=2.0)
    assert "mirror_prob" not in TSPMTrainConfig().to_dict()  # old checkpoints' run configuration unchanged
    # the shipped canvas is symmetric about its mid-plane; a canvas shifted by 6 voxels in x is not
    assert is_mirror_symmetric(template)
    shifted = sitk.GetImageFromArray(np.roll(template.array(), 6, axis=2))
    shifted.CopyInformation(template.image)
    assert not is_mirror_symmetric(template_from_image(shifted, "shifted"))


def test_predict_patch_positions_flip_x_measures_mirror_equivariance(tmp_path, template):
    """``flip_x`` feeds each patch mirrored along x: for a mirror-averaging network the predicted x of the
    flipped patch is the mirror (about the canvas mid-plane) of the unflipped one, y and z are unchanged; for
    the same weights without mirror averaging it is not (what diagnose_tspm_model.py's mirror drift measures)."""
    import torch

    from RegistrationSuiteLib.methods.partial_prereg.network import PatchNetConfig, PatchPositionNet
    from RegistrationSuiteLib.methods.partial_prereg.train import predict_patch_positions

    sitk.WriteImage(sitk.ReadImage(str(sample_path("T1"))), str(tmp_path / "t1.nii.gz"))
    case = read_pairs_csv(_pairs(tmp_path, ["t1.nii.gz,,val,MIT,t1"]))[0]
    brain = sitk.GetArrayFromImage(template.foreground_mask()).astype(bool)
    vol = volume_on_canvas(case, template, brain, 0.6, IntensityConfig())
    torch.manual_seed(0)
    small = dict(channels=(4, 8, 8, 8, 8), hidden=16)
    plain = PatchPositionNet(PatchNetConfig(**small))
    sym = PatchPositionNet(PatchNetConfig(mirror_average=True, **small))
    sym.load_state_dict(plain.state_dict())
    mid_mm = (template.canvas_size - 1) / 2.0 * template.spacing_mm
    kw = dict(num_patches=20, seed=1)
    a, truth = predict_patch_positions(sym, vol, template, IntensityConfig(), **kw)
    b, truth_b = predict_patch_positions(sym, vol, template, IntensityConfig(), flip_x=True, **kw)
    np.testing.assert_array_equal(truth, truth_b)
    np.testing.assert_allclose((a[:, 0] + b[:, 0]) / 2.0, mid_mm, atol=1e-3)
    np.testing.assert_allclose(a[:, 1:], b[:, 1:], atol=1e-3)
    p, _ = predict_patch_positions(plain, vol, template, IntensityConfig(), **kw)
    q, _ = predict_patch_positions(plain, vol, template, IntensityConfig(), flip_x=True, **kw)
    assert np.abs((p[:, 0] + q[:, 0]) / 2.0 - mid_mm).max() > 1e-2


def test_label_atlas_contrasts_enter_the_batches(tmp_path, template):
    """A label atlas (LABELS.csv) on the canvas: each region is split into three tissue labels by the anatomy's
    scan, non-brain head voxels into dark/bright; with synthetic_fraction = 1 the crops come from its
    contrasts (same labels as the real scan's crops, other intensities)."""
    from RegistrationSuiteLib.methods.partial_prereg.synth import CSF, GM, GROUPS, HEAD_BRIGHT, HEAD_DARK, WM
    from RegistrationSuiteLib.methods.partial_prereg.train import labels_on_canvas, read_labels_csv

    t1 = sitk.ReadImage(str(sample_path("T1")), sitk.sitkFloat32)
    sitk.WriteImage(t1, str(tmp_path / "t1.nii.gz"))
    arr = sitk.GetArrayFromImage(t1)
    fg = arr > 0.2 * np.percentile(arr, 99)
    zc = int(np.median(np.argwhere(fg)[:, 0]))
    regions = np.where(fg, 1 + (np.indices(arr.shape)[0] >= zc), 0).astype(np.int16) * 7  # labels 0, 7, 14
    atlas = sitk.GetImageFromArray(regions)
    atlas.CopyInformation(t1)
    sitk.WriteImage(atlas, str(tmp_path / "atlas.nii.gz"))
    (tmp_path / "LABELS.csv").write_text("image,anatomy,licence\natlas.nii.gz,t1,MIT\n")
    entry = read_labels_csv(tmp_path / "LABELS.csv")[0]
    assert entry.template_to_image is None and entry.licence == "MIT"
    case = read_pairs_csv(_pairs(tmp_path, ["t1.nii.gz,,train,MIT,t1"]))[0]
    brain = sitk.GetArrayFromImage(template.foreground_mask()).astype(bool)
    vol = volume_on_canvas(case, template, brain, 0.6, IntensityConfig())
    scan = np.clip(vol.values / np.percentile(vol.values[vol.valid], 99.5), 0, 1)
    labels, groups = labels_on_canvas(entry, template, scan, (scan > 0.05).astype(np.float32))
    assert labels.shape == vol.values.shape and len(groups) == 1 + 3 * 2 + 2 and labels.max() == len(groups) - 1
    assert groups.tolist() == [0, CSF, GM, WM, CSF, GM, WM, HEAD_DARK, HEAD_BRIGHT] and len(GROUPS) == 6
    # within a region, the three tissue labels are ordered by the scan's intensity (csf < gm < wm)
    med = [np.median(scan[labels == lab]) for lab in (1, 2, 3)]
    assert med[0] < med[1] < med[2]
    from RegistrationSuiteLib.methods.partial_prereg.train import LabelAtlas

    cfg = TSPMTrainConfig(optim=TrainingConfig(batch_size=16), patches_per_crop=8, synthetic_fraction=1.0,
                          synthetic_pool=1, synthetic_refresh=2)
    real = PatchSampler([vol], template, IntensityConfig(), TSPMTrainConfig(optim=TrainingConfig(batch_size=16),
                                                                            patches_per_crop=8))
    synth = PatchSampler([vol], template, IntensityConfig(), cfg)
    synth.add_synthetic(None, None, np.random.default_rng(0), labels=LabelAtlas(labels, groups, vol, []))
    img = synth.synthetic[0].values
    assert synth.synthetic[0].name.startswith("synthetic_labels")
    assert np.corrcoef(img[vol.valid], scan[vol.valid])[0, 1] < 0.99  # not the scan's intensities
    xr, yr = real(np.random.default_rng(5), 1)
    xs, ys = synth(np.random.default_rng(5), 1)
    assert np.array_equal(yr.numpy(), ys.numpy()) and not np.allclose(xr.numpy(), xs.numpy(), atol=0.05)
    with pytest.raises(InputError, match="tissue maps or a label atlas"):
        synth.add_synthetic(None, None, np.random.default_rng(0))

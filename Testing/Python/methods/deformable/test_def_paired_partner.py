"""Scheme B with a real partner image (``partner`` / ``partner_transform`` columns of the paired-training list)."""

import csv
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RegistrationSuiteLib.deform import resize_image
from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.methods.deformable.paired import PairedSampler, load_paired_volume
from RegistrationSuiteLib.methods.deformable.train import read_images_csv
from RegistrationSuiteLib.methods.deformable.volumes import VolumeSamplerConfig, crop_box, robust_unit
from RegistrationSuiteLib.sample_data import sample_path

BOX = (33, 41, 37)


def _corr(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def _known_transform(image):
    """A non-identity rigid transform (image points → partner points) about the image's centre."""
    tx = sitk.Euler3DTransform()
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    tx.SetCenter(centre)
    tx.SetRotation(0.12, -0.08, 0.10)
    tx.SetTranslation((7.0, -5.0, 4.0))
    return tx


def _partner_grid(image, tx, spacing=(1.5, 1.5, 3.0), keep_z=0.6):
    """An axis-aligned, anisotropic grid covering the image mapped through ``tx``, cut to the lower
    ``keep_z`` of its z extent (a partial field of view)."""
    corners = [image.TransformIndexToPhysicalPoint([i * (n - 1) for i, n in zip(c, image.GetSize())])
               for c in np.ndindex(2, 2, 2)]
    pts = np.array([tx.TransformPoint(p) for p in corners])
    lo, hi = pts.min(0), pts.max(0)
    size = [int(np.ceil((h - l) / s)) + 1 for l, h, s in zip(lo, hi, spacing)]
    size[2] = int(size[2] * keep_z)
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetOrigin(tuple(lo))
    ref.SetSpacing(spacing)
    return ref


def _write_pair(tmp_path, content="squared"):
    """Image = the oblique 2 mm sample T1; partner on another grid with ``partner(T(x)) = g(image(x))``
    (``content="squared"``) or an unrelated sinusoidal pattern in the partner's own space (``"pattern"``)."""
    image = sitk.ReadImage(str(sample_path("T1")), sitk.sitkFloat32)
    tx = _known_transform(image)
    ref = _partner_grid(image, tx)
    if content == "squared":
        sq = sitk.Square(image)
        partner = sitk.Resample(sq, ref, tx.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    else:
        z, y, x = np.indices(ref.GetSize()[::-1]).astype(np.float32)
        arr = 100.0 * (1.5 + np.sin(x / 3.0) * np.cos(y / 4.0) + 0.5 * np.sin(z / 2.0))
        partner = sitk.GetImageFromArray(arr)
        partner.CopyInformation(ref)
    img_path, partner_path, tx_path = tmp_path / "t1.nii.gz", tmp_path / "partner.nii.gz", tmp_path / "t1_to_p.tfm"
    sitk.WriteImage(image, str(img_path))
    sitk.WriteImage(partner, str(partner_path))
    sitk.WriteTransform(tx, str(tx_path))
    return img_path, partner_path, tx_path, tx


def test_partner_is_resampled_onto_the_image_grid_through_its_transform(tmp_path):
    img_path, partner_path, tx_path, tx = _write_pair(tmp_path)
    vol = load_paired_volume(img_path, 2.0, partner=partner_path, partner_transform=tx_path)
    assert vol.partner.shape == vol.array.shape == vol.partner_fov.shape
    # partial field of view: part of the head has no partner data, and there the partner is zero
    inside = vol.foreground & vol.partner_fov
    assert 0.2 < inside.sum() / vol.foreground.sum() < 0.95
    assert float(np.abs(vol.partner[~vol.partner_fov]).max()) == 0.0
    # known answer: partner(T(x)) = image(x)^2, so on the image's grid it is the squared image
    expected = robust_unit(np.maximum(vol.array, 0.0) ** 2)
    assert _corr(vol.partner[inside], expected[inside]) > 0.97
    # the transform matters, and in this direction: identity or the inverse mapping misalign it
    for wrong in (None, tx.GetInverse()):
        wrong_path = None
        if wrong is not None:
            wrong_path = tmp_path / "wrong.tfm"
            sitk.WriteTransform(wrong, str(wrong_path))
        bad = load_paired_volume(img_path, 2.0, partner=partner_path, partner_transform=wrong_path)
        both = vol.foreground & bad.partner_fov
        assert _corr(bad.partner[both], expected[both]) < 0.85


def test_bad_partner_path_is_refused_with_one_line(tmp_path):
    img_path, partner_path, tx_path, _ = _write_pair(tmp_path)
    lst = tmp_path / "list.csv"
    with open(lst, "w", newline="") as f:
        csv.writer(f).writerows([["image", "split", "partner", "partner_transform"],
                                 ["t1.nii.gz", "train", "missing_t2.nii.gz", "t1_to_p.tfm"]])
    with pytest.raises(InputError, match="partner not found") as err:
        read_images_csv(lst)
    assert "\n" not in str(err.value) and "missing_t2.nii.gz" in str(err.value)
    with pytest.raises(InputError, match="partner image not found"):
        load_paired_volume(img_path, 2.0, partner=tmp_path / "missing_t2.nii.gz")
    with pytest.raises(InputError, match="without a partner"):
        load_paired_volume(img_path, 2.0, partner_transform=tx_path)
    # the CLI: exit code 2 (bad input) and one line on stderr
    proc = subprocess.run([sys.executable, "-m", "RegistrationSuiteLib", "train-deformable", "--scheme", "paired",
                           "--sampling", "volume", "--images", str(lst), "--output", str(tmp_path / "m.pt"),
                           "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "missing_t2.nii.gz" in lines[0], proc.stderr
    # a good row reads back both paths
    with open(lst, "w", newline="") as f:
        csv.writer(f).writerows([["image", "partner", "partner_transform"],
                                 ["t1.nii.gz", "partner.nii.gz", "t1_to_p.tfm"], ["t1.nii.gz", "", ""]])
    rows = read_images_csv(lst)
    assert rows[0]["partner"] == partner_path and rows[0]["partner_transform"] == tx_path
    assert rows[1]["partner"] is None and rows[1]["partner_transform"] is None


def test_sampler_uses_the_real_partner_intensities(tmp_path):
    img_path, partner_path, tx_path, _ = _write_pair(tmp_path, content="pattern")
    vol = load_paired_volume(img_path, 2.0, partner=partner_path, partner_transform=tx_path)
    cfg = VolumeSamplerConfig(box=BOX, jitter_mm=0.0, noise_std=0.0, deformed_moving=0.0, skull_strip=0.0)
    sampler = PairedSampler([vol], cfg)
    centre = np.argwhere(vol.foreground).mean(0)  # no jitter: the crop centre is the head's centre
    crop_p, crop_i, crop_fov = crop_box([vol.partner, vol.array, vol.partner_fov], centre, sampler.fine_shape)

    def small(a):
        return resize_image(torch.from_numpy(np.ascontiguousarray(a, np.float32))[None, None], sampler.shape)[0, 0].numpy()

    exp_p, exp_i = small(crop_p), small(crop_i)
    fov_c = small(crop_fov.astype(np.float32)) > 0.99
    assert _corr(exp_p[fov_c], exp_i[fov_c]) < 0.5  # the pattern is unrelated to the image
    outside = small(crop_fov.astype(np.float32)) == 0.0  # model voxels wholly outside the partner's view
    head_outside = outside & (small(crop_box([vol.foreground], centre, sampler.fine_shape)[0].astype(np.float32)) > 0.99)
    assert head_outside.sum() > 50  # the crop holds head without partner data
    for seed in range(4):
        x, t = sampler.sample(np.random.default_rng(seed))
        unwarped = [t[1].numpy(), t[3].numpy()]  # I_M and I_Mp, one of them the real partner
        corr_p = [_corr(u[fov_c], exp_p[fov_c]) for u in unwarped]
        corr_i = [_corr(u[fov_c], exp_i[fov_c]) for u in unwarped]
        k = int(np.argmax(corr_p))
        assert corr_p[k] > 0.95 and corr_i[1 - k] > 0.95
        # the loss weight keeps only the partner's field of view: head without partner data is down-weighted
        # (away from the one-voxel dilation of the weight mask)
        from scipy.ndimage import binary_erosion

        far = binary_erosion(head_outside, iterations=2)
        assert far.sum() > 10 and float(t[4].numpy()[far].max()) < 1.0

"""Scheme-A training: batches obey the direction (fixed(x) = moving(x + u(x))), a short run writes a loadable
model with its card and resumes from its checkpoint."""

import csv

import numpy as np
import SimpleITK as sitk
import torch

from RegistrationSuiteLib.deform import warp_image
from RegistrationSuiteLib.methods.deformable import load_deformable_model
from RegistrationSuiteLib.methods.deformable.train import (
    DeformableTrainConfig,
    SyntheticBatches,
    load_training_image,
    train_deformable_model,
)
from RegistrationSuiteLib.models.training import TrainingConfig
from RegistrationSuiteLib.sample_data import sample_path


def _config(**kw):
    optim = TrainingConfig(epochs=kw.pop("epochs", 1), steps_per_epoch=2, batch_size=1, device="cpu")
    return DeformableTrainConfig(optim=optim, spacing_mm=4.0, patch=16, encoder=(4, 8), decoder=(8, 4), **kw)


def test_batches_encode_fixed_to_moving_fields():
    im = load_training_image(sample_path("T1"), 4.0)
    cfg = _config(noise_std=0.0, deformed_moving=0.0)
    batches = SyntheticBatches([im], cfg)
    x, u = batches.sample(np.random.default_rng(1))
    assert x.shape == (2, 16, 16, 16) and u.shape == (3, 16, 16, 16)
    assert float(u.abs().max()) > 0.5  # θ = 8 mm = 2 voxels at 4 mm
    # undo the gamma/scale jitter by comparing correlations: warping moving by u reproduces fixed
    fixed, moving = x[0:1][None], x[1:2][None]
    good = torch.corrcoef(torch.stack([warp_image(moving, u[None]).ravel(), fixed.ravel()]))[0, 1]
    bad = torch.corrcoef(torch.stack([warp_image(moving, -u[None]).ravel(), fixed.ravel()]))[0, 1]
    assert float(good) > 0.98 and float(good) > float(bad)


def test_short_training_writes_model_and_resumes(tmp_path):
    img = tmp_path / "t1.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(sample_path("T1"))), str(img))
    lst = tmp_path / "list.csv"
    with open(lst, "w", newline="") as f:
        csv.writer(f).writerows([["image", "split", "licence"], ["t1.nii.gz", "train", "MIT"]])
    ckpt = tmp_path / "m.ckpt"
    card = train_deformable_model(lst, tmp_path / "m.pt", _config(epochs=1), checkpoint=ckpt)
    assert ckpt.exists() and (tmp_path / "m.md").exists()
    assert card["metrics"]["epochs"] == 1 and card["seed"] == 0
    model = load_deformable_model(tmp_path / "m.pt")
    assert model.spacing_mm == 4.0
    card2 = train_deformable_model(lst, tmp_path / "m.pt", _config(epochs=2), checkpoint=ckpt)
    assert card2["metrics"]["epochs"] == 2  # one resumed + one new epoch

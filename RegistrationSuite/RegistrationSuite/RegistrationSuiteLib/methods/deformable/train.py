"""Training of the field network, scheme A (RegNet, Sokooti et al. 2017): synthetic fields on single images.

Each sample: a training image (resampled to the working spacing, robustly normalised) is cropped to a
``patch³`` block around a random foreground voxel; in the "deformed moving" variant (probability
``deformed_moving``) the block is first deformed by a low-frequency field so that neither image is the
untouched scan; a RegNet field ``u`` of a random class (:mod:`.synthetic`, points on edges inside the
foreground) gives ``fixed = warp(moving, u)`` so that ``u`` maps fixed to moving points exactly
(``fixed(x) = moving(x + u(x))``). Both images get independent Gaussian noise and gamma/scale jitter. The
network is supervised on the field with the mean absolute error (the paper's loss), in working voxels.

Images list: a CSV with a column ``image`` (paths relative to the CSV) and optional ``split`` (``val`` rows
are only evaluated) and ``licence``.
"""

from __future__ import annotations

import csv
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
import SimpleITK as sitk

from ...errors import InputError
from ...models.training import TrainingConfig, train
from .synthetic import LOW_FREQUENCY_CLASS, REGNET_CLASSES, edge_map, synthetic_field


@dataclass
class DeformableTrainConfig:
    """Settings of :func:`train_deformable_model` (besides the generic :class:`TrainingConfig`).

    Attributes:
        spacing_mm: working spacing the network learns at.
        patch: crop size (voxels per axis).
        noise_std: Gaussian noise std on [0, 1] intensities (RegNet: 5 HU on CT).
        deformed_moving: probability of the paper's deformed-moving variant.
        encoder, decoder: U-Net channels.
        diffeomorphic: the network outputs a velocity integrated by scaling and squaring.
    """

    optim: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=10, steps_per_epoch=50, batch_size=1))
    spacing_mm: float = 2.0
    patch: int = 64
    noise_std: float = 0.02
    deformed_moving: float = 0.5
    encoder: tuple = (8, 16, 16, 32)
    decoder: tuple = (32, 16, 16, 8)
    diffeomorphic: bool = False

    def __post_init__(self):
        if not self.spacing_mm > 0:
            raise InputError(f"spacing_mm: expected a positive number, got {self.spacing_mm}")
        if int(self.patch) != self.patch or self.patch < 16:
            raise InputError(f"patch: expected an integer >= 16, got {self.patch}")
        if not 0 <= self.deformed_moving <= 1:
            raise InputError(f"deformed_moving: expected a probability, got {self.deformed_moving}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainImage:
    """One training volume on the working grid: normalised intensities, foreground and edge masks."""

    name: str
    array: np.ndarray
    foreground: np.ndarray
    edges: np.ndarray
    split: str = "train"
    licence: str = ""


def read_images_csv(path) -> List[dict]:
    """Rows of LIST.csv: ``image`` (required), ``split``, ``licence``; relative paths resolved at the CSV."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--images: file not found: {path}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "image" not in rows[0]:
        raise InputError(f"--images: {path} needs a header with an 'image' column and at least one row")
    out = []
    for row in rows:
        image = Path(row["image"])
        image = image if image.is_absolute() else path.parent / image
        if not image.exists():
            raise InputError(f"--images: {path}: image not found: {image}")
        out.append({"image": image, "split": (row.get("split") or "train").strip(), "licence": row.get("licence", "")})
    return out


def load_training_image(path, spacing_mm: float, split: str = "train", licence: str = "") -> TrainImage:
    """Resample to isotropic ``spacing_mm`` (own direction), normalise to [0, 1], foreground and edges."""
    from ...io import read_image
    from .register import _normalise, _smooth_for

    img = read_image(path, "training image").image
    if img.GetDimension() != 3:
        raise InputError(f"training image {path}: expected 3D, got {img.GetDimension()}D")
    size = [max(2, int(round((n - 1) * s / spacing_mm)) + 1) for n, s in zip(img.GetSize(), img.GetSpacing())]
    res = sitk.Resample(_smooth_for(img, spacing_mm), size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(),
                        [spacing_mm] * 3, img.GetDirection(), 0.0, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(res)
    arr = _normalise(arr, arr > np.percentile(arr, 50))
    from scipy.ndimage import gaussian_filter

    fg = gaussian_filter(arr, 1.0) > 0.1
    return TrainImage(Path(path).name, arr, fg, edge_map(arr, fg), split, licence)


class SyntheticBatches:
    """``(rng, step) -> (inputs (B, 2, p, p, p), target fields (B, 3, p, p, p))`` for :func:`train`."""

    def __init__(self, images: List[TrainImage], config: DeformableTrainConfig):
        self.images = [im for im in images if im.split != "val"] or images
        self.config = config

    def _crop(self, im: TrainImage, rng):
        p = self.config.patch
        idx = np.argwhere(im.foreground)
        centre = idx[rng.integers(len(idx))] if len(idx) else np.array(im.array.shape) // 2
        out = []
        for a in (im.array, im.foreground, im.edges):
            pad = [(p, p)] * 3
            big = np.pad(a, pad)
            sl = tuple(slice(int(c) + p - p // 2, int(c) + p - p // 2 + p) for c in centre)
            out.append(big[sl])
        return out

    def sample(self, rng):
        import torch

        from ...deform import warp_image

        cfg = self.config
        im = self.images[int(rng.integers(len(self.images)))]
        block, fg, edges = self._crop(im, rng)
        moving = torch.from_numpy(np.ascontiguousarray(block, np.float32))[None, None]
        if rng.random() < cfg.deformed_moving:
            low = synthetic_field(block.shape, cfg.spacing_mm, *LOW_FREQUENCY_CLASS, rng, mask=fg)
            moving = warp_image(moving, torch.from_numpy(low / cfg.spacing_mm)[None])
        sigma, points, theta = REGNET_CLASSES[int(rng.integers(len(REGNET_CLASSES)))]
        u = torch.from_numpy(synthetic_field(block.shape, cfg.spacing_mm, sigma, points, theta, rng, mask=fg,
                                             edges=edges) / cfg.spacing_mm)[None]
        fixed = warp_image(moving, u)
        pair = [self._augment(x, rng) for x in (fixed, moving)]
        return torch.cat(pair, 1)[0], u[0]

    def _augment(self, x, rng):
        import torch

        gamma = float(np.exp(rng.normal(0, 0.2)))
        x = x.clamp(0, 1) ** gamma * float(rng.uniform(0.9, 1.1))
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        return x + self.config.noise_std * torch.randn(x.shape, generator=g)

    def __call__(self, rng, step):
        import torch

        samples = [self.sample(rng) for _ in range(self.config.optim.batch_size)]
        return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])


def train_deformable_model(images_csv, output, config: Optional[DeformableTrainConfig] = None, *,
                           checkpoint=None, name: Optional[str] = None, notes: str = "", progress=None,
                           cancel=None, log=None) -> dict:
    """Scheme A training; writes the model file (``.pt``) and its card (``.md``). Returns the card."""

    from ...models.model_file import card_markdown, save_model
    from .network import FieldUNet, model_file_for

    config = config or DeformableTrainConfig()
    start = time.perf_counter()
    rows = read_images_csv(images_csv)
    images = [load_training_image(r["image"], config.spacing_mm, r["split"], r["licence"]) for r in rows]
    net = FieldUNet(3, config.encoder, config.decoder, config.diffeomorphic)
    batches = SyntheticBatches(images, config)
    outcome = train(net, batches, lambda pred, target: (pred - target).abs().mean(), config.optim,
                    checkpoint_path=checkpoint, run_config={"scheme": "synthetic", **config.to_dict(),
                                                            "images": [str(r["image"]) for r in rows]},
                    progress=progress, cancel=cancel, log=log)
    net.eval()
    val = evaluate_synthetic(net, images, config, seed=12345)
    card = {
        "name": name or Path(output).stem,
        "summary": "3D field U-Net trained with RegNet synthetic displacement fields (scheme A, MR)",
        "training_data": [{"image": str(r["image"]), "split": r["split"]} for r in rows],
        "data_licence": sorted({r["licence"] for r in rows if r["licence"]}) or "see ../shared/data/MANIFEST.md",
        "command": " ".join(shlex.quote(a) for a in ["registration-suite", *sys.argv[1:]]),
        "seed": config.optim.seed,
        "metrics": {"final_train_mae_vox": outcome.history[-1]["loss"] if outcome.history else None,
                    "synthetic_mae_mm": val, "epochs": len(outcome.history),
                    "seconds": round(time.perf_counter() - start, 1)},
        "config": {k: v for k, v in config.to_dict().items()},
        "notes": notes,
    }
    save_model(model_file_for(net, spacing_mm=config.spacing_mm, modality="mr", card=card), output)
    Path(output).with_suffix(".md").write_text(card_markdown(card))
    return card


def evaluate_synthetic(net, images: List[TrainImage], config: DeformableTrainConfig, *, seed: int, n: int = 4) -> dict:
    """Mean field error (mm) of the network vs identity on ``n`` fresh synthetic samples of the ``val`` images
    (of all images when none is marked ``val``)."""
    import torch

    rng = np.random.default_rng(seed)
    val = [im for im in images if im.split == "val"]
    batches = SyntheticBatches(val or images, config)  # with only val images, the batches draw from them
    err_net, err_id = [], []
    with torch.no_grad():
        for _ in range(n):
            x, u = batches.sample(rng)
            pred = net(x[None])[0]
            err_net.append(float((pred - u).norm(dim=0).mean()) * config.spacing_mm)
            err_id.append(float(u.norm(dim=0).mean()) * config.spacing_mm)
    return {"network": float(np.mean(err_net)), "identity": float(np.mean(err_id)), "samples": n,
            "images": "val" if val else "train"}

"""Training of the field network, scheme A (RegNet, Sokooti et al. 2017): synthetic fields on single images.

Each sample: a training image (resampled to the working spacing, robustly normalised) is cropped to a
``patch³`` block around a random foreground voxel; in the "deformed moving" variant (probability
``deformed_moving``) the block is first deformed by a low-frequency field so that neither image is the
untouched scan; a RegNet field ``u`` of a random class (:mod:`.synthetic`, points on edges inside the
foreground) gives ``fixed = warp(moving, u)`` so that ``u`` maps fixed to moving points exactly
(``fixed(x) = moving(x + u(x))``). Both images get independent Gaussian noise and gamma/scale jitter. The
network is supervised on the field with the mean absolute error (the paper's loss), in working voxels.

With ``sampling="volume"`` (what the shipped model uses) samples are whole brains instead, built the way
the registration presents a pair to the network (:mod:`.volumes`): warped on the fine working grid, shrunk
to the model's grid, brain-weighted L1 on the field.

Images list: a CSV with a column ``image`` (paths relative to the CSV) and optional ``split`` (``val`` rows
are only evaluated), ``licence``, ``mask`` (a brain mask in the image's physical space, or several
probability maps joined by ``+`` that are summed; used for skull stripping and to place the field's points)
and ``tissue`` (scheme B: tissue probability maps exactly aligned with the image, joined by ``+``, from which
partner contrasts are drawn; see :mod:`.paired`), ``partner`` (scheme B: a real image of another contrast
of the same subject) with ``partner_transform`` (ITK transform file mapping the image's points to the
partner's, e.g. from ``rigid-search --fixed IMAGE --moving PARTNER``; identity when empty).
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
        output_stride: 2 = the field is predicted at half the model's resolution (see :class:`FieldUNet`).
        correlation_radius, correlation_stride, correlation_sigma, mind_dilation: the MIND-SSC correlation
            layer of :class:`FieldUNet` (radius 0 = none).
        diffeomorphic: the network outputs a velocity integrated by scaling and squaring.
        sampling: ``"patch"`` (crops on the model's grid, fields drawn on the crop) or ``"volume"`` (whole
            brains, :class:`~.volumes.VolumeSampler`).
        fine_spacing_mm, box, pool, contrast, skull_strip: ``"volume"`` sampling only (see
            :class:`~.volumes.VolumeSamplerConfig`; ``pool`` = samples kept per epoch, 0 = none).
        ncc_radius: scheme B: local NCC window radius in model voxels (0 = global NCC).
    """

    optim: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=10, steps_per_epoch=50, batch_size=1))
    spacing_mm: float = 2.0
    patch: int = 64
    noise_std: float = 0.02
    deformed_moving: float = 0.5
    encoder: tuple = (8, 16, 16, 32)
    decoder: tuple = (32, 16, 16, 8)
    diffeomorphic: bool = False
    output_stride: int = 1
    correlation_radius: int = 0
    correlation_stride: int = 1
    correlation_sigma: float = 1.5
    mind_dilation: int = 1
    sampling: str = "patch"
    fine_spacing_mm: float = 2.0
    box: tuple = (79, 95, 87)
    pool: int = 0
    contrast: float = 0.35
    skull_strip: float = 0.6
    ncc_radius: int = 3

    def __post_init__(self):
        if self.sampling not in ("patch", "volume"):
            raise InputError(f"sampling: expected 'patch' or 'volume', got {self.sampling!r}")
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
        out.append({"image": image, "split": (row.get("split") or "train").strip(),
                    "licence": row.get("licence", "") or "", "mask": _paths(row.get("mask"), path, "mask"),
                    "tissue": _paths(row.get("tissue"), path, "tissue map"),
                    "partner": _one_path(row.get("partner"), path, "partner"),
                    "partner_transform": _one_path(row.get("partner_transform"), path, "partner_transform")})
        if out[-1]["partner_transform"] is not None and out[-1]["partner"] is None:
            raise InputError(f"--images: {path}: partner_transform without a partner for {image}")
    return out


def _one_path(text, csv_path: Path, what: str):
    """One path (relative to the CSV) that must exist, or ``None`` when empty."""
    paths = _paths(text, csv_path, what) if (text or "").strip() else None
    if paths and len(paths) > 1:
        raise InputError(f"--images: {csv_path}: expected one {what} path, got {text!r}")
    return paths[0] if paths else None


def _paths(text, csv_path: Path, what: str):
    """``a+b+c`` (paths relative to the CSV) → list of existing paths, or ``None`` when empty."""
    out = []
    for part in (text or "").split("+"):
        if part.strip():
            p = Path(part.strip())
            p = p if p.is_absolute() else csv_path.parent / p
            if not p.exists():
                raise InputError(f"--images: {csv_path}: {what} not found: {p}")
            out.append(p)
    return out or None


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
                           cancel=None, log=None, scheme: str = "synthetic", init_model=None) -> dict:
    """Scheme A (``"synthetic"``) or B (``"paired"``, Cao et al.; volume sampling only) training; writes the
    model file (``.pt``) and its card (``.md``). Returns the card.

    ``init_model``: a model (name or ``.pt``) of the same architecture whose weights start the run (e.g.
    scheme B fine-tuning a scheme-A model); a resumed run takes the checkpoint's weights instead.
    """

    from ...models.model_file import card_markdown, save_model
    from .network import model_file_for

    config = config or DeformableTrainConfig()
    start, cpu_start = time.perf_counter(), time.process_time()
    rows = read_images_csv(images_csv)
    if scheme not in ("synthetic", "paired"):
        raise InputError(f"scheme: expected 'synthetic' or 'paired', got {scheme!r}")
    if scheme == "paired" and config.sampling != "volume":
        raise InputError("scheme 'paired' needs volume sampling (--sampling volume)")
    net = network_for(config)
    init_name = None
    if init_model is not None:
        from .network import load_deformable_model

        init = load_deformable_model(init_model)
        if init.network.config != net.config:
            raise InputError(f"--init-model: {init_model} has another architecture ({init.network.config}) "
                             f"than this run ({net.config})")
        if abs(init.spacing_mm - config.spacing_mm) > 1e-6:
            raise InputError(f"--init-model: {init_model} works at {init.spacing_mm} mm, this run at {config.spacing_mm} mm")
        net.load_state_dict(init.network.state_dict())
        init_name = init.name
    if scheme == "paired":
        from .paired import PairedSampler, load_paired_volume, paired_training_loss

        images = [load_paired_volume(r["image"], config.fine_spacing_mm, tissue_maps=r["tissue"], mask=r["mask"],
                                     split=r["split"], licence=r["licence"], partner=r.get("partner"),
                                     partner_transform=r.get("partner_transform")) for r in rows]
        batches = PairedSampler(images, volume_sampler_config(config), config.optim.batch_size, config.pool)
        loss_fn = paired_training_loss(config.ncc_radius)
    elif config.sampling == "volume":
        from .volumes import VolumeSampler, load_volume, weighted_l1

        images = [load_volume(r["image"], config.fine_spacing_mm, mask=r["mask"], split=r["split"],
                              licence=r["licence"]) for r in rows]
        batches = VolumeSampler(images, volume_sampler_config(config), config.optim.batch_size, config.pool)
        loss_fn = weighted_l1
    else:
        images = [load_training_image(r["image"], config.spacing_mm, r["split"], r["licence"]) for r in rows]
        batches = SyntheticBatches(images, config)
        loss_fn = lambda pred, target: (pred - target).abs().mean()  # noqa: E731
    outcome = train(net, batches, loss_fn, config.optim,
                    checkpoint_path=checkpoint, run_config={"scheme": "synthetic", **_run_settings(config, scheme),
                                                            "images": [str(r["image"]) for r in rows],
                                                            "masks": [[str(m) for m in r["mask"] or []] for r in rows],
                                                            **({"scheme": "paired", "init_model": init_name,
                                                                "tissue": [[str(m) for m in r["tissue"] or []] for r in rows],
                                                                "partners": [_partner_entry(r) for r in rows]}
                                                               if scheme == "paired" else {})},
                    progress=progress, cancel=cancel, log=log)
    net.eval()
    if scheme == "paired":
        from .paired import evaluate_paired

        val = evaluate_paired(net, images, volume_sampler_config(config), seed=12345)
    elif config.sampling == "volume":
        val = evaluate_volumes(net, images, config, seed=12345)
    else:
        val = evaluate_synthetic(net, images, config, seed=12345)
    card = {
        "name": name or Path(output).stem,
        "summary": ("3D field U-Net trained with RegNet synthetic displacement fields (scheme A, MR)" if scheme == "synthetic"
                    else "3D field U-Net trained on pre-aligned contrast pairs with Cao et al.'s intra-contrast "
                         "NCC loss (scheme B, MR)"),
        "architecture": (f"FieldUNet {net.config}" + (
            "; MIND-SSC correlation layer (soft-argmin over integer displacements, learned temperature) whose "
            "smoothed field the U-Net corrects as a residual" if config.correlation_radius else "")
            + f"; runs at {config.spacing_mm} mm" + (f", trained on whole brains warped at {config.fine_spacing_mm} mm"
                                                      if config.sampling == "volume" else "")),
        "scheme": scheme,
        "initialised_from": init_name,
        "training_data": [{"image": str(r["image"]), "split": r["split"], "licence": r["licence"],
                           **(_partner_entry(r) if scheme == "paired" and r.get("partner") else {})} for r in rows],
        "data_licence": sorted({r["licence"] for r in rows if r["licence"]}) or "see ../shared/data/MANIFEST.md",
        "licence_notes": licence_notes([r["licence"] for r in rows]),
        "command": " ".join(shlex.quote(a) for a in ["registration-suite", *_without_notes(sys.argv[1:])]),
        "seed": config.optim.seed,
        "metrics": {"final_train_mae_vox": outcome.history[-1]["loss"] if outcome.history else None,
                    "synthetic_mae_mm": val, "epochs": len(outcome.history),
                    "training_wall_seconds": round(sum(float(h.get("seconds", 0.0)) for h in outcome.history), 1),
                    "wall_seconds_this_invocation": round(time.perf_counter() - start, 1),
                    "cpu_seconds_this_invocation": round(time.process_time() - cpu_start, 1),
                    "history": outcome.history},
        "config": {k: v for k, v in config.to_dict().items()},
        "notes": notes,
    }
    save_model(model_file_for(net, spacing_mm=config.spacing_mm, modality="mr", card=card), output)
    Path(output).with_suffix(".md").write_text(card_markdown(card))
    return card


def _partner_entry(row) -> dict:
    """The real partner of a paired-training row (empty when it has none)."""
    if not row.get("partner"):
        return {}
    return {"partner": str(row["partner"]),
            "partner_transform": str(row["partner_transform"]) if row.get("partner_transform") else None}


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


ICBM_NOTICE = ("Copyright (C) 1993-2020 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological "
               "Institute, McGill University. Permission to use, copy, modify, and distribute this software and its "
               "documentation for any purpose and without fee is hereby granted, provided that the above copyright "
               "notice appear in all copies. The authors and McGill University make no representations about the "
               "suitability of this software for any purpose. It is provided \"as is\" without express or implied "
               "warranty.")


def licence_notes(licences) -> str:
    """Notices the training data's licences ask to carry along (the ICBM templates' copyright notice)."""
    notes = "Per-file sources and licences: ../shared/data/MANIFEST.md."
    if any("ICBM" in str(x) or "MNI" in str(x) for x in licences):
        notes += " Weights derived in part from the ICBM 2009 / MNI152 templates, whose terms ask for this notice: " + ICBM_NOTICE
    return notes


def _without_notes(argv):
    """The command line without ``--notes TEXT`` (free text for the card, not a training setting)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--notes":
            skip = True
        elif not a.startswith("--notes="):
            out.append(a)
    return out


def network_for(config: DeformableTrainConfig):
    """The untrained :class:`FieldUNet` a run with ``config`` trains."""
    from .network import FieldUNet

    return FieldUNet(3, config.encoder, config.decoder, config.diffeomorphic, output_stride=config.output_stride,
                     correlation_radius=config.correlation_radius, correlation_stride=config.correlation_stride,
                     correlation_sigma=config.correlation_sigma, mind_dilation=config.mind_dilation)


def _run_settings(config: DeformableTrainConfig, scheme: str) -> dict:
    """The config as stored in (and compared with) checkpoints; scheme-B-only keys only for scheme B."""
    out = config.to_dict()
    if scheme != "paired":
        out.pop("ncc_radius", None)
    if not config.correlation_radius:
        for key in ("correlation_radius", "correlation_stride", "correlation_sigma", "mind_dilation"):
            out.pop(key, None)
    return out


def volume_sampler_config(config: DeformableTrainConfig):
    """The :class:`~.volumes.VolumeSamplerConfig` of a ``"volume"`` training run."""
    from .volumes import VolumeSamplerConfig

    return VolumeSamplerConfig(spacing_mm=config.spacing_mm, fine_spacing_mm=config.fine_spacing_mm,
                               box=tuple(config.box), noise_std=config.noise_std,
                               deformed_moving=config.deformed_moving, skull_strip=config.skull_strip,
                               contrast=config.contrast)


def evaluate_volumes(net, volumes, config: DeformableTrainConfig, *, seed: int, n: int = 6) -> dict:
    """Brain-weighted mean field error (mm) of the network vs identity on ``n`` fresh whole-volume samples
    of the ``val`` volumes (of all volumes when none is marked ``val``)."""
    import torch

    from .volumes import VolumeSampler

    rng = np.random.default_rng(seed)
    val = [v for v in volumes if v.split == "val"]
    sampler = VolumeSampler(val or volumes, volume_sampler_config(config))
    err_net, err_id = [], []
    with torch.no_grad():
        for _ in range(n):
            x, t = sampler.sample(rng)
            inside = t[3] >= 1.0
            pred = net(x[None])[0]
            err_net.append(float((pred - t[:3]).norm(dim=0)[inside].mean()) * config.spacing_mm)
            err_id.append(float(t[:3].norm(dim=0)[inside].mean()) * config.spacing_mm)
    return {"network": float(np.mean(err_net)), "identity": float(np.mean(err_id)), "samples": n,
            "images": "val" if val else "train"}

"""Unsupervised training of the multi-magnification histology networks on self-supervised pairs.

Pairs are made from single slides (no landmarks, no second stain needed): the slide ``B`` is resampled to the
network grid; the *fixed* image is ``B`` warped by a random displacement ``d`` (affine about the slide centre
plus a smooth elastic field), the *moving* image is ``B`` itself, and each gets its own stain/colour
augmentation (random mixing and scaling of the optical-density channels, brightness of the glass, noise).
Then ``moving(x + d(x)) = fixed(x)``: ``d`` is the fixed → moving displacement the networks must find, used
only to report a validation error, never in the loss (the loss is the paper's unsupervised NCC + λ·curvature).

The networks see the optical-density gradient magnitude of each image (as at registration time), so a network
trained on one stain applies to another. Stage 1 trains the affine network on larger affine warps; stage 2
the non-rigid network on smooth elastic warps with a small residual shift (the paper trains the two
separately). Resumable: a checkpoint holds both networks, the optimiser, the step and the CPU time used;
every step draws its random numbers from ``seed`` and the step index, so a resumed run continues identically.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError
from .networks import (MODEL_KIND, NETWORK_NAME, NetworkConfig, build_networks, compose, predict_field,
                       registration_loss, _sample_square)
from .preprocess import gaussian_blur, glass_normalised, gradient_magnitude, optical_density, slide_plane, tissue_mask
from .slides import read_slide

STAGES = ("affine", "nonrigid")


@dataclass
class HistologyTrainConfig:
    """Training settings (torch-free values; validated on use).

    Attributes:
        steps_affine, steps_nonrigid: optimiser steps of each stage.
        batch: patches per step (all from one synthetic pair).
        learning_rate: Adam step (the paper: 1e-3).
        smoothness: λ of the curvature term of the non-rigid loss.
        loss_sigma: Gaussian blur (pixels) of the patches compared by the loss (see :func:`.networks.registration_loss`).
        max_cpu_minutes: stop (and still write the model) when this much process CPU time has been used, resumed
            runs included.
        checkpoint_every: steps between checkpoints.
        validation_pairs: synthetic pairs (fixed seed) whose end-point error is reported in the card.
        seed: seeds every random draw.
        net: :class:`NetworkConfig`.
    """

    steps_affine: int = 600
    steps_nonrigid: int = 400
    batch: int = 8
    learning_rate: float = 2e-3
    smoothness: float = 5.0
    loss_sigma: float = 2.0
    max_cpu_minutes: float = 15.0
    checkpoint_every: int = 25
    validation_pairs: int = 4
    seed: int = 0
    net: NetworkConfig = field(default_factory=NetworkConfig)

    def validate(self) -> None:
        for name in ("steps_affine", "steps_nonrigid", "validation_pairs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"{name}: expected an integer >= 0, got {v!r}")
        for name in ("batch", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name}: expected an integer >= 1, got {v!r}")
        for name in ("learning_rate", "max_cpu_minutes"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise InputError(f"{name}: expected a positive number, got {v!r}")
        for name in ("smoothness", "loss_sigma"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise InputError(f"{name}: expected a number >= 0, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"seed: expected an integer >= 0, got {self.seed!r}")
        self.net.validate()

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------- data
def read_image_list(path) -> List[dict]:
    """Rows of ``LIST.csv``: column ``image`` (path relative to the CSV), optional ``licence``.

    Raises:
        InputError: unreadable file, no ``image`` column, no rows, or a listed image that does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--images: file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"--images: cannot read {path}: {exc}") from None
    if not rows or "image" not in rows[0]:
        raise InputError(f"--images: {path} needs a header with a column 'image' and at least one row")
    out = []
    for k, row in enumerate(rows, start=2):
        name = (row.get("image") or "").strip()
        if not name:
            raise InputError(f"--images: {path} line {k}: empty 'image'")
        p = (path.parent / name).resolve()
        if not p.is_file():
            raise InputError(f"--images: {path} line {k}: image not found: {p}")
        out.append({"image": str(p), "licence": (row.get("licence") or "").strip() or "unknown"})
    return out


def grid_rgb(image_path: str, grid_size: int) -> tuple:
    """The slide's RGB ``(3, H, W)`` resampled so its longest side is ``grid_size``, and its tissue mask."""
    slide = read_slide(image_path, "training image")
    spacing = float(max(np.asarray(slide.size) * slide.spacing)) / grid_size
    rgb = slide_plane(slide, spacing).data
    if rgb.shape[0] == 1:
        rgb = rgb.expand(3, -1, -1).contiguous()
    mask = tissue_mask(rgb, Path(image_path).name)
    return rgb, mask


def structure(rgb: torch.Tensor) -> torch.Tensor:
    """The networks' input channel ``(1, H, W)``: gradient magnitude of the summed optical density."""
    return gradient_magnitude(optical_density(glass_normalised(rgb)).sum(0, keepdim=True), 1.0)


def random_displacement(shape_hw, rng: np.random.Generator, stage: str) -> torch.Tensor:
    """Smooth random displacement ``(2, H, W)`` (pixels): affine about the centre plus an elastic field
    (bicubic interpolation of 6 × 6 random control values). Affine stage: ±1.5° rotation, ±2 % scale, ±1.5 % shear, ±4 px shift,
    ±1 px elastic; non-rigid stage: ±1 px shift, ±3 px elastic."""
    h, w = shape_hw
    if stage == "affine":
        ang, scale, shear, shift, elastic = math.radians(rng.uniform(-1.5, 1.5)), rng.uniform(-0.02, 0.02), \
            rng.uniform(-0.015, 0.015), rng.uniform(-4, 4, 2), 1.0
    else:
        ang, scale, shear, shift, elastic = 0.0, 0.0, 0.0, rng.uniform(-1, 1, 2), 3.0
    c, s = math.cos(ang), math.sin(ang)
    lin = (1 + scale) * np.array([[c, -s], [s, c]]) @ np.array([[1, shear], [0, 1]]) - np.eye(2)
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32) - (h - 1) / 2,
                            torch.arange(w, dtype=torch.float32) - (w - 1) / 2, indexing="ij")
    lin_t = torch.as_tensor(lin, dtype=torch.float32)
    d = torch.stack([lin_t[0, 0] * gx + lin_t[0, 1] * gy + float(shift[0]),
                     lin_t[1, 0] * gx + lin_t[1, 1] * gy + float(shift[1])])
    coarse = torch.as_tensor(rng.normal(size=(1, 2, 6, 6)), dtype=torch.float32)
    smooth = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0]
    smooth = smooth / smooth.abs().amax().clamp(min=1e-6) * elastic * float(rng.uniform(0.3, 1.0))
    return d + smooth


def stain_augment(rgb: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random stain/colour change: optical densities mixed by a random near-identity 3 × 3 matrix and scaled
    (0.6–1.5), glass brightness 0.85–1, Gaussian noise (σ 0.01)."""
    od = -torch.log(rgb.clamp(min=1 / 256))
    mix = np.eye(3) + rng.normal(0, 0.25, (3, 3))
    mix = np.abs(mix) * rng.uniform(0.6, 1.5, (3, 1))
    od = torch.einsum("ij,jhw->ihw", torch.as_tensor(mix, dtype=torch.float32), od)
    out = torch.exp(-od) * float(rng.uniform(0.85, 1.0))
    out = out + torch.as_tensor(rng.normal(0, 0.01, out.shape), dtype=torch.float32)
    return out.clamp(0.0, 1.0)


def warp_image(image: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``image(x + d(x))`` for ``(C, H, W)`` and ``d`` ``(2, H, W)`` pixels (zeros outside, i.e. glass for OD)."""
    h, w = image.shape[-2:]
    gy, gx = torch.meshgrid(torch.arange(h, dtype=d.dtype), torch.arange(w, dtype=d.dtype), indexing="ij")
    grid = torch.stack([2 * (gx + d[0]) / (w - 1) - 1, 2 * (gy + d[1]) / (h - 1) - 1], -1)[None]
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0]


def synthetic_pair(rgb: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator, stage: str) -> tuple:
    """``(fixed (1, 1, H, W), moving (1, 1, H, W), d (2, H, W), fixed tissue mask (H, W))`` with
    ``moving(x + d(x)) = fixed(x)`` before augmentation."""
    d = random_displacement(rgb.shape[-2:], rng, stage)
    fixed_rgb = warp_image(stain_augment(rgb, rng), d)
    moving_rgb = stain_augment(rgb, rng)
    fmask = warp_image(mask[None].float(), d)[0] > 0.5
    return structure(fixed_rgb)[None], structure(moving_rgb)[None], d, fmask


def batch_from_pair(fixed, moving, fmask, rng, batch: int, cfg: NetworkConfig) -> tuple:
    """Patch sets at ``batch`` random tissue centres: target/context of both images and the moving base."""
    from .networks import patch_sets

    ys, xs = torch.nonzero(fmask, as_tuple=True)
    if ys.numel() == 0:
        ys, xs = torch.nonzero(torch.ones_like(fmask), as_tuple=True)
    pick = torch.as_tensor(rng.integers(0, ys.numel(), batch))
    centres = torch.stack([xs[pick].float(), ys[pick].float()], -1) + 0.5 * (cfg.patch % 2 == 0)
    p = cfg.patch
    ft, fc = patch_sets(fixed, centres, p, cfg.rate)
    mt, mc = patch_sets(moving, centres, p, cfg.rate)
    base = _sample_square(moving, centres, torch.arange(2 * p, dtype=torch.float32) - (2 * p - 1) / 2.0)
    return ft, mt, fc, mc, base


# ------------------------------------------------------------------------------------------- training
def train_histology_model(images_csv, output, config: Optional[HistologyTrainConfig] = None, *,
                          checkpoint: Optional[str] = None, name: Optional[str] = None, command: str = "",
                          log: Callable[[str], None] = print) -> dict:
    """Train both networks, write the model file (``.pt``) and its card (``.md``); returns the card.

    Resumes from ``checkpoint`` (default ``OUTPUT.ckpt``) when it exists and was made with the same settings.
    """
    from ...models.model_file import ModelFile, card_markdown, save_model
    from ...seeding import seed_everything

    cfg = config or HistologyTrainConfig()
    cfg.validate()
    rows = read_image_list(images_csv)
    output = Path(output)
    ckpt_path = Path(checkpoint) if checkpoint else Path(str(output) + ".ckpt")
    seed_everything(cfg.seed)
    torch.manual_seed(cfg.seed)
    slides = [grid_rgb(r["image"], cfg.net.grid_size) for r in rows]
    affine, nonrigid = build_networks(cfg.net)
    state = {"stage": 0, "step": 0, "cpu_seconds": 0.0, "wall_seconds": 0.0, "history": []}
    opts = [torch.optim.Adam(affine.parameters(), lr=cfg.learning_rate),
            torch.optim.Adam(nonrigid.parameters(), lr=cfg.learning_rate)]
    settings = cfg.to_dict()
    settings["images"] = [r["image"] for r in rows]
    if ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if _comparable(ck.get("settings")) != _comparable(settings):
            raise InputError(f"--checkpoint: {ckpt_path} was made with other settings or images; delete it or "
                             "change --checkpoint")
        affine.load_state_dict(ck["affine"])
        nonrigid.load_state_dict(ck["nonrigid"])
        for o, s in zip(opts, ck["optimizers"]):
            o.load_state_dict(s)
        state = ck["state"]
        log(f"resumed from {ckpt_path}: stage {STAGES[min(state['stage'], 1)]}, step {state['step']}")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    budget = cfg.max_cpu_minutes * 60.0
    stopped = False

    def used():
        return state["cpu_seconds"] + time.process_time() - cpu0

    def save_ck():
        snap = dict(state, cpu_seconds=used(), wall_seconds=state["wall_seconds"] + time.perf_counter() - wall0)
        tmp = ckpt_path.with_suffix(ckpt_path.suffix + ".part")
        torch.save({"settings": settings, "affine": affine.state_dict(), "nonrigid": nonrigid.state_dict(),
                    "optimizers": [o.state_dict() for o in opts], "state": snap}, tmp)
        tmp.replace(ckpt_path)

    steps = (cfg.steps_affine, cfg.steps_nonrigid)
    nets = (affine, nonrigid)
    while state["stage"] < 2 and not stopped:
        k = state["stage"]
        net, opt = nets[k], opts[k]
        net.train()
        while state["step"] < steps[k]:
            if used() > budget:
                stopped = True
                log(f"CPU budget of {cfg.max_cpu_minutes} min reached at stage {STAGES[k]} step {state['step']}")
                break
            rng = np.random.default_rng([cfg.seed, k, state["step"]])
            rgb, mask = slides[int(rng.integers(len(slides)))]
            fixed, moving, _, fmask = synthetic_pair(rgb, mask, rng, STAGES[k])
            ft, mt, fc, mc, base = batch_from_pair(fixed, moving, fmask, rng, cfg.batch, cfg.net)
            loss, _ = registration_loss(net, ft, mt, fc, mc, base, torch.ones_like(ft[:, :1]),
                                        cfg.smoothness if k == 1 else 0.0, cfg.loss_sigma)
            opt.zero_grad()
            loss.backward()
            opt.step()
            state["step"] += 1
            state["history"].append([k, state["step"], loss.item()])
            if state["step"] % cfg.checkpoint_every == 0:
                save_ck()
                recent = [h[2] for h in state["history"] if h[0] == k][-cfg.checkpoint_every:]
                log(f"{STAGES[k]} step {state['step']}/{steps[k]} loss {np.mean(recent):.4f} "
                    f"cpu {used() / 60:.1f} min")
        if not stopped:
            state["stage"] += 1
            state["step"] = 0
    save_ck()
    affine.eval()
    nonrigid.eval()
    metrics = validation_metrics(affine, nonrigid, slides, cfg)
    cpu_total = used()
    wall_total = state["wall_seconds"] + time.perf_counter() - wall0
    first = {k: np.mean([h[2] for h in state["history"] if h[0] == k][:25] or [float("nan")]) for k in (0, 1)}
    last = {k: np.mean([h[2] for h in state["history"] if h[0] == k][-25:] or [float("nan")]) for k in (0, 1)}
    metrics.update({f"{STAGES[k]}_loss_first25": float(first[k]) for k in (0, 1)})
    metrics.update({f"{STAGES[k]}_loss_last25": float(last[k]) for k in (0, 1)})
    steps_done = {STAGES[k]: sum(1 for h in state["history"] if h[0] == k) for k in (0, 1)}
    licences = sorted({r["licence"] for r in rows})
    card = {
        "name": name or output.stem,
        "summary": ("multi-magnification affine + non-rigid patch networks for histology "
                    f"({'multi' if cfg.net.context else 'single'}-magnification, patch {cfg.net.patch}, "
                    f"grid {cfg.net.grid_size})"),
        "training_data": ("self-supervised pairs (random affine + smooth elastic warp, stain/colour "
                          "augmentation) made from single images: " + ", ".join(Path(r["image"]).name for r in rows)
                          + ". The ANHIR evaluation pairs (rat kidney, lung lesion) were not used."),
        "data_licence": "; ".join(licences),
        "command": command,
        "seed": cfg.seed,
        "metrics": metrics,
        "training": {"steps_done": steps_done, "cpu_minutes": round(cpu_total / 60, 2),
                     "wall_minutes": round(wall_total / 60, 2), "stopped_by_cpu_budget": stopped,
                     "torch_threads": torch.get_num_threads(), "settings": cfg.to_dict()},
    }
    state_dict = {f"affine.{k}": v for k, v in affine.state_dict().items()}
    state_dict.update({f"nonrigid.{k}": v for k, v in nonrigid.state_dict().items()})
    save_model(ModelFile(kind=MODEL_KIND, network_name=NETWORK_NAME, network_config=cfg.net.to_dict(),
                         state_dict=state_dict, intensity={"input": "optical-density gradient magnitude (99th "
                                                                    "percentile = 1)"}, card=card), output)
    output.with_suffix(".md").write_text(card_markdown(card), encoding="utf-8")
    return card


VOLATILE = ("max_cpu_minutes", "checkpoint_every")  # may change between a run and its resumption


def _comparable(settings) -> dict:
    return {k: v for k, v in (settings or {}).items() if k not in VOLATILE}


@torch.no_grad()
def validation_metrics(affine, nonrigid, slides, cfg: HistologyTrainConfig) -> dict:
    """Mean end-point error (network-grid pixels, inside the fixed tissue) on ``validation_pairs`` synthetic
    pairs (seed ``cfg.seed + 10_000``; the affine stage's warps, which include an elastic part): no
    registration, affine network, affine + non-rigid network."""
    errs = {"identity": [], "affine": [], "affine_nonrigid": []}
    for k in range(cfg.validation_pairs):
        rng = np.random.default_rng([cfg.seed + 10_000, k])
        rgb, mask = slides[k % len(slides)]
        fixed, moving, d, fmask = synthetic_pair(rgb, mask, rng, "affine")
        va = predict_field(affine, fixed, moving)
        moved = warp_image(moving[0], va)[None]
        vn = predict_field(nonrigid, fixed, moved)
        total = compose(va, vn)
        m = fmask
        for key, v in (("identity", torch.zeros_like(d)), ("affine", va), ("affine_nonrigid", total)):
            errs[key].append(float((v - d).norm(dim=0)[m].mean()))
    return {f"synthetic_epe_px_{k}": round(float(np.mean(v)), 3) for k, v in errs.items() if v}

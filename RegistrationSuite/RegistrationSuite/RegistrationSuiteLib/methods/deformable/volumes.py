"""Whole-volume training samples for the field network, built the way :func:`~.network.predict_field` sees
a pair at registration time.

At registration the images are resampled onto the working grid (default 2 mm), normalised to [0, 1] over
the field of view (robust percentiles, as in :mod:`.register`) and, for a model trained at a coarser spacing
(e.g. 4 mm), shrunk to the model's grid with :func:`RegistrationSuiteLib.deform.resize_image`. A sample
here follows the same path: a training volume on the fine grid (``fine_spacing_mm``) is cropped to a fixed
box around its brain, optionally skull-stripped (the evaluation subject is brain-extracted), a RegNet
field (:mod:`.synthetic`; points on edges inside the brain) is drawn on the model's grid and upsampled to
the fine grid, the fixed image is the source warped by it (``fixed(x) = moving(x + u(x))``, so ``u`` maps
fixed to moving points), both images get noise, gamma/scale jitter and, with some probability, an
independent random intensity mapping (a random piecewise-linear curve with 0 kept at 0, so that T1-like
and T2-like contrasts meet in training), are normalised, and are shrunk to the model's grid. The target is
the field on the model's grid in its voxels, with a per-voxel weight (1 inside the brain, small outside).

The intensity mapping is this project's augmentation for cross-contrast pairs, not part of RegNet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ...errors import InputError
from .synthetic import LOW_FREQUENCY_CLASS, REGNET_CLASSES, edge_map, synthetic_field

OUTSIDE_WEIGHT = 0.05


@dataclass
class VolumeSamplerConfig:
    """How whole-volume samples are drawn.

    Attributes:
        spacing_mm: the model's grid (where the network runs and the target lives).
        fine_spacing_mm: the grid where images are warped (the registration's working spacing).
        box: fine-grid crop size (z, y, x) in voxels; images are zero-padded to it.
        jitter_mm: random shift of the crop centre around the brain centre.
        noise_std: largest Gaussian noise std on [0, 1] intensities (drawn uniformly up to it).
        deformed_moving: probability of the paper's deformed-moving variant.
        skull_strip: probability of multiplying by the brain mask (when the image has one).
        contrast: probability, per image of a pair, of a random intensity mapping.
        classes: RegNet (σ, P, θ) classes.
    """

    spacing_mm: float = 4.0
    fine_spacing_mm: float = 2.0
    box: Sequence[int] = (79, 95, 87)
    jitter_mm: float = 8.0
    noise_std: float = 0.03
    deformed_moving: float = 0.3
    skull_strip: float = 0.6
    contrast: float = 0.35
    classes: tuple = REGNET_CLASSES

    def __post_init__(self):
        if not (self.spacing_mm > 0 and self.fine_spacing_mm > 0 and self.spacing_mm >= self.fine_spacing_mm):
            raise InputError(f"spacing: expected 0 < fine ({self.fine_spacing_mm}) <= model ({self.spacing_mm}) mm")
        if len(self.box) != 3 or min(int(b) for b in self.box) < 16:
            raise InputError(f"box: expected 3 sizes >= 16, got {tuple(self.box)}")
        for name in ("deformed_moving", "skull_strip", "contrast"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"{name}: expected a probability, got {getattr(self, name)}")


@dataclass
class TrainVolume:
    """A training image on the fine grid: raw intensities, head foreground, optional brain mask."""

    name: str
    array: np.ndarray
    foreground: np.ndarray
    brain: Optional[np.ndarray]
    split: str = "train"
    licence: str = ""


def robust_unit(arr: np.ndarray) -> np.ndarray:
    """[0, 1] by the 0.5 / 99.5 percentiles of the non-zero voxels (all voxels if few are non-zero)."""
    nz = arr[arr > 0]
    values = nz if nz.size > 100 else arr.ravel()
    lo, hi = np.percentile(values, [0.5, 99.5])
    lo = min(lo, 0.0)
    return np.clip((arr - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def load_volume(path, fine_spacing_mm: float, *, mask=None, split: str = "train", licence: str = "") -> TrainVolume:
    """Resample ``path`` to isotropic ``fine_spacing_mm`` (own direction, anti-aliased), scale to [0, 1];
    ``mask`` (a path or a list of paths whose images are summed, e.g. GM + WM probability maps; optional) is
    a brain mask in the same physical space, resampled through physical coordinates (above half its maximum
    after linear interpolation = brain, holes filled)."""
    from ...io import read_image
    from .register import _smooth_for

    img = read_image(path, "training image").image
    if img.GetDimension() != 3:
        raise InputError(f"training image {path}: expected 3D, got {img.GetDimension()}D")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"training image {path}: expected a scalar image")
    size = [max(2, int(round((n - 1) * s / fine_spacing_mm)) + 1) for n, s in zip(img.GetSize(), img.GetSpacing())]
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetOrigin(img.GetOrigin())
    ref.SetDirection(img.GetDirection())
    ref.SetSpacing([fine_spacing_mm] * 3)
    res = sitk.Resample(_smooth_for(sitk.Cast(img, sitk.sitkFloat32), fine_spacing_mm), ref, sitk.Transform(),
                        sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    arr = robust_unit(np.maximum(sitk.GetArrayFromImage(res), 0.0))
    from scipy.ndimage import binary_fill_holes, gaussian_filter

    fg = binary_fill_holes(gaussian_filter(arr, 1.0) > 0.08)
    brain = None
    if mask is not None:
        parts = [mask] if isinstance(mask, (str, Path)) else list(mask)
        mm = 0.0
        for part in parts:
            m = sitk.Cast(read_image(part, "brain mask").image, sitk.sitkFloat32)
            mm = mm + sitk.GetArrayFromImage(sitk.Resample(m, ref, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                           sitk.sitkFloat32))
        brain = binary_fill_holes(mm > 0.5 * float(np.max(mm))) & fg
        if brain.sum() < 1000:
            raise InputError(f"brain mask {mask}: fewer than 1000 voxels overlap {path}")
    return TrainVolume(Path(path).name, arr, fg, brain, split, licence)


def random_intensity_map(x, rng: np.random.Generator, knots: int = 6):
    """A random piecewise-linear mapping of [0, 1] onto [0, 1] with 0 ↦ 0 (background stays dark) applied
    to the torch tensor ``x``; values at the knots are uniform in [0.05, 1], so it may invert the contrast."""
    import torch

    xs = np.linspace(0.0, 1.0, knots + 1)
    ys = np.concatenate([[0.0], rng.uniform(0.05, 1.0, size=knots)])
    ys /= ys.max()
    xs_t, ys_t = torch.tensor(xs, dtype=x.dtype), torch.tensor(ys, dtype=x.dtype)
    xc = x.clamp(0, 1)
    idx = torch.clamp(torch.bucketize(xc, xs_t) - 1, 0, knots - 1)
    x0, x1, y0, y1 = xs_t[idx], xs_t[idx + 1], ys_t[idx], ys_t[idx + 1]
    return y0 + (xc - x0) * (y1 - y0) / (x1 - x0)


def crop_box(arrays, centre, box):
    """Each array (or ``None``) cropped to ``box`` voxels centred on ``centre`` (array order), zero-padded
    where the box leaves the array."""
    out = []
    for a in arrays:
        if a is None:
            out.append(None)
            continue
        start = [int(round(c - b / 2)) for c, b in zip(centre, box)]
        res = np.zeros(box, dtype=a.dtype)
        src = tuple(slice(max(0, s), min(n, s + b)) for s, b, n in zip(start, box, a.shape))
        dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start))
        res[dst] = a[src]
        out.append(res)
    return out


class VolumeSampler:
    """``(rng, step) -> (inputs (B, 2, *S), targets (B, 4, *S))`` on the model's grid ``S``; target channels
    0-2 are the field (model voxels, ITK channel order), channel 3 the loss weight.

    With ``pool_size`` > 0, samples are drawn from a pool that is filled afresh at the start of every epoch
    (step 0, from that epoch's generator, so a resumed run repeats the same samples) and gets one new sample
    per step; each drawn sample is mirrored along random axes (the field's components flipped with them).
    This spends the CPU on the network rather than on generating fields.
    """

    def __init__(self, volumes: List[TrainVolume], config: VolumeSamplerConfig, batch_size: int = 1,
                 pool_size: int = 0):
        from ...deform import level_shape

        self.volumes = [v for v in volumes if v.split != "val"] or list(volumes)
        self.config = config
        self.batch_size = int(batch_size)
        self.pool_size = int(pool_size)
        self.pool: list = []
        self.factor = config.spacing_mm / config.fine_spacing_mm
        self.fine_shape = tuple(int(b) for b in config.box)
        self.shape = level_shape(self.fine_shape, self.factor)

    def sample(self, rng: np.random.Generator, volume: Optional[TrainVolume] = None):
        import torch
        from scipy.ndimage import zoom

        from ...deform import resize_field, resize_image, warp_image

        cfg = self.config
        vol = volume or self.volumes[int(rng.integers(len(self.volumes)))]
        region = vol.brain if vol.brain is not None else vol.foreground
        centre = np.argwhere(region).mean(0) + rng.uniform(-1, 1, 3) * cfg.jitter_mm / cfg.fine_spacing_mm
        arr, fg, brain = crop_box([vol.array, vol.foreground, vol.brain], centre, self.fine_shape)
        if brain is not None and rng.random() < cfg.skull_strip:
            arr = arr * brain
            fg = brain
        region = brain if brain is not None else fg
        src = torch.from_numpy(np.ascontiguousarray(arr, np.float32))[None, None]
        coarse = lambda a: zoom(a.astype(np.float32), [c / f for c, f in zip(self.shape, self.fine_shape)], order=1) > 0.5  # noqa: E731
        mask_c = coarse(region)
        if rng.random() < cfg.deformed_moving:
            low = synthetic_field(self.shape, cfg.spacing_mm, *LOW_FREQUENCY_CLASS, rng, mask=mask_c, unique=True)
            src = warp_image(src, resize_field(torch.from_numpy(low / cfg.spacing_mm)[None], self.fine_shape))
        edges_c = edge_map(zoom(src[0, 0].numpy(), [c / f for c, f in zip(self.shape, self.fine_shape)], order=1),
                           mask_c)
        sigma, points, theta = cfg.classes[int(rng.integers(len(cfg.classes)))]
        u = torch.from_numpy(synthetic_field(self.shape, cfg.spacing_mm, sigma, points, theta, rng, mask=mask_c,
                                             edges=edges_c, unique=True) / cfg.spacing_mm)[None]
        fixed = warp_image(src, resize_field(u, self.fine_shape))
        pair = [self._augment(x, rng) for x in (fixed, src)]
        x = torch.cat([resize_image(p, self.shape) for p in pair], 1)[0]
        from scipy.ndimage import binary_dilation

        weight = np.where(binary_dilation(mask_c, iterations=1), 1.0, OUTSIDE_WEIGHT).astype(np.float32)
        return x, torch.cat([u[0], torch.from_numpy(weight)[None]], 0)

    def _augment(self, x, rng, contrast: Optional[float] = None):
        """Random intensity map (probability ``contrast``, default the config's), gamma and scale jitter,
        noise, then the registration's robust normalisation."""
        import torch

        from .register import _normalise

        cfg = self.config
        if rng.random() < (cfg.contrast if contrast is None else contrast):
            x = random_intensity_map(x, rng)
        gamma = float(np.exp(rng.normal(0, 0.25)))
        x = x.clamp(0, 1) ** gamma * float(rng.uniform(0.85, 1.15))
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        x = x + float(rng.uniform(0, cfg.noise_std)) * torch.randn(x.shape, generator=g)
        a = x[0, 0].numpy()
        return torch.from_numpy(_normalise(a, np.ones(a.shape, bool)))[None, None]

    def __call__(self, rng, step):
        import torch

        if self.pool_size <= 0:
            samples = [self.sample(rng) for _ in range(self.batch_size)]
        else:
            if step == 0 or not self.pool:
                self.pool = [self.sample(rng) for _ in range(self.pool_size)]
            else:
                self.pool[int(rng.integers(self.pool_size))] = self.sample(rng)
            picks = rng.choice(self.pool_size, size=self.batch_size, replace=self.batch_size > self.pool_size)
            samples = [self._mirror(*self.pool[int(i)], rng.random(3) < 0.5) for i in picks]
        return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])

    def _mirror(self, x, target, flips):
        return mirror(x, target, flips)


def mirror(x, target, flips):
    """Mirror a sample along the tensor axes where ``flips`` (z, y, x) is true; the field component along
    a mirrored axis changes sign (channel 0 = x = last tensor axis)."""
    import torch

    dims = [1 + a for a in range(3) if flips[a]]
    if not dims:
        return x, target
    x, target = torch.flip(x, dims), torch.flip(target, dims).clone()
    for a in range(3):
        if flips[a]:
            target[2 - a] = -target[2 - a]
    return x, target


def weighted_l1(pred, target):
    """Mean absolute field error weighted by target channel 3 (RegNet's loss, focused on the brain)."""
    w = target[:, 3:4]
    return ((pred - target[:, :3]).abs() * w).sum() / (w.sum() * pred.shape[1]).clamp_min(1e-6)

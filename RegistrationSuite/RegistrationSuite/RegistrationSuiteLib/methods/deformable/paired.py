"""Training scheme B (Cao et al., 2018): a cross-contrast registration network supervised by
*intra*-contrast similarity on pre-aligned pairs.

Notation of the paper, with contrasts A and B: the fixed image ``I_F`` (contrast A) has a partner ``I_Fp``
of contrast B on the same grid (pre-aligned); the moving image ``I_M`` (contrast B) has a partner ``I_Mp``
of contrast A. The network sees only ``(I_F, I_M)`` and predicts ``φ`` (fixed → moving); the loss compares
each warped image with the fixed-side image of *its own* contrast:

    L = ½ (1 − NCC(I_F, T(φ, I_Mp))) + ½ (1 − NCC(I_Fp, T(φ, I_M))) + λ1 ‖∇²φ‖² + λ2 ‖φ‖²

with λ1 = 0.5 and λ2 = 0.01 (the paper's values), ``‖∇²φ‖²`` the bending energy and ``‖φ‖²`` the mean
squared displacement (model voxels). The paper computes NCC over 68³ training patches; here it is the
local NCC in ``(2r+1)³`` windows (``radius``; 0 = one NCC over the whole volume), masked to the brain.

Pairs (:class:`PairedSampler`): the misalignment is a RegNet synthetic field (as in scheme A, so the true
field is known and reported, never used by the loss). Partners come from, per volume:

- tissue probability maps on the image's grid (e.g. the ICBM 2009a GM/WM maps with the ICBM T1): random
  contrasts drawn by :func:`RegistrationSuiteLib.methods.partial_prereg.synthetic_contrast` (SynthSeg-style
  domain randomisation), so the real image and a synthetic one, or two synthetic ones, form a pair;
- a real partner image of another contrast (``partner`` with its rigid ``partner_transform``, ITK,
  mapping the image's points to the partner's), resampled onto the image's grid: used with probability
  ``REAL_PARTNER_P`` when tissue maps exist too, always otherwise; the loss weight is restricted to the
  partner's field of view;
- otherwise a random intensity mapping of the image itself (:func:`.volumes.random_intensity_map`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from .volumes import OUTSIDE_WEIGHT, TrainVolume, VolumeSampler, VolumeSamplerConfig, crop_box

LAMBDA_BENDING = 0.5
LAMBDA_L2 = 0.01
REAL_PARTNER_P = 0.5  # probability of the real partner for volumes that also have tissue maps


def paired_loss(field, fixed, moving, fixed_partner, moving_partner, weight=None, *, radius: int = 3,
                lambda_bending: float = LAMBDA_BENDING, lambda_l2: float = LAMBDA_L2):
    """Cao et al.'s loss (see the module docstring) for a field ``(N, d, *S)`` in voxels of the images' grid.

    Args:
        field: fixed → moving displacement (``warp_image`` convention).
        fixed, moving: ``I_F`` (contrast A) and ``I_M`` (contrast B), ``(N, 1, *S)``.
        fixed_partner, moving_partner: ``I_Fp`` (B, aligned with ``I_F``) and ``I_Mp`` (A, aligned with ``I_M``).
        weight: optional ``(N, 1, *S)`` mask in fixed space.
        radius: local NCC window radius (voxels); 0 = global NCC.

    Returns:
        ``(total, parts)`` with ``parts`` = dict of the four terms (detached floats).
    """
    from ...deform import bending_energy, lncc_loss, ncc_loss, warp_image

    def sim(a, b):
        return ncc_loss(a, b, weight) if radius <= 0 else lncc_loss(a, b, weight, radius=radius)

    same_a = sim(fixed, warp_image(moving_partner, field))
    same_b = sim(fixed_partner, warp_image(moving, field))
    bend = bending_energy(field)
    l2 = field.pow(2).sum(1).mean()
    total = 0.5 * same_a + 0.5 * same_b + lambda_bending * bend + lambda_l2 * l2
    parts = {"ncc_a": float(same_a.detach()), "ncc_b": float(same_b.detach()), "bending": float(bend.detach()),
             "l2": float(l2.detach())}
    return total, parts


@dataclass
class PairedVolume(TrainVolume):
    """A training volume with optional tissue probability maps ``(K, *S)`` on its grid (class 0 = background)."""

    tissue: Optional[np.ndarray] = None
    partner: Optional[np.ndarray] = None  # real partner contrast on the same grid, scaled to [0, 1]
    partner_fov: Optional[np.ndarray] = None  # where the partner has data (bool)


def load_paired_volume(path, fine_spacing_mm: float, *, tissue_maps=None, mask=None, split="train", licence="",
                       partner=None, partner_transform=None):
    """:func:`.volumes.load_volume` plus tissue maps (paths, same physical space) resampled onto its grid and
    stacked with a CSF class (inside the filled brain mask, not GM or WM) and a background class, and
    optionally a real ``partner`` image of another contrast resampled onto the same grid through
    ``partner_transform`` (ITK transform file mapping points of this image to points of the partner, so
    ``Resample(partner, image_grid, transform)``; identity when not given)."""
    from pathlib import Path

    import SimpleITK as sitk

    from ...errors import InputError
    from ...io import read_image
    from ..partial_prereg.synth import tissue_stack
    from .register import _smooth_for
    from .volumes import load_volume, robust_unit

    if partner is not None and not Path(partner).is_file():
        raise InputError(f"training partner image not found: {partner}")
    if partner_transform is not None and partner is None:
        raise InputError(f"partner_transform {partner_transform} given without a partner image")
    vol = load_volume(path, fine_spacing_mm, mask=mask, split=split, licence=licence)
    img = read_image(path, "training image").image
    size = [max(2, int(round((n - 1) * s / fine_spacing_mm)) + 1) for n, s in zip(img.GetSize(), img.GetSpacing())]
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetOrigin(img.GetOrigin())
    ref.SetDirection(img.GetDirection())
    ref.SetSpacing([fine_spacing_mm] * 3)
    partner_arr = partner_fov = None
    if partner is not None:
        from ...io.transforms import read_transform

        tx = read_transform(partner_transform) if partner_transform is not None else sitk.Transform()
        pim = read_image(partner, "training partner image").image
        if pim.GetDimension() != 3 or pim.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"training partner image {partner}: expected a 3D scalar image")
        pim = sitk.Cast(pim, sitk.sitkFloat32)
        res = sitk.Resample(_smooth_for(pim, fine_spacing_mm), ref, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        ones = sitk.Image(pim.GetSize(), sitk.sitkFloat32) + 1.0
        ones.CopyInformation(pim)
        partner_fov = sitk.GetArrayFromImage(sitk.Resample(ones, ref, tx, sitk.sitkLinear, 0.0,
                                                           sitk.sitkFloat32)) > 0.99
        if partner_fov.sum() < 1000:
            raise InputError(f"training partner image {partner}: fewer than 1000 voxels overlap {path} "
                             f"through {partner_transform}")
        partner_arr = robust_unit(np.maximum(sitk.GetArrayFromImage(res), 0.0)).astype(np.float32)
    tissue = None
    if tissue_maps:
        maps = []
        for p in tissue_maps:
            m = sitk.Cast(read_image(p, "tissue map").image, sitk.sitkFloat32)
            a = sitk.GetArrayFromImage(sitk.Resample(m, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
            maps.append(a / max(float(a.max()), 1e-6))
        brain = vol.brain if vol.brain is not None else vol.foreground
        csf = np.clip(brain.astype(np.float32) - sum(maps), 0.0, 1.0)
        tissue = tissue_stack(*maps, csf)
    return PairedVolume(vol.name, vol.array, vol.foreground, vol.brain, vol.split, vol.licence, tissue,
                        partner_arr, partner_fov)


class PairedSampler(VolumeSampler):
    """``(rng, step) -> (inputs (B, 2, *S), targets (B, 8, *S))``: inputs ``(I_F, I_M)``; target channels
    ``I_F, I_M, I_Fp, I_Mp``, the loss weight and the true field (3 channels, model voxels; for reporting)."""

    def sample(self, rng: np.random.Generator, volume=None):
        import torch
        from scipy.ndimage import binary_dilation, zoom

        from ...deform import resize_field, resize_image, warp_image
        from ..partial_prereg.synth import synthetic_contrast
        from .synthetic import edge_map, synthetic_field
        from .volumes import random_intensity_map

        cfg = self.config
        vol = volume or self.volumes[int(rng.integers(len(self.volumes)))]
        region = vol.brain if vol.brain is not None else vol.foreground
        centre = np.argwhere(region).mean(0) + rng.uniform(-1, 1, 3) * cfg.jitter_mm / cfg.fine_spacing_mm
        tissue = getattr(vol, "tissue", None)
        partner = getattr(vol, "partner", None)
        use_partner = partner is not None and (tissue is None or rng.random() < REAL_PARTNER_P)
        crops = crop_box([vol.array, vol.foreground, vol.brain], centre, self.fine_shape)
        arr, fg, brain = crops
        strip = brain is not None and rng.random() < cfg.skull_strip
        if strip:
            arr = arr * brain
        region = brain if brain is not None else fg
        images = [arr]
        if use_partner:
            p_arr, p_fov = crop_box([partner, vol.partner_fov], centre, self.fine_shape)
            images.append(p_arr * brain if strip else p_arr)
            region = region & p_fov
        elif tissue is not None:
            stack = np.stack(crop_box(list(tissue), centre, self.fine_shape))
            if strip:
                stack = stack * brain[None]
                stack[0] += 1.0 - stack.sum(0)
            images.append(synthetic_contrast(stack, rng)[0] * (brain if strip else 1.0))
            if rng.random() < 0.5:
                images = [images[1], synthetic_contrast(stack, rng)[0] * (brain if strip else 1.0)]
        else:
            t = torch.from_numpy(np.ascontiguousarray(arr, np.float32))
            images.append(random_intensity_map(t, rng).numpy())
        if rng.random() < 0.5:
            images = images[::-1]
        a, b = (torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None] for x in images)
        ratio = [c / f for c, f in zip(self.shape, self.fine_shape)]
        mask_c = zoom(region.astype(np.float32), ratio, order=1) > 0.5
        edges_c = edge_map(zoom(arr.astype(np.float32), ratio, order=1), mask_c)
        sigma, points, theta = cfg.classes[int(rng.integers(len(cfg.classes)))]
        u = torch.from_numpy(synthetic_field(self.shape, cfg.spacing_mm, sigma, points, theta, rng, mask=mask_c,
                                             edges=edges_c, unique=True) / cfg.spacing_mm)[None]
        u_fine = resize_field(u, self.fine_shape)
        fixed_a, fixed_b = warp_image(a, u_fine), warp_image(b, u_fine)
        # I_F = A warped, I_Fp = B warped (its partner); I_M = B, I_Mp = A
        ims = [self._augment(x, rng) for x in (fixed_a, b, fixed_b, a)]
        ims = [resize_image(x, self.shape)[0] for x in ims]
        weight = np.where(binary_dilation(mask_c, iterations=1), 1.0, OUTSIDE_WEIGHT).astype(np.float32)
        x = torch.cat(ims[:2], 0)
        target = torch.cat([*ims, torch.from_numpy(weight)[None], u[0]], 0)
        return x, target

    def _mirror(self, x, target, flips):
        return mirror_paired(x, target, flips)

    def _augment(self, x, rng, contrast=None):
        return super()._augment(x, rng, contrast=0.0)  # partners already differ in contrast


def mirror_paired(x, target, flips):
    """:func:`.volumes.mirror` for paired samples (the field is target channels 5-7)."""
    import torch

    dims = [1 + a for a in range(3) if flips[a]]
    if not dims:
        return x, target
    x, target = torch.flip(x, dims), torch.flip(target, dims).clone()
    for a in range(3):
        if flips[a]:
            target[5 + 2 - a] = -target[5 + 2 - a]
    return x, target


def paired_training_loss(radius: int = 3, lambda_bending: float = LAMBDA_BENDING, lambda_l2: float = LAMBDA_L2):
    """``(prediction, target) -> loss`` for :func:`RegistrationSuiteLib.models.training.train` with
    :class:`PairedSampler` targets."""

    def loss(pred, target):
        t = target
        total, _ = paired_loss(pred, t[:, 0:1], t[:, 1:2], t[:, 2:3], t[:, 3:4], t[:, 4:5], radius=radius,
                               lambda_bending=lambda_bending, lambda_l2=lambda_l2)
        return total

    return loss


def evaluate_paired(net, volumes: List[PairedVolume], config: VolumeSamplerConfig, *, seed: int, n: int = 6) -> dict:
    """Mean field error (mm, inside the brain) of the network vs identity on ``n`` fresh paired samples
    (cross-contrast by construction) of the ``val`` volumes (all volumes when none is marked ``val``)."""
    import torch

    rng = np.random.default_rng(seed)
    val = [v for v in volumes if v.split == "val"]
    sampler = PairedSampler(val or volumes, config)
    err_net, err_id = [], []
    with torch.no_grad():
        for _ in range(n):
            x, t = sampler.sample(rng)
            inside, u = t[4] >= 1.0, t[5:8]
            pred = net(x[None])[0]
            err_net.append(float((pred - u).norm(dim=0)[inside].mean()) * config.spacing_mm)
            err_id.append(float(u.norm(dim=0)[inside].mean()) * config.spacing_mm)
    return {"network": float(np.mean(err_net)), "identity": float(np.mean(err_id)), "samples": n,
            "images": "val" if val else "train"}

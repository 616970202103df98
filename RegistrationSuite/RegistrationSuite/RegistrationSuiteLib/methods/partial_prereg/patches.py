"""Patches at template scale: intensity normalisation, the foreground rule, sampling (paper §2.1, §3).

Conventions: a patch is a ``(P, P, P)`` float32 block (P = 16) in array order (z, y, x) whose axes are the
template canvas's index axes, with the template's voxel size. Its *centre* is the continuous voxel position
``corner + (P − 1) / 2``. Network input intensities lie in [−0.5, 0.5] (the paper's range).

Foreground rule (documented choice): after normalisation a voxel is *foreground* when it lies above
``foreground_level`` of the normalised range (default 10 %), and a patch is used when at least
``min_foreground_fraction`` of its voxels are foreground (default 0.6: the paper's "discard patches with more
than 40 % background"; the reference code inverts this test, we follow the paper). At inference a patch must
also lie entirely inside the moving image's domain, so crop borders never enter a patch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Tuple

import numpy as np
import SimpleITK as sitk

from ...errors import InputError
from .template import Template

PATCH_SIZE = 16


class TooSmallForPatches(InputError):
    """The moving image offers too few usable patches at template scale (too small, or mostly background).

    Not an input error for :func:`~.register.register_partial_prereg`, which then searches without the network;
    an :class:`InputError` for callers that need patches (training, evaluation).
    """


@dataclass(frozen=True)
class IntensityConfig:
    """Mapping of raw intensities to the network's input range [−0.5, 0.5].

    Attributes:
        mode: ``"window"`` (CT: clip to ``window`` then scale; paper: [−500, 3000] HU) or ``"percentile"``
            (MR: robust percentiles of the whole moving image; the lower bound is 0 for non-negative images,
            since MR magnitude background is 0, else the ``percentiles[0]`` percentile).
        window: the CT window (HU) of ``"window"`` mode.
        percentiles: lower/upper percentiles of ``"percentile"`` mode.
        foreground_level: a voxel is foreground above ``−0.5 + foreground_level`` after normalisation.
    """

    mode: str = "percentile"
    window: Tuple[float, float] = (-500.0, 3000.0)
    percentiles: Tuple[float, float] = (0.5, 99.5)
    foreground_level: float = 0.1

    def __post_init__(self):
        if self.mode not in ("window", "percentile"):
            raise InputError(f"intensity mode: expected 'window' or 'percentile', got {self.mode!r}")
        if not self.window[0] < self.window[1]:
            raise InputError(f"intensity window: expected (low, high) with low < high, got {self.window}")
        if not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise InputError(f"intensity percentiles: expected 0 <= low < high <= 100, got {self.percentiles}")
        if not 0 <= self.foreground_level < 1:
            raise InputError(f"foreground_level: expected a fraction in [0, 1), got {self.foreground_level}")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "IntensityConfig":
        known = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def value_range(self, values: np.ndarray) -> Tuple[float, float]:
        """``(low, high)`` raw intensities mapped to −0.5 and +0.5 for an image with these voxel values."""
        if self.mode == "window":
            return float(self.window[0]), float(self.window[1])
        values = np.asarray(values, dtype=np.float32).ravel()
        lo_p, hi_p = np.percentile(values, self.percentiles)
        lo = 0.0 if float(values.min()) >= 0 else float(lo_p)
        hi = float(hi_p)
        if not hi > lo:  # nearly constant (e.g. mostly background): fall back to the full range
            hi = float(values.max()) if float(values.max()) > lo else lo + 1.0
        return lo, hi


def normalize(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip to ``[low, high]`` and scale to [−0.5, 0.5] (paper §3: (x − low)/(high − low) − 0.5)."""
    out = (np.asarray(array, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(out, 0.0, 1.0) - np.float32(0.5)


@dataclass
class PatchSet:
    """Patches drawn from a moving image.

    Attributes:
        patches: ``(n, P, P, P)`` normalised patches (array order z, y, x; template axes and voxel size).
        centers_mm: ``(n, 3)`` patch centres in the moving image's physical space (LPS mm).
        foreground_fraction: ``(n,)`` fraction of foreground voxels per patch.
        num_candidates: how many patch positions passed the foreground and domain tests.
        value_range: raw ``(low, high)`` used for normalisation.
    """

    patches: np.ndarray
    centers_mm: np.ndarray
    foreground_fraction: np.ndarray
    num_candidates: int
    value_range: Tuple[float, float]


def template_scale_grid(image: sitk.Image, template: Template) -> sitk.Image:
    """An empty grid with the template's voxel size and axes covering ``image``'s physical bounding box."""
    direction = template.direction
    spacing = template.spacing_mm
    size = np.asarray(image.GetSize(), dtype=float)
    corners = np.array(np.meshgrid(*[[0.0, s - 1.0] for s in size], indexing="ij")).reshape(3, -1).T
    phys = np.array([image.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])
    u = phys @ direction  # coordinates along the template axes
    lo, hi = u.min(axis=0), u.max(axis=0)
    n = np.floor((hi - lo) / spacing).astype(int) + 1
    grid = sitk.Image([int(v) for v in np.maximum(n, 1)], sitk.sitkFloat32)
    grid.SetSpacing([spacing] * 3)
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin((direction @ lo).tolist())
    return grid


def resample_to_template_scale(image: sitk.Image, template: Template) -> Tuple[np.ndarray, np.ndarray, sitk.Image]:
    """``image`` on :func:`template_scale_grid` (anti-aliased, linear).

    Returns:
        ``(values, valid, grid)``: raw intensities and the mask of grid voxels inside the image's domain,
        both in array order (z, y, x), and the grid.
    """
    grid = template_scale_grid(image, template)
    src = sitk.Cast(image, sitk.sitkFloat32)
    # Anti-aliasing like the canvas (template.build_template): sigma = half the template voxel.
    sigma = 0.5 * template.spacing_mm
    if min(image.GetSpacing()) < template.spacing_mm:
        src = sitk.SmoothingRecursiveGaussian(src, sigma)
    values = sitk.GetArrayFromImage(sitk.Resample(src, grid, sitk.Transform(), sitk.sitkLinear, 0.0))
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    valid = sitk.GetArrayFromImage(sitk.Resample(ones, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    return values, valid, grid


def box_sums(mask: np.ndarray, size: int) -> np.ndarray:
    """Number of true voxels in every ``size³`` box, indexed by the box's first corner (summed-area table)."""
    s = np.pad(np.asarray(mask, dtype=np.int32), ((1, 0), (1, 0), (1, 0))).cumsum(0).cumsum(1).cumsum(2)
    n = size
    return (s[n:, n:, n:] - s[:-n, n:, n:] - s[n:, :-n, n:] - s[n:, n:, :-n]
            + s[:-n, :-n, n:] + s[:-n, n:, :-n] + s[n:, :-n, :-n] - s[:-n, :-n, :-n])


def sample_patches(
    moving: sitk.Image,
    template: Template,
    intensity: IntensityConfig,
    *,
    num_patches: int,
    min_foreground_fraction: float,
    min_patches: int,
    rng: np.random.Generator,
    patch_size: int = PATCH_SIZE,
) -> PatchSet:
    """Draw up to ``num_patches`` distinct patch positions (without replacement) that lie inside the moving
    image and pass the foreground rule.

    Raises:
        TooSmallForPatches: the image is smaller than a patch at template scale, or fewer than ``min_patches``
            positions pass the foreground rule.
    """
    need = patch_size * template.spacing_mm
    extent = np.asarray(moving.GetSize()) * np.asarray(moving.GetSpacing())
    if np.any(extent < need):
        raise TooSmallForPatches(
            f"moving: image too small for {patch_size}³ patches at template scale: needs at least {need:.1f} mm "
            f"along every axis, got {np.round(extent, 1).tolist()} mm"
        )
    values, valid, grid = resample_to_template_scale(moving, template)
    low, high = intensity.value_range(sitk.GetArrayViewFromImage(moving))
    norm = normalize(values, low, high)
    fg = (norm > -0.5 + intensity.foreground_level) & valid
    if min(norm.shape) < patch_size:
        raise TooSmallForPatches(f"moving: image too small for {patch_size}³ patches at template scale "
                         f"({template.spacing_mm:.2f} mm voxels): resampled size {norm.shape[::-1]}")
    volume = patch_size**3
    inside = box_sums(valid, patch_size) == volume
    if not inside.any():
        raise TooSmallForPatches(f"moving: no {patch_size}³ patch ({need:.1f} mm) fits inside the image domain")
    frac = box_sums(fg, patch_size) / volume
    ok = np.argwhere(inside & (frac >= min_foreground_fraction))
    if len(ok) < min_patches:
        raise TooSmallForPatches(
            f"moving: too few foreground patches: {len(ok)} patch positions have >= "
            f"{min_foreground_fraction:.0%} foreground, need at least {min_patches} (is the image mostly background?)"
        )
    pick = ok[np.sort(rng.choice(len(ok), size=min(num_patches, len(ok)), replace=False))]
    patches = np.stack([norm[z:z + patch_size, y:y + patch_size, x:x + patch_size] for z, y, x in pick])
    centre_index = pick[:, ::-1] + (patch_size - 1) / 2.0  # ITK order (x, y, z)
    m = np.asarray(grid.GetDirection()).reshape(3, 3) * grid.GetSpacing()[0]
    centers = centre_index @ m.T + np.asarray(grid.GetOrigin())
    return PatchSet(patches.astype(np.float32), centers, frac[tuple(pick.T)], int(len(ok)), (low, high))


def rotated_patch_grid(centers, rotations, shape, patch_size: int = PATCH_SIZE):
    """``grid_sample`` grid sampling patches centred at ``centers`` (continuous voxel index, ITK order x, y, z)
    of a volume of array ``shape`` (D, H, W), with axes rotated by ``rotations`` (index frame).

    Args:
        centers: ``(n, 3)`` torch tensor; rotations: ``(n, 3, 3)`` torch tensor (identity = axis-aligned).

    Returns:
        ``(n, P, P, P, 3)`` normalised coordinates for ``torch.nn.functional.grid_sample(align_corners=True)``.
    """
    import torch

    half = (patch_size - 1) / 2.0
    r = torch.arange(patch_size, dtype=centers.dtype, device=centers.device) - half
    oz, oy, ox = torch.meshgrid(r, r, r, indexing="ij")
    offsets = torch.stack([ox, oy, oz], dim=-1).reshape(-1, 3)  # (P³, 3) in (x, y, z)
    points = centers[:, None, :] + offsets[None] @ rotations.transpose(1, 2)
    size = torch.tensor([shape[2], shape[1], shape[0]], dtype=centers.dtype, device=centers.device)
    normalised = 2.0 * points / (size - 1) - 1.0
    return normalised.reshape(len(centers), patch_size, patch_size, patch_size, 3)

"""Preprocessing of slides: working resolution, optical density, tissue mask, stain-robust channel, pyramid.

Frames: a :class:`Plane` is a 2D grid in the slide's physical frame (see :mod:`.slides`): pixel ``(i, j)``
(column ``i`` = x, row ``j`` = y) has its centre at ``origin + (i, j) * spacing``; arrays are ``(C, H, W)``.

Why optical density: stains absorb light, so the optical density OD = −log(I / I₀) is proportional to the
amount of dye (Beer–Lambert) and is 0 on the empty glass for every stain. Its per-pixel sum over RGB shows
tissue density in H&E and in immunohistochemistry alike; rank-normalising it inside the tissue removes the
stain's overall strength, so a plain correlation can compare an H&E slide with a DAB/haematoxylin one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ...errors import InputError
from .slides import Slide

# Fraction of the working pixels that must be tissue; below it the slide is treated as empty.
MIN_TISSUE_FRACTION = 0.005
# Summed optical density (units of log 256, relative to the glass) above which a pixel is tissue.
TISSUE_OD = 0.05


@dataclass
class Plane:
    """A 2D image on a physical grid.

    Attributes:
        data: ``(C, H, W)`` float32 tensor.
        origin: ``(2,)`` physical (x, y) of pixel (0, 0)'s centre.
        spacing: ``(2,)`` physical (sx, sy) of one pixel.
    """

    data: torch.Tensor
    origin: np.ndarray
    spacing: np.ndarray

    @property
    def shape(self) -> tuple:
        """``(H, W)``."""
        return int(self.data.shape[-2]), int(self.data.shape[-1])

    @property
    def extent(self) -> np.ndarray:
        """Physical ``(width, height)`` covered by the pixels (edge to edge)."""
        h, w = self.shape
        return np.array([w, h], dtype=float) * self.spacing

    def points(self) -> torch.Tensor:
        """Physical (x, y) of every pixel centre, ``(H, W, 2)`` float32."""
        h, w = self.shape
        ys = torch.arange(h, dtype=torch.float64) * self.spacing[1] + self.origin[1]
        xs = torch.arange(w, dtype=torch.float64) * self.spacing[0] + self.origin[0]
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([gx, gy], -1).to(torch.float32).to(self.data.device)

    def resized(self, size_hw) -> "Plane":
        """Resampled (area-weighted when shrinking) to ``size_hw = (H, W)`` covering the same extent."""
        h, w = int(size_hw[0]), int(size_hw[1])
        data = F.interpolate(self.data[None], size=(h, w), mode="bilinear", align_corners=False,
                             antialias=(h < self.shape[0] or w < self.shape[1]))[0]
        spacing = self.extent / np.array([w, h], dtype=float)
        origin = self.origin - self.spacing / 2.0 + spacing / 2.0
        return Plane(data, origin, spacing)

    def with_data(self, data: torch.Tensor) -> "Plane":
        return Plane(data, self.origin, self.spacing)


def slide_plane(slide: Slide, spacing: float, device=None) -> Plane:
    """The slide's RGB (or grey) in [0, 1] resampled to about ``spacing`` physical units per pixel.

    Large levels are first reduced by integer block averaging in NumPy (chunked; bounded memory), then resized.
    """
    arr = slide.pixels
    step = np.asarray(slide.spacing, dtype=float)
    k = int(max(1, np.floor(spacing / step.max())))
    if k > 1:
        arr = block_mean(arr, k)
        step = step * k
    data = torch.from_numpy(np.ascontiguousarray(_unit(arr).transpose(2, 0, 1))).to(device)
    plane = Plane(data, slide.origin + (step - slide.spacing) / 2.0, step)
    size = np.maximum(np.round(plane.extent / spacing), 8).astype(int)
    return plane.resized((size[1], size[0]))


def block_mean(arr: np.ndarray, k: int, rows_per_chunk: int = 1024) -> np.ndarray:
    """Mean over ``k × k`` blocks of an ``(H, W, C)`` array (incomplete edge blocks dropped), as float32."""
    h, w, c = (arr.shape[0] // k) * k, (arr.shape[1] // k) * k, arr.shape[2]
    out = np.empty((h // k, w // k, c), dtype=np.float32)
    step = max(k, (rows_per_chunk // k) * k)
    for r in range(0, h, step):
        block = arr[r:min(r + step, h), :w].astype(np.float32)
        out[r // k:(r + block.shape[0]) // k] = block.reshape(block.shape[0] // k, k, w // k, k, c).mean(axis=(1, 3))
    return out


def _unit(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind in "ui":
        return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    arr = arr.astype(np.float32)
    return arr / 255.0 if arr.max() > 1.5 else arr  # block means of 8-bit data


def optical_density(rgb: torch.Tensor) -> torch.Tensor:
    """Optical density ``(C, H, W)`` ≥ 0 of intensities in [0, 1], in units of log(256) (1 = full absorption)."""
    return -torch.log(rgb.clamp(min=1.0 / 256.0)) / float(np.log(256.0))


def dark_background(rgb: torch.Tensor) -> bool:
    """True when the image's outer frame (2 % of each side, at least 2 pixels) is dark (median luminance
    < 0.25) and darker than half the image's bright end (98th percentile): bright tissue on a black background.
    Brightfield slides have bright glass at their border; brightfield tissue dense enough to reach every border
    is still far above 0.25."""
    grey = rgb.mean(0)
    h, w = grey.shape
    k = max(2, int(round(0.02 * min(h, w))))
    frame = torch.cat([grey[:k].reshape(-1), grey[-k:].reshape(-1), grey[:, :k].reshape(-1), grey[:, -k:].reshape(-1)])
    flat = grey.reshape(-1)
    bright = torch.quantile(flat[:: max(1, flat.numel() // 200_000)], 0.98)
    edge = torch.median(frame)
    return bool(edge < 0.25 and edge < 0.5 * bright)


def glass_normalised(rgb: torch.Tensor) -> torch.Tensor:
    """``rgb`` divided by the glass (background) colour, estimated as the 98th percentile per channel, so that
    empty glass has optical density 0 whatever the scanner's white balance.

    Dark-background images (dark-field or fluorescence-like: bright tissue on black, see
    :func:`dark_background`) are inverted first, so that tissue again absorbs relative to the background."""
    if dark_background(rgb):
        rgb = 1.0 - rgb
    flat = rgb.reshape(rgb.shape[0], -1)
    stride = max(1, flat.shape[1] // 200_000)
    white = torch.quantile(flat[:, ::stride], 0.98, dim=1).clamp(min=0.05)
    return (rgb / white[:, None, None]).clamp(max=1.0)


def tissue_mask(rgb: torch.Tensor, name: str = "image", threshold: float = TISSUE_OD) -> torch.Tensor:
    """Boolean ``(H, W)`` tissue mask: summed optical density relative to the glass above ``threshold`` (after
    a 1-pixel blur against scanner noise), then closing, hole filling and removal of specks (< 0.2 % of the
    largest component). A fixed low threshold, not Otsu's: pale immunohistochemistry counterstains are tissue
    too, and Otsu then keeps only the strongly stained part.

    Raises:
        InputError: no tissue (fewer than 0.5 % of the pixels).
    """
    od = gaussian_blur(optical_density(glass_normalised(rgb)), 1.0).sum(0).cpu().numpy()
    mask = od > threshold
    if mask.mean() < MIN_TISSUE_FRACTION:
        raise InputError(f"{name}: no tissue found ({100 * mask.mean():.2f} % of the slide differs from glass)")
    mask = ndimage.binary_closing(mask, iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n:
        sizes = ndimage.sum_labels(mask, labels, np.arange(1, n + 1))
        mask = np.isin(labels, 1 + np.nonzero(sizes >= 0.002 * sizes.max())[0])
    return torch.from_numpy(mask).to(rgb.device)


def stain_channel(rgb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Stain-robust single channel ``(1, H, W)`` in [0, 1]: summed optical density, rank-normalised inside the
    tissue (its empirical CDF there), 0 on glass. Monotone in dye amount, independent of the stain's strength."""
    od = optical_density(glass_normalised(rgb)).sum(0)
    inside = od[mask]
    out = torch.zeros_like(od)
    if inside.numel():
        order = torch.argsort(inside)
        ranks = torch.empty_like(inside)
        ranks[order] = torch.arange(1, inside.numel() + 1, dtype=inside.dtype, device=inside.device)
        out[mask] = ranks / inside.numel()
    return out[None]


def gradient_magnitude(channel: torch.Tensor, sigma_px: float = 1.0) -> torch.Tensor:
    """``(1, H, W)`` magnitude of the gradient of a blurred channel, scaled so its 99th percentile is 1.

    Edges of glands, vessels and tissue borders appear in every stain, and the magnitude does not care
    whether a structure is darker or lighter than its surroundings (stains can invert contrast: the kidney
    cortex is dark in H&E and pale in PanCytokeratin)."""
    smooth = gaussian_blur(channel, sigma_px)[0]
    gy, gx = torch.gradient(smooth)
    mag = torch.sqrt(gx * gx + gy * gy)
    flat = mag.reshape(-1)
    top = torch.quantile(flat[:: max(1, flat.numel() // 200_000)], 0.99).clamp(min=1e-6)
    return (mag / top).clamp(max=2.0)[None]


@dataclass
class Prepared:
    """One slide ready for registration (all planes on one grid at the working resolution).

    Attributes:
        rgb: the colour (or grey) plane (for warped outputs).
        mask: ``(1, H, W)`` 0/1 tissue mask.
        density: ``(1, H, W)`` rank-normalised optical density (:func:`stain_channel`).
        features: ``(2, H, W)`` what the affine and non-rigid stages compare: the blurred tissue mask (outline)
            and the gradient magnitude of the optical density (inner structure, contrast-sign invariant).
        pyramid: ``features`` at the working resolution and coarser levels (finest first, factor 2).
    """

    rgb: Plane
    mask: Plane
    density: Plane
    features: Plane
    pyramid: List[Plane]


def prepare(slide: Slide, spacing: float, levels: int, name: str, device=None) -> Prepared:
    """Resample ``slide`` to ``spacing``; compute its tissue mask, stain channel and features; build ``levels``
    pyramid levels of the features (each half the previous size, at least 16 pixels a side)."""
    rgb = slide_plane(slide, spacing, device)
    mask = tissue_mask(rgb.data, name)
    od = optical_density(glass_normalised(rgb.data)).sum(0, keepdim=True)
    density = stain_channel(rgb.data, mask)
    outline = gaussian_blur(mask[None].float(), 2.0)
    features = rgb.with_data(torch.cat([outline, gradient_magnitude(od, 1.0)]))
    pyramid = [features]
    for _ in range(levels - 1):
        h, w = pyramid[-1].shape
        if min(h, w) < 32:
            break
        pyramid.append(pyramid[-1].resized(((h + 1) // 2, (w + 1) // 2)))
    return Prepared(rgb, rgb.with_data(mask[None].float()), rgb.with_data(density), features, pyramid)


def gaussian_blur(image: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of a ``(C, H, W)`` tensor (sigma in pixels, reflect padding)."""
    radius = max(1, int(np.ceil(3 * sigma_px)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    k = torch.exp(-0.5 * (x / sigma_px) ** 2)
    k = k / k.sum()
    c = image.shape[0]
    out = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out[0]


def working_spacing(fixed: Slide, moving: Slide, working_size: int) -> float:
    """Physical pixel size of the finest working level: the fixed slide's longest side in ``working_size``
    pixels, never finer than the finer of the two levels read.

    Raises:
        InputError: the two slides differ wildly in size (> 4×) and neither carries a pixel size (their
            physical scales cannot be related).
    """
    ext_f = np.asarray(fixed.size) * fixed.spacing
    ext_m = np.asarray(moving.size) * moving.spacing
    if fixed.unit != moving.unit:
        raise InputError(f"fixed, moving: one slide has a pixel size and the other not ({fixed.unit} vs "
                         f"{moving.unit}); give both or neither")
    if fixed.unit == "px":
        ratio = float(np.hypot(*ext_f) / np.hypot(*ext_m))
        if not 0.25 <= ratio <= 4.0:
            raise InputError(f"fixed, moving: sizes differ by a factor {max(ratio, 1 / ratio):.1f} and the files carry "
                             "no pixel size; read matching levels (--level) or use files with pixel sizes")
    native = float(min(fixed.spacing.min(), moving.spacing.min()))
    return max(float(ext_f.max()) / working_size, native)

"""Synthetic MR contrasts from tissue probability maps (groundwork for training one TSPM model for any contrast).

Domain randomisation in the spirit of SynthSeg / SynthMorph (Billot et al. 2023, Hoffmann et al. 2022): a
training volume is drawn from tissue probability maps (e.g. the ICBM 2009a grey matter, white matter and CSF
maps of ``../shared/data/brain/templates``) rather than from a real scan, so the network sees T1-, T2-,
FLAIR- and PD-like contrasts (and contrasts no scanner makes) with the anatomy of the maps:

1. a random mean intensity per tissue class (uniform in [0, 1]; background near 0 unless ``background_lift``
   is drawn) mixed by the probabilities, with a little per-voxel variation per class;
2. a smooth multiplicative bias field (a coarse Gaussian random field, exponentiated);
3. Gaussian blur of random width (different resolutions);
4. optionally thick slices: averaging along one random axis over ``slab`` voxels, resampled back (partial
   volume of 2D acquisitions);
5. additive Gaussian noise.

:func:`synthetic_from_labels` does the same from a hard *label map* (SynthSeg's generative model): every label
of an atlas (e.g. the 116 regions of ``mni152_labels_1mm``, each split into CSF, grey and white matter) gets
its own random intensity. Labels are grouped into tissue classes (:data:`GROUPS`); a *contrast family* is
drawn first -- fully random (each label uniform in [0, 1], contrasts no scanner makes), or T1-, T2-, FLAIR-
or PD-like (the classes' means in the order of that weighting: bright CSF for T2, dark CSF over bright grey
matter for FLAIR) -- and each label's mean is its class mean plus a small random offset, so that regions of
one tissue differ a little as in real scans. Then the same bias field, blur, thick slices and noise.

Everything is in array space (voxels) and deterministic for a given ``numpy.random.Generator``. Used by
:func:`~.train.train_partial_prereg_model` (``synthetic_fraction`` with TISSUE.csv and/or LABELS.csv).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ...errors import InputError


@dataclass(frozen=True)
class SynthConfig:
    """Ranges of the random draws of :func:`synthetic_contrast` (voxel units for lengths).

    Attributes:
        class_std: per-class standard deviation of the voxel variation, as a fraction of the class mean range.
        background_lift: probability that the background gets a random (non-zero) intensity too.
        bias_strength: standard deviation of the log bias field.
        bias_scale: correlation length of the bias field (voxels).
        blur_sigma: (min, max) Gaussian blur sigma (voxels).
        thick_slice_probability: probability of the thick-slice step.
        slab: (min, max) thick-slice thickness (voxels).
        noise_std: (min, max) standard deviation of the additive noise (image range is [0, 1]).
    """

    class_std: float = 0.05
    background_lift: float = 0.1
    bias_strength: float = 0.3
    bias_scale: float = 24.0
    blur_sigma: Tuple[float, float] = (0.0, 1.5)
    thick_slice_probability: float = 0.3
    slab: Tuple[int, int] = (2, 6)
    noise_std: Tuple[float, float] = (0.0, 0.05)


#: tissue classes of :func:`synthetic_from_labels` (the ``groups`` array holds these indices per label)
GROUPS = ("background", "csf", "gm", "wm", "head_dark", "head_bright")
BACKGROUND, CSF, GM, WM, HEAD_DARK, HEAD_BRIGHT = range(len(GROUPS))

#: contrast families: (min, max) of each class's mean intensity, in the order of :data:`GROUPS` (background is
#: drawn separately). ``random`` draws every label independently in [0, 1].
FAMILIES = {
    "t1": ((0.0, 0.0), (0.02, 0.25), (0.35, 0.6), (0.65, 0.95), (0.0, 0.2), (0.6, 1.0)),
    "t2": ((0.0, 0.0), (0.75, 1.0), (0.4, 0.6), (0.15, 0.4), (0.0, 0.2), (0.3, 0.8)),
    "flair": ((0.0, 0.0), (0.0, 0.15), (0.5, 0.8), (0.3, 0.5), (0.0, 0.15), (0.4, 0.9)),
    "pd": ((0.0, 0.0), (0.6, 0.9), (0.55, 0.8), (0.4, 0.6), (0.0, 0.2), (0.5, 0.9)),
}
#: contrast families in the order of :attr:`LabelSynthConfig.family_weights`
FAMILY_NAMES = ("random", "t1", "t2", "flair", "pd")


@dataclass(frozen=True)
class LabelSynthConfig:
    """Draws of :func:`synthetic_from_labels` on top of :class:`SynthConfig`'s acquisition steps.

    Attributes:
        family_weights: relative probabilities of the contrast families ``random``, ``t1``, ``t2``, ``flair``,
            ``pd`` (in this order).
        label_std: standard deviation of each label's offset from its class mean (image range [0, 1]).
        acquisition: bias field, blur, thick slices, noise, per-voxel variation (:class:`SynthConfig`).
    """

    family_weights: Tuple[float, float, float, float, float] = (0.3, 0.15, 0.25, 0.2, 0.1)
    label_std: float = 0.05
    acquisition: SynthConfig = SynthConfig()

    def __post_init__(self):
        w = np.asarray(self.family_weights, float)
        if w.shape != (5,) or np.any(w < 0) or w.sum() <= 0:
            raise InputError(f"family_weights: expected five non-negative weights, got {self.family_weights}")
        if self.label_std < 0:
            raise InputError(f"label_std: expected >= 0, got {self.label_std}")


def tissue_stack(*maps: np.ndarray) -> np.ndarray:
    """Stack tissue probability maps ``(D, H, W)`` each into ``(K + 1, D, H, W)`` with the background
    (``1 - sum``, clipped at 0) as class 0; probabilities are renormalised to sum to 1 per voxel."""
    if not maps:
        raise InputError("maps: expected at least one tissue probability map")
    shape = np.shape(maps[0])
    if any(np.shape(m) != shape for m in maps) or len(shape) != 3:
        raise InputError(f"maps: expected 3D arrays of one shape, got {[np.shape(m) for m in maps]}")
    tissue = np.clip(np.stack([np.asarray(m, np.float32) for m in maps]), 0.0, None)
    background = np.clip(1.0 - tissue.sum(axis=0, keepdims=True), 0.0, None)
    stack = np.concatenate([background, tissue])
    return stack / np.maximum(stack.sum(axis=0, keepdims=True), 1e-6)


def synthetic_contrast(tissue: np.ndarray, rng: np.random.Generator, config: SynthConfig = SynthConfig()):
    """One random contrast of the anatomy ``tissue`` (``(K, D, H, W)`` probabilities, class 0 = background,
    e.g. from :func:`tissue_stack`).

    Returns:
        ``(image, info)``: float32 ``(D, H, W)`` scaled to [0, 1], and the drawn parameters (``means``,
        ``blur_sigma``, ``thick_slice_axis`` (or ``None``), ``slab``, ``noise_std``).
    """
    tissue = np.asarray(tissue, np.float32)
    if tissue.ndim != 4 or tissue.shape[0] < 2:
        raise InputError(f"tissue: expected (K >= 2, D, H, W) class probabilities, got shape {tissue.shape}")
    k = tissue.shape[0]
    means = rng.uniform(0.0, 1.0, k)
    if rng.random() >= config.background_lift:
        means[0] = rng.uniform(0.0, 0.05)
    image = np.zeros(tissue.shape[1:], np.float32)
    for c in range(k):
        variation = rng.normal(0.0, config.class_std, tissue.shape[1:]).astype(np.float32)
        image += tissue[c] * (np.float32(means[c]) + variation)
    image, info = _acquire(image, rng, config)
    return image, dict(info, means=means.tolist())


def synthetic_from_labels(labels: np.ndarray, groups, rng: np.random.Generator,
                          config: LabelSynthConfig = LabelSynthConfig(), family=None):
    """One random contrast of the label map ``labels`` (``(D, H, W)`` integers ``0 .. L-1``) whose label ``l``
    belongs to the tissue class ``groups[l]`` (indices of :data:`GROUPS`; label 0 is usually background).

    ``family``: one of :data:`FAMILY_NAMES` to force (default: drawn with ``config.family_weights``).

    Returns:
        ``(image, info)``: float32 ``(D, H, W)`` scaled to [0, 1], and the drawn parameters (``family``,
        ``means`` per label, then as :func:`synthetic_contrast`).
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups, int)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels: expected a 3D integer label map, got {labels.dtype} shape {labels.shape}")
    if groups.ndim != 1 or labels.min() < 0 or labels.max() >= len(groups):
        raise InputError(f"labels: expected labels 0..{len(groups) - 1} (one group per label), got "
                         f"{labels.min()}..{labels.max()}")
    if groups.min() < 0 or groups.max() >= len(GROUPS):
        raise InputError(f"groups: expected class indices 0..{len(GROUPS) - 1}, got {groups.min()}..{groups.max()}")
    if family is None:
        w = np.asarray(config.family_weights, float)
        family = FAMILY_NAMES[int(rng.choice(len(w), p=w / w.sum()))]
    elif family not in FAMILY_NAMES:
        raise InputError(f"family: expected one of {FAMILY_NAMES}, got {family!r}")
    acq = config.acquisition
    if family == "random":
        means = rng.uniform(0.0, 1.0, len(groups))
    else:
        ranges = np.asarray(FAMILIES[family], float)
        class_means = rng.uniform(ranges[:, 0], ranges[:, 1])
        means = class_means[groups] + rng.normal(0.0, config.label_std, len(groups))
    background = groups == BACKGROUND
    if rng.random() >= acq.background_lift:
        means[background] = rng.uniform(0.0, 0.05)
    means = np.clip(means, 0.0, 1.0).astype(np.float32)
    image = means[labels]
    if acq.class_std > 0:
        image = image + rng.normal(0.0, acq.class_std, labels.shape).astype(np.float32)
    image, info = _acquire(image.astype(np.float32), rng, acq)
    return image, dict(info, family=family, means=means.tolist())


def _acquire(image: np.ndarray, rng: np.random.Generator, config: SynthConfig):
    """Bias field, blur, thick slices, noise and scaling to [0, 1] (percentiles 0.5 / 99.5)."""
    from scipy import ndimage

    image = image * _bias_field(image.shape, rng, config)
    sigma = float(rng.uniform(*config.blur_sigma))
    if sigma > 0:
        image = ndimage.gaussian_filter(image, sigma)
    axis, slab = None, None
    if rng.random() < config.thick_slice_probability:
        axis, slab = int(rng.integers(3)), int(rng.integers(config.slab[0], config.slab[1] + 1))
        image = thick_slices(image, axis, slab)
    noise = float(rng.uniform(*config.noise_std))
    image = image + rng.normal(0.0, noise, image.shape).astype(np.float32)
    lo, hi = np.percentile(image, [0.5, 99.5])
    image = np.clip((image - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
    return image, {"blur_sigma": sigma, "thick_slice_axis": axis, "slab": slab, "noise_std": noise}


def _bias_field(shape, rng: np.random.Generator, config: SynthConfig) -> np.ndarray:
    """``exp`` of a smooth Gaussian random field with standard deviation ``bias_strength`` (mean 1 in log)."""
    from scipy import ndimage

    coarse = [max(2, int(np.ceil(s / config.bias_scale)) + 1) for s in shape]
    field = rng.normal(0.0, config.bias_strength, coarse)
    zoom = [s / c for s, c in zip(shape, coarse)]
    smooth = ndimage.zoom(field, zoom, order=3, mode="nearest")[: shape[0], : shape[1], : shape[2]]
    return np.exp(smooth).astype(np.float32)


def thick_slices(image: np.ndarray, axis: int, slab: int) -> np.ndarray:
    """Average ``image`` over blocks of ``slab`` voxels along ``axis`` and repeat each block's mean over it (a
    thick-slice acquisition at the original grid)."""
    if slab < 1:
        raise InputError(f"slab: expected an integer >= 1, got {slab}")
    n = image.shape[axis]
    moved = np.moveaxis(image, axis, 0)
    blocks = [moved[i:i + slab].mean(axis=0, keepdims=True).repeat(min(slab, n - i), axis=0)
              for i in range(0, n, slab)]
    return np.moveaxis(np.concatenate(blocks), 0, axis)

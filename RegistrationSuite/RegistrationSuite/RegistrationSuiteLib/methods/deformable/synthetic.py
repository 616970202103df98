"""RegNet's synthetic displacement fields (Sokooti et al., MICCAI 2017, §2.2) and training pairs.

A field is zero everywhere except at ``P`` random points, whose vectors are drawn uniformly in
``[−θ, θ]`` per component; it is smoothed with a Gaussian of standard deviation ``σ`` and rescaled per
component so the largest magnitude after smoothing equals the largest before (so ``θ`` stays the peak
displacement, as in the reference implementation). The paper's three classes (σ, P, θ) in mm at 1 mm
voxels: (35, 80, 8), (25, 100, 8), (20, 100, 8). The reference code places the points on edges inside the
body mask; ``mask`` does the same here (points drawn where the mask is true, preferably on strong
gradients). The "deformed moving" variant first deforms the source with a low-frequency field so the two
images of a pair are not the untouched scan.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

# (sigma_mm, points, theta_mm) of the paper's three classes (Sokooti et al. 2017, Table 1)
REGNET_CLASSES = ((35.0, 80, 8.0), (25.0, 100, 8.0), (20.0, 100, 8.0))
LOW_FREQUENCY_CLASS = (35.0, 40, 4.0)


def _points(shape, n, rng, mask, edges, unique=False):
    if mask is not None and mask.any():
        candidates = np.flatnonzero(mask & edges) if edges is not None and (mask & edges).sum() >= n else np.flatnonzero(mask)
        return np.unravel_index(rng.choice(candidates, size=n, replace=not (unique and len(candidates) >= n)), shape)
    if unique and int(np.prod(shape)) >= n:
        return np.unravel_index(rng.choice(int(np.prod(shape)), size=n, replace=False), shape)
    return tuple(rng.integers(0, s, size=n) for s in shape)


def synthetic_field(shape: Sequence[int], spacing_mm: float, sigma_mm: float, points: int, theta_mm: float,
                    rng: np.random.Generator, *, mask: Optional[np.ndarray] = None,
                    edges: Optional[np.ndarray] = None, unique: bool = False) -> np.ndarray:
    """One RegNet field on a grid of isotropic spacing ``spacing_mm``.

    Args:
        shape: spatial shape in array order (z, y, x) (or (y, x) in 2D).
        sigma_mm, points, theta_mm: the class (σ, P, θ).
        rng: NumPy generator (the only randomness).
        mask: optional boolean array: points are drawn inside it ...
        edges: ... preferably where this boolean array is true (e.g. strong gradients).
        unique: draw distinct voxels, so no two vectors add up in one voxel (on coarse grids, where the
            paper's 1 mm grid would have kept them apart, coinciding points would exceed ``θ``).

    Returns:
        ``(d, *shape)`` float32 displacement in **mm** along the image axes, ITK channel order (x, y[, z]).
    """
    from scipy.ndimage import gaussian_filter

    shape = tuple(int(s) for s in shape)
    d = len(shape)
    field = np.zeros((d, *shape), np.float64)
    idx = _points(shape, int(points), rng, mask, edges, unique)
    vectors = rng.uniform(-theta_mm, theta_mm, size=(int(points), d))
    for c in range(d):
        np.add.at(field[c], idx, vectors[:, c])
        peak = np.abs(field[c]).max()
        field[c] = gaussian_filter(field[c], sigma_mm / spacing_mm, mode="constant", truncate=3.0)
        top = np.abs(field[c]).max()
        if top > 0:
            field[c] *= peak / top
    return field.astype(np.float32)


def random_class_field(shape, spacing_mm, rng, *, mask=None, edges=None, classes=REGNET_CLASSES) -> tuple:
    """``(field_mm, class_index)`` with the class drawn uniformly."""
    k = int(rng.integers(len(classes)))
    sigma, points, theta = classes[k]
    return synthetic_field(shape, spacing_mm, sigma, points, theta, rng, mask=mask, edges=edges), k


def edge_map(image: np.ndarray, mask: Optional[np.ndarray] = None, quantile: float = 0.7) -> np.ndarray:
    """Voxels whose gradient magnitude is above the ``quantile`` of those in ``mask`` (RegNet's edges)."""
    g = np.sqrt(sum(gi ** 2 for gi in np.gradient(image.astype(np.float32))))
    region = mask if mask is not None and mask.any() else np.ones_like(g, bool)
    return g >= np.quantile(g[region], quantile)

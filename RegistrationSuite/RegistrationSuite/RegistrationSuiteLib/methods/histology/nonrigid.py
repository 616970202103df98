"""Non-rigid stage: instance optimisation of a dense displacement on its own fixed grid (``io_size``).

Direction: both slides are prepared on a grid finer than the affine stage's (``HistologyConfig.io_size``; the
initial alignment's residual on real pairs is a few level-0 pixels, below one pixel of the 256-pixel affine
grid); the moving channel is resampled onto the fixed grid through the affine fixed → moving mapping
``A x + t``; the shared optimiser (:mod:`RegistrationSuiteLib.deform`) then finds ``u`` (fixed pixels of that
grid) with ``moving_on_fixed(x + u(x))`` ≈ ``fixed(x)``, so the full mapping is ``x → A (x + u(x)) + t``
(fixed → moving, composed in :func:`.align.moved_points`).

Channels (chosen per similarity, both insensitive to which stain colours a structure):
- ``mind`` / ``ngf``: the summed optical density (dye amount), scaled by its 99th percentile. MIND-SSC compares
  local self-similarity patterns and NGF edge directions, so neither cares whether a structure is darker or
  lighter in the other stain.
- ``lncc`` / ``ncc``: the gradient magnitude of the optical density (contrast-sign invariant by itself).

Measured (``Testing/Benchmarks/bench_histology.py`` rows and the model-free checks in its notes): on synthetic
warps and on the BIRL artificial elastic pair the stage removes most of the non-affine error; on the two ANHIR
pairs it does not lower the landmark error below the initial alignment's, so it is off by default.
"""

from __future__ import annotations

import torch

from ...deform import InstanceOptimisationConfig, folding_fraction, optimise_field
from .align import Candidate, moved_points, sample_with_domain
from .config import HistologyConfig
from .preprocess import Plane, Prepared, glass_normalised, optical_density, prepare, working_spacing
from .slides import Slide

# Channel of Prepared.features used by lncc / ncc (0 = tissue outline, 1 = optical-density gradient magnitude).
STRUCTURE = 1


def similarity_channel(prepared: Prepared, similarity: str) -> Plane:
    """The ``(1, H, W)`` channel the non-rigid stage compares with ``similarity`` (see the module docstring)."""
    if similarity in ("mind", "ngf"):
        od = optical_density(glass_normalised(prepared.rgb.data)).sum(0, keepdim=True)
        flat = od.reshape(-1)
        top = torch.quantile(flat[:: max(1, flat.numel() // 200_000)], 0.99).clamp(min=1e-3)
        return prepared.rgb.with_data((od / top).clamp(max=1.5))
    return prepared.features.with_data(prepared.features.data[STRUCTURE:STRUCTURE + 1])


def refine_nonrigid(f_slide: Slide, m_slide: Slide, affine: Candidate, cfg: HistologyConfig, progress,
                    device=None) -> tuple:
    """Optimise the displacement after ``affine`` on the ``cfg.io_size`` grid.

    Returns:
        ``(pf, pm, u, info)``: both slides prepared on that grid, ``u`` ``(2, H, W)`` in its fixed pixels (channel
        0 = x) and JSON-able diagnostics (grid, similarity before/after, folding fraction, per-level losses).
    """
    spacing = working_spacing(f_slide, m_slide, cfg.io_size)
    pf = prepare(f_slide, spacing, 1, "fixed", device)
    pm = prepare(m_slide, spacing, 1, "moving", device)
    cf, cm = similarity_channel(pf, cfg.io_similarity), similarity_channel(pm, cfg.io_similarity)
    with torch.no_grad():
        pts = moved_points(pf.features, affine, None).float()
        moving, inside = sample_with_domain(cm, pts[None])
    factors = tuple(2 ** k for k in reversed(range(cfg.io_levels)))
    config = InstanceOptimisationConfig(similarity=cfg.io_similarity, levels=factors, steps=cfg.io_steps,
                                        learning_rate=cfg.io_learning_rate, regularizer="bending",
                                        weight=cfg.io_smoothness, lncc_radius=cfg.io_radius)
    out = optimise_field(cf.data[None], moving, config, moving_mask=inside, progress=progress)
    u = out.field[0]
    info = {"similarity": cfg.io_similarity, "grid_hw": list(pf.features.shape), "spacing": float(spacing),
            "similarity_before": out.similarity_before, "similarity_after": out.similarity_after,
            "folding_fraction": folding_fraction(out.field), "max_px": float(u.norm(dim=0).max()),
            "levels": list(factors), "history": out.history, "seconds": out.seconds}
    return pf, pm, u, info

"""Non-rigid stage: instance optimisation of a dense displacement on the fixed working grid.

Direction: the moving features are first resampled onto the fixed grid through the affine fixed → moving
mapping ``A x + t``; the shared optimiser (:mod:`RegistrationSuiteLib.deform`) then finds ``u`` (fixed pixels)
with ``moving_on_fixed(x + u(x))`` ≈ ``fixed(x)``, so the full mapping is ``x → A (x + u(x)) + t`` (fixed →
moving, composed in :func:`.align.moved_points`).

Features: the gradient magnitude of the optical density (edges of glands, vessels, tissue borders), compared by
local NCC; it is insensitive to which stain colours a structure and to whether it is darker or lighter than
its surroundings.
"""

from __future__ import annotations

import torch

from ...deform import InstanceOptimisationConfig, folding_fraction, optimise_field
from .align import Candidate, moved_points, sample_with_domain
from .config import HistologyConfig
from .preprocess import Prepared

# Channel of Prepared.features used here (0 = tissue outline, 1 = optical-density gradient magnitude).
STRUCTURE = 1


def refine_nonrigid(pf: Prepared, pm: Prepared, affine: Candidate, cfg: HistologyConfig, progress) -> tuple:
    """Optimise the displacement after ``affine``.

    Returns:
        ``(u, info)``: ``u`` ``(2, H, W)`` in fixed working pixels (channel 0 = x) and JSON-able diagnostics
        (similarity before/after, folding fraction, per-level losses).
    """
    with torch.no_grad():
        pts = moved_points(pf.features, affine, None).float()
        values, inside = sample_with_domain(pm.features, pts[None])
    fixed = pf.features.data[STRUCTURE:STRUCTURE + 1][None]
    moving = values[:, STRUCTURE:STRUCTURE + 1]
    factors = tuple(2 ** k for k in reversed(range(cfg.io_levels)))
    config = InstanceOptimisationConfig(similarity=cfg.io_similarity, levels=factors, steps=cfg.io_steps,
                                        learning_rate=cfg.io_learning_rate, regularizer="bending",
                                        weight=cfg.io_smoothness, lncc_radius=cfg.io_radius)
    out = optimise_field(fixed, moving, config, moving_mask=inside, progress=progress)
    u = out.field[0]
    info = {"similarity": cfg.io_similarity, "similarity_before": out.similarity_before,
            "similarity_after": out.similarity_after, "folding_fraction": folding_fraction(out.field),
            "levels": list(factors), "history": out.history, "seconds": out.seconds}
    return u, info

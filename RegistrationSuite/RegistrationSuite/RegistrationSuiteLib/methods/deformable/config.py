"""Configuration of deformable registration (torch-free)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

from ...errors import InputError

SIMILARITY_CHOICES = ("auto", "ncc", "lncc", "mind", "ngf")
REGULARIZER_CHOICES = ("diffusion", "bending")


@dataclass
class DeformableConfig:
    """Parameters of :func:`register_deformable`.

    Attributes:
        spacing_mm: isotropic spacing of the working grid (mm), or ``None`` (default) for automatic:
            ``auto_spacing_mm``, coarsened just enough that the grid holds at most ``auto_max_voxels`` voxels
            (bounds time and memory on large images). The grid has the fixed image's direction and covers its
            field of view; the output field lives on it.
        auto_spacing_mm, auto_max_voxels: see ``spacing_mm``. 1.5 mm was chosen by measurement (tuning cases,
            BENCHMARKS.md "Deformable registration"): on 1.5 mm brain pairs it reached 0.27–0.29 mm mean
            field error on T1→T1 and 0.84–0.88 mm across contrasts, against 0.40–0.48 mm and 1.13–1.25 mm on a
            2 mm grid, at about twice the optimisation time.
        similarity: ``"auto"``, ``"ncc"``, ``"lncc"``, ``"mind"`` or ``"ngf"``. ``"auto"`` measures the
            Pearson correlation of the two images after the initial transform, both smoothed (σ =
            ``auto_smoothing_mm``) so that residual misalignment matters little, over their common foreground
            (see :func:`~.register.choose_similarity`): at or
            above ``auto_ncc_threshold`` the pair is treated as same-contrast (``"lncc"``), otherwise as
            cross-contrast (``"mind"``, MIND-SSC: modality independent). The measured value is reported.
        io_steps: total Adam steps of instance optimisation, split over ``levels`` by ``level_fractions``;
            0 = network only.
        levels: pyramid shrink factors (coarse to fine) relative to the working grid.
        level_fractions: share of ``io_steps`` per level (normalised).
        learning_rate: Adam step (voxels of the level).
        final_lr_fraction: the step falls from ``learning_rate`` to this fraction of it within each level
            (cosine), so the field settles instead of jittering by about one step around the optimum.
        regularization: weight of the regulariser.
        regularizer: ``"diffusion"`` or ``"bending"``.
        lncc_radius: LNCC window radius (voxels of each pyramid level; window ``2r + 1`` per axis).
        lncc_eps: LNCC variance floor relative to the product of the images' mean local variances (see
            :func:`RegistrationSuiteLib.deform.lncc_loss`): a larger floor quiets flat, noise-only regions.
        field_smoothing_mm: σ of the Gaussian applied to the optimised field before use (and after each
            level), in mm of the working grid; the optimiser applies the same number of voxels at every
            pyramid level (``field_smoothing_mm / spacing_mm``: 3 voxels at 1.5 mm). 4.5 mm was chosen on
            tuning cases (seed 100 of ``bench_deformable``'s generator, never the benchmark's): on T1→T1
            cases of classes 2, 0 and 1 the mean field error inside the fixed brain fell from 0.31, 0.20 and
            0.22 mm (σ = 1 voxel, the previous value) to 0.21, 0.17 and 0.18 mm (2 voxels: 0.23 / 0.17, 4 voxels:
            0.21 / 0.17 on classes 2 / 0), with the class-2 T1→T2 and T1→FLAIR cases unchanged (0.83 → 0.83 mm,
            0.77 → 0.76 mm). Tried there and not kept: weight 0.03 / 0.3 (σ = 1 voxel: 0.42 / 0.48 mm on class 2
            against 0.38 mm, undeformed-mask error), LNCC floor 1e-2 (0.48 mm), learning rate 0.5 with σ = 3
            voxels (0.23 / 0.19 mm on classes 2 / 0), learning rate 0.2 (0.20 / 0.16 mm) and weight 0.03 (0.19 / 0.17 mm)
            with σ = 3 voxels (within the spread of one case each, not adopted). A smoother field
            fills the textureless white matter and the fixed image's background better.
        diffeomorphic: optimise a stationary velocity field integrated by scaling and squaring.
        model: model name or ``.pt`` path, or ``None``/``"none"`` for optimisation only.
        network_passes: with a model, how many times it is applied (a cascade: each pass sees the moving
            image warped by the field so far and its estimate is composed with it).
        network_skip_levels: with a model, the optimisation skips this many of the coarsest ``levels`` (their
            share of ``io_steps`` goes to the remaining levels in proportion), since the network's start already
            holds the coarse field; 0 = the same schedule as optimisation alone; the finest level is never
            skipped. Default 1, chosen on tuning cases
            (``bench_deformable``'s generator, seed 100, class 0, one case per pair; never the benchmark's or the
            held-out evaluation's cases): after a ``deformable_mr_synthetic`` start, skipping the coarse level was more accurate than
            the full schedule at 10, 20 and 40 steps on T1→T1 (0.43, 0.33, 0.27 mm against 0.55, 0.40,
            0.33 mm) and T1→T2 (1.11, 0.86, 0.71 mm against 1.75, 1.16, 0.91 mm), at about 1.5 times the CPU
            per step (the steps go to finer levels).
        auto_ncc_threshold, auto_smoothing_mm: see ``similarity``.
        min_overlap: fraction of the fixed field of view (or fixed mask) that must map into the moving image
            after the initial transform; less is an input error ("the pair does not overlap").
        max_memory_gb: refuse (before allocating) working grids whose estimated peak memory exceeds it.
        min_size: smallest working-grid size per axis (voxels).
        seed: seeds torch (the optimisation is deterministic on CPU).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """

    spacing_mm: Optional[float] = None
    auto_spacing_mm: float = 1.5
    auto_max_voxels: int = 3_000_000
    similarity: str = "auto"
    io_steps: int = 120
    levels: Sequence[float] = (4, 2, 1)
    level_fractions: Sequence[float] = (0.5, 0.35, 0.15)
    learning_rate: float = 0.3
    final_lr_fraction: float = 1.0
    regularization: float = 0.1
    regularizer: str = "diffusion"
    lncc_radius: int = 2
    lncc_eps: float = 1e-5
    field_smoothing_mm: float = 4.5
    diffeomorphic: bool = False
    model: Optional[str] = None
    network_passes: int = 1
    network_skip_levels: int = 1
    auto_ncc_threshold: float = 0.8
    auto_smoothing_mm: float = 4.0
    min_overlap: float = 0.1
    max_memory_gb: float = 4.0
    min_size: int = 8
    seed: int = 0
    device: str = "auto"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every field; raises :class:`InputError` naming the field, what was expected and what came."""
        if isinstance(self.spacing_mm, str) and self.spacing_mm.lower() == "auto":
            self.spacing_mm = None
        names = ("learning_rate", "auto_smoothing_mm", "max_memory_gb", "auto_spacing_mm", "lncc_eps")
        for name in names + (("spacing_mm",) if self.spacing_mm is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise InputError(f"{name}: expected a positive number, got {value!r}")
        if not (math.isfinite(self.regularization) and self.regularization >= 0):
            raise InputError(f"regularization: expected a number >= 0, got {self.regularization!r}")
        if self.similarity not in SIMILARITY_CHOICES:
            raise InputError(f"similarity: expected one of {', '.join(SIMILARITY_CHOICES)}, got {self.similarity!r}")
        if self.regularizer not in REGULARIZER_CHOICES:
            raise InputError(f"regularizer: expected one of {', '.join(REGULARIZER_CHOICES)}, got {self.regularizer!r}")
        if isinstance(self.field_smoothing_mm, bool) or not isinstance(self.field_smoothing_mm, (int, float)) \
                or not (math.isfinite(self.field_smoothing_mm) and self.field_smoothing_mm >= 0):
            raise InputError(f"field_smoothing_mm: expected a number >= 0, got {self.field_smoothing_mm!r}")
        for name, low in (("io_steps", 0), ("min_size", 4), ("seed", 0), ("auto_max_voxels", 1000), ("lncc_radius", 1),
                          ("network_passes", 1), ("network_skip_levels", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{name}: expected an integer >= {low}, got {value!r}")
        if not self.levels or any(not float(f) >= 1 for f in self.levels):
            raise InputError(f"levels: expected shrink factors >= 1 (coarse to fine), got {self.levels}")
        if len(self.level_fractions) != len(self.levels) or any(f < 0 for f in self.level_fractions) \
                or sum(self.level_fractions) <= 0:
            raise InputError(f"level_fractions: expected {len(self.levels)} non-negative shares, got {self.level_fractions}")
        if not 0 < self.final_lr_fraction <= 1:
            raise InputError(f"final_lr_fraction: expected a number in (0, 1], got {self.final_lr_fraction}")
        if not 0 <= self.auto_ncc_threshold <= 1:
            raise InputError(f"auto_ncc_threshold: expected a correlation in [0, 1], got {self.auto_ncc_threshold}")
        if not 0 < self.min_overlap <= 1:
            raise InputError(f"min_overlap: expected a fraction in (0, 1], got {self.min_overlap}")
        if not isinstance(self.device, str):
            raise InputError(f"device: expected a string such as 'auto' or 'cpu', got {self.device!r}")
        if isinstance(self.model, str) and self.model.lower() == "none":
            self.model = None

    def working_spacing(self, extent_mm: Sequence[float]) -> float:
        """The working-grid spacing for a fixed field of view ``extent_mm`` (corner to corner, per axis):
        ``spacing_mm`` when set, else ``auto_spacing_mm`` coarsened until the grid holds at most
        ``auto_max_voxels`` voxels."""
        if self.spacing_mm is not None:
            return float(self.spacing_mm)
        spacing = float(self.auto_spacing_mm)

        def voxels(s):
            return math.prod(int(math.ceil(e / s - 1e-6)) + 1 for e in extent_mm)

        while voxels(spacing) > self.auto_max_voxels:
            spacing *= 1.02
        return round(spacing, 4)

    def steps_per_level(self, network: bool = False) -> list:
        """``io_steps`` split over the levels (largest remainder, so the sum is exact). ``network``: the run
        starts from a network's field, so the ``network_skip_levels`` coarsest levels (never the finest) get 0
        steps and the others share ``io_steps`` in proportion to their ``level_fractions``."""
        fractions = list(self.level_fractions)
        skip = min(self.network_skip_levels, len(fractions) - 1) if network else 0
        if skip:
            fractions[:skip] = [0.0] * skip
            if sum(fractions) <= 0:  # every remaining level had share 0: give them equal shares
                fractions[skip:] = [1.0] * (len(fractions) - skip)
        total = float(sum(fractions))
        raw = [self.io_steps * f / total for f in fractions]
        steps = [int(math.floor(r)) for r in raw]
        for i in sorted(range(len(raw)), key=lambda i: raw[i] - steps[i], reverse=True)[: self.io_steps - sum(steps)]:
            steps[i] += 1
        return steps

    def to_dict(self) -> dict:
        return asdict(self)


#: Presets of the Slicer module (and of ``make_config``): preset → ``(io_steps, regularization)``. "balanced" is
#: the configuration's (and so the command line's) default; "fast" halves the steps, "accurate" spends 2.5 times
#: as many. Measured on tuning cases (seed 100 of ``bench_deformable``'s generator, never its cases; 1.5 mm brain,
#: T1→T1, classes 2 / 0, default 4.5 mm field smoothing; mean field error inside the fixed brain, CPU time of the
#: registration at one thread): fast 0.26 / 0.19 mm in 6.7 s, balanced 0.21 / 0.17 mm in about 12.5 s, accurate
#: 0.18 / 0.14 mm in about 30 s. The weight 0.1 was kept (see ``field_smoothing_mm``).
PRESETS = {
    "fast": (DeformableConfig.io_steps // 2, DeformableConfig.regularization),
    "balanced": (DeformableConfig.io_steps, DeformableConfig.regularization),
    "accurate": (DeformableConfig.io_steps * 5 // 2, DeformableConfig.regularization),
}

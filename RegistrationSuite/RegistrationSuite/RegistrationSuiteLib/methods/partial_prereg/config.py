"""Configuration of Template-Space Patch Mapping (TSPM) partial-volume preregistration."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from ...errors import InputError

REFINE_METRICS = ("mse", "nmi", "mi", "none")


@dataclass
class PartialPreregConfig:
    """Parameters of :func:`register_partial_prereg` (Xia et al., "Data-driven multi-modal partial medical
    image preregistration by template space patch mapping", MICCAI 2022).

    Attributes:
        num_patches: 16³ patches drawn from the moving image at template scale (paper: 100).
        min_foreground_fraction: a patch is used when at least this fraction of its voxels is foreground
            (normalised intensity above ``foreground_level`` of the model's intensity range). Paper: patches
            with more than 40 % background are discarded, i.e. 0.6.
        min_patches: fewer usable patches than this is an input error (RANSAC needs far more than 6 points
            to find a consensus).
        ransac_iterations: RANSAC trials of 6-point samples (reference: 3000).
        ransac_threshold_mm: a patch is an inlier when its predicted template position is within this
            distance (mm, template space) of the fitted rigid transform's image of its centre. The reference
            used 10 template voxels (about 17 mm); 15 mm suits our 1.5 mm template voxels.
        ransac_min_inliers: a consensus needs at least this many inliers (paper: 20) ...
        ransac_min_inlier_ratio: ... and at least this fraction of the patches.
        refine: metric of the final local rigid refinement moving → fixed, evaluated only where the images
            overlap: ``"mi"`` (Mattes mutual information; multimodal default), ``"nmi"`` (normalised mutual
            information, Parzen histogram, as in the paper), ``"mse"`` (same modality only) or ``"none"``.
        refine_iterations: optimiser iterations per resolution level of the refinement.
        fixed_to_template_refine: metric refining the fixed → template alignment after the (coarse, 10 then
            5 mm) global rigid search: ``"auto"`` (default) = ``"none"`` when the local search follows (its
            neighbourhood absorbs the search's few-mm error, and the step costs half as much), else ``"mi"``;
            ``"mi"`` suits any modality pair; ``"none"`` keeps the search result.
        fixed_to_template_search: how the fixed image is first placed in the template: ``"scanner"``
            (default) = the local CSNGF search (10 then 5 mm, rotations within ±25°, shifts within ±40 mm) from
            the scanner orientation with the foreground centres matched (heads are imaged in a standard pose),
            falling back to the global search when its normalised NGF similarity is below
            ``FIXED_TO_TEMPLATE_MIN_SCORE`` of :mod:`.register`; ``"global"`` = the global rigid search over
            all of SO(3) (any orientation; about three times the cost).
        fixed_to_template_scale: where the fixed → template alignment is refined with Mattes MI, refine a
            similarity (rotation, translation and one isotropic scale: a subject's head is not the template's
            size) instead of a rigid transform; the moving → template RANSAC fit then uses that scale, so that the
            composed fixed → moving transform stays rigid. No effect without an MI refinement (the default
            pipeline with the local search: ``fixed_to_template_refine="auto"`` means none). Chosen on development
            crops (``bench_partial_prereg.py --seed 11/12/13 --only tspm_noref``, 144 crops, not the benchmark's
            seed 0): "TSPM alone" median anchor error T1 12.5 → 10.5, T2 20.4 → 16.5, FLAIR 18.4 → 16.3 mm.
        global_search_rotations: rotations sampled on the coarsest level of the global rigid search used
            for fixed → template (and for the fallback when RANSAC finds no consensus).
        orientation_prior: also try a second initialisation that keeps the moving image's physical orientation
            (rotation = identity between its LPS axes and the template's: scanners image heads in a standard
            pose, within a few tens of degrees) with the translation that the patch predictions agree on
            (1-point RANSAC). Both candidates are refined at the coarse levels and the one with the better
            metric over the overlap is finished. Our addition to the paper: with an imperfect network, the
            rotation fitted to the patches of a small image is its weakest part.
        local_search: search the neighbourhood of the TSPM candidates with the CSNGF search (FFT over all
            shifts in a window, rotations near the candidate) before the refinement; the best candidate by
            normalised NGF similarity is refined. Our addition: it brings a rough TSPM estimate (a few cm off)
            into the refinement's capture range. ``False`` is the ablation "TSPM without local search".
        local_search_window_mm: half-width (mm) of the translation window around each TSPM candidate.
        local_search_first_window_mm: half-width (mm) of the *first* local search around its seeds; ``None`` (default)
            = ``local_search_window_mm``. The widening after a poor match always uses ``local_search_window_mm``
            (neighbours one and a half windows away, each searched within that window). Smaller first windows
            cost less per search but leave more to the widening. Measured on 16 development crops (seed 11, not the
            benchmark's 0; ``bench_partial_prereg.py --only tspm_w20 tspm_w25 tspm_w30 tspm_w40``): ±20 and ±25 mm
            around the network's candidates each lost one tiny crop (a wrong place 39 mm off matched well,
            normalised NGF similarity 0.75-0.78, so no widening) that ±30 and ±40 mm found, and none saved CPU time
            worth having (3.2 s per case at ±25 mm, 3.6 s at ±30 mm, 3.5 s at ±40 mm; the search's cost is mostly
            its rotations, not its window): ``None`` stays.
        local_search_deg: half-width (degrees) of the rotation neighbourhood of each TSPM candidate.
        local_search_rotations: rotations scored per TSPM candidate on the search's first (5 mm) level (50: on
            medium and large crops of the stroke subject, 100 cost twice the CPU time for the same final result).
        local_search_keep: candidates kept after the first level (and refined with NGF when
            ``local_search_refine_iterations`` > 0).
        local_search_widen: when the local search's best candidate matches poorly (normalised NGF similarity
            below ``local_search_widen_below``), search again from each TSPM candidate's six neighbours one window
            step away and the centre seed, and keep the better search.
        local_search_widen_below: that similarity threshold (0.6, the "doubtful" flag's). 0.7 was tried on the
            7 development crops (seeds 11-13) whose result scored 0.6-0.7: the 6 correct ones stayed correct, the
            one failure (its true pose 22.6° from the seeds' rotation, outside the ±20° neighbourhood) was not
            found either, at about twice the CPU time for those crops; so 0.6 stays.
        local_search_fine_below_mm: a moving image whose largest extent (mm) is below this is searched on the
            finer levels ``local_search_fine_levels_mm`` instead of 5 then 2.5 mm (a tiny crop is a handful of
            voxels at 5 mm; its first-level score then misleads); 0: never. Chosen on 12 tiny crops drawn with
            seed 11 (not the benchmark's 0): 7 of 12 within 4 mm with 5 then 2.5 mm, 11 of 12 with 2.5 mm alone,
            at about twice the CPU time for those crops.
        local_search_fine_levels_mm: working grids (mm, coarsest first) of that finer search.
        local_search_refine_iterations: L-BFGS iterations of the search's own sub-voxel NGF refinement (10; the
            foundation's default is 30). The overlap-restricted refinement that follows converges without it, but
            the normalised NGF similarity and the refinement shift that flag a result *doubtful* were calibrated
            after this refinement: without it (0) correct results scored 0.54-0.68 and moved 3-10 mm in the
            refinement, and were flagged. 10 iterations brought the similarity back to 0.75-0.78 on two crops.
        seeds: where the local search starts: ``"tspm"`` (default) = the TSPM candidates (network + RANSAC,
            orientation prior); the ablations ``"centre"`` = no network, the moving image's centre on the fixed
            foreground's centre in scanner orientation (widened like the TSPM candidates when it matches poorly),
            and ``"scanner"`` = no network, every scanner-orientation seed of :func:`~.seeds.scanner_seeds` (what a
            moving image too small for the network gets). Needs ``local_search``.
        use_ransac: ablation switch: ``False`` fits the rigid transform to *all* patch predictions by least
            squares (the paper's "w/o RANSAC" variant; every prediction then counts as an inlier).
        fallback_to_global: when RANSAC finds no consensus, align moving → fixed by the global rigid search
            (flagged in the diagnostics) instead of raising :class:`RegistrationFailed`.
        batch_size: patches per network forward pass.
        seed: seed of patch sampling, RANSAC and refinement sampling (results are deterministic per seed).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` for the network.
        model_path: model name or ``.pt`` file used when :func:`register_partial_prereg` gets no ``model``.
        template_path: optional template canvas the caller expects; an error is raised unless it is the
            template the model was trained in (a model only works in its own template space).
        cache_fixed_to_template: reuse the fixed → template alignment of a fixed image seen before (same
            voxels and geometry, same settings), from memory or from the on-disk cache in the user cache folder
            (:mod:`RegistrationSuiteLib.cache`); it does not depend on the moving image.
    """

    num_patches: int = 100
    min_foreground_fraction: float = 0.6
    min_patches: int = 20
    ransac_iterations: int = 3000
    ransac_threshold_mm: float = 15.0
    ransac_min_inliers: int = 12
    ransac_min_inlier_ratio: float = 0.2
    refine: str = "mi"
    refine_iterations: int = 100
    fixed_to_template_refine: str = "auto"
    fixed_to_template_search: str = "scanner"
    fixed_to_template_scale: bool = True
    global_search_rotations: int = 500
    orientation_prior: bool = True
    local_search: bool = True
    local_search_window_mm: float = 40.0
    local_search_first_window_mm: Optional[float] = None
    local_search_deg: float = 20.0
    local_search_rotations: int = 50
    local_search_keep: int = 2
    local_search_refine_iterations: int = 10
    local_search_widen: bool = True
    local_search_widen_below: float = 0.6
    seeds: str = "tspm"
    local_search_fine_below_mm: float = 70.0
    local_search_fine_levels_mm: tuple = (2.5,)
    use_ransac: bool = True
    fallback_to_global: bool = True
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    model_path: Optional[str] = None
    template_path: Optional[str] = None
    cache_fixed_to_template: bool = True

    def __post_init__(self) -> None:
        self._check_counts()
        self._check_fractions()
        for name, allowed in (("refine", REFINE_METRICS), ("fixed_to_template_refine", ("auto",) + REFINE_METRICS)):
            value = getattr(self, name)
            if value not in allowed:
                raise InputError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
        if self.seeds not in ("tspm", "centre", "scanner"):
            raise InputError(f"seeds: expected 'tspm', 'centre' or 'scanner', got {self.seeds!r}")
        if self.seeds != "tspm" and not self.local_search:
            raise InputError(f"seeds={self.seeds!r} seeds the local search: it needs local_search=True")
        if self.fixed_to_template_search not in ("scanner", "global"):
            raise InputError(f"fixed_to_template_search: expected 'scanner' or 'global', got "
                             f"{self.fixed_to_template_search!r}")
        for name in ("local_search_window_mm", "local_search_deg"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name}: expected a positive number, got {getattr(self, name)}")
        if self.local_search_first_window_mm is not None and not (
                isinstance(self.local_search_first_window_mm, (int, float))
                and not isinstance(self.local_search_first_window_mm, bool) and self.local_search_first_window_mm > 0):
            raise InputError(f"local_search_first_window_mm: expected a positive number or None, got "
                             f"{self.local_search_first_window_mm!r}")
        if not 0 <= self.local_search_widen_below <= 1:
            raise InputError(f"local_search_widen_below: expected a similarity in [0, 1], got "
                             f"{self.local_search_widen_below}")
        if not self.local_search_fine_below_mm >= 0:
            raise InputError(f"local_search_fine_below_mm: expected a size in mm >= 0, got "
                             f"{self.local_search_fine_below_mm}")
        levels = tuple(self.local_search_fine_levels_mm)
        if not levels or not all(isinstance(v, (int, float)) and v > 0 for v in levels) or list(levels) != sorted(
                levels, reverse=True):
            raise InputError(f"local_search_fine_levels_mm: expected positive spacings in mm, coarsest first, got "
                             f"{self.local_search_fine_levels_mm!r}")
        self.local_search_fine_levels_mm = tuple(float(v) for v in levels)
        if not self.ransac_threshold_mm > 0:
            raise InputError(f"ransac_threshold_mm: expected a positive distance in mm, got {self.ransac_threshold_mm}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise InputError(f"seed: expected an integer, got {self.seed!r}")
        if not isinstance(self.device, str):
            raise InputError(f"device: expected a string such as 'auto' or 'cpu', got {self.device!r}")

    def _check_counts(self) -> None:
        minimum = {"num_patches": 6, "min_patches": 6, "ransac_iterations": 1, "ransac_min_inliers": 6,
                   "refine_iterations": 0, "global_search_rotations": 1, "batch_size": 1,
                   "local_search_rotations": 1, "local_search_keep": 1,
                   "local_search_refine_iterations": 0}
        for name, low in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < low:
                raise InputError(f"{name}: expected an integer >= {low}, got {value!r}")
            setattr(self, name, int(value))
        if self.min_patches > self.num_patches:
            raise InputError(f"min_patches: expected <= num_patches ({self.num_patches}), got {self.min_patches}")

    def _check_fractions(self) -> None:
        for name in ("min_foreground_fraction", "ransac_min_inlier_ratio"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise InputError(f"{name}: expected a fraction in [0, 1], got {value}")

    def first_window_mm(self) -> float:
        """Half-width (mm) of the first local search around its seeds (``local_search_first_window_mm`` or, when
        ``None``, ``local_search_window_mm``)."""
        return float(self.local_search_window_mm if self.local_search_first_window_mm is None
                     else self.local_search_first_window_mm)

    def to_dict(self) -> dict:
        return asdict(self)

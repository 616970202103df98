"""Configuration of the global rigid CSNGF search."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from ...errors import InputError

#: A result whose confidence is below this is flagged doubtful (``diagnostics["doubtful"]``, a warning): in
#: practice a confidence of 0, i.e. a pose more than 45° away scored at least as well at the coarsest level.
#: Chosen on the shipped sample brain by ``Testing/Benchmarks/calibrate_confidence.py`` (best balanced accuracy
#: there); BENCHMARKS.md reports how well it separates successes from failures. Partial fields of view give
#: low confidences even when correct, so the flag asks for a look, it does not say the result is wrong.
DOUBTFUL_CONFIDENCE = 0.002


@dataclass
class GlobalRigidConfig:
    """Parameters of :func:`register_global_rigid`; every per-level tuple has one entry per pyramid level,
    coarsest first.

    Defaults, tuned on the paper's protocol (one subject's brain T1/T2/FLAIR, 151 mm cubes at 1 mm, uniform
    random rotation, ±30 mm shifts; 100 % success, median corner error ~0.5 mm, ~6 s of one CPU core per pair):

    - level 1, 10 mm voxels, 1500 rotations on SO(3): a 151 mm cube is 16³ voxels, so every shift with 50 %
      overlap fits a 32³ FFT (a power of two). The true rotation's neighbourhood ranked first on every tested
      case; 400 rotations still succeeded, so 1500 leaves a wide margin on harder data.
    - level 2, 5 mm, 24 perturbations within 20° of each of the 10 kept candidates (the level-1 samples are
      at most ~15-20° apart).
    - level 3, 2.5 mm, 3 rotations: the 3 survivors are only re-scored (new shift at 2.5 mm, no perturbation),
      then the 2 best are refined locally on this level (sub-voxel, sub-degree), which replaces finer
      rotation sampling at a fraction of its cost.

    The coarsest level is the global search, so it decides robustness (more rotations, a finer spacing or
    more kept candidates help hard cases); later levels and the refinement polish the survivors.

    Attributes:
        level_spacing_mm: voxel size (mm) of the isotropic working grid per level. The paper used
            downsampling factors (4, 2, 2, 1) of 1 mm data; a coarser first level is much faster on a CPU.
            Each image must keep at least 4 voxels per axis on every level.
        blur_mm: Gaussian sigma (mm) of each level (anti-aliasing and smoothing of the similarity landscape;
            the paper used 5, 3, 2, 1.5 voxels of its 1 mm data).
        num_rotations: rotations evaluated per level. Level 1 samples SO(3) (or the circle in 2D) globally;
            later levels split their count equally among the previous level's kept candidates, each
            re-evaluated unperturbed plus perturbed copies (paper: 5000, 3000, 300). A count equal to the
            previous ``keep`` re-scores the kept candidates only.
        perturbation_deg: half-width (degrees) of the perturbation around the previous level's candidates; an
            entry >= 180 means a global sample on that level (the first entry must be >= 180).
        keep: distinct best candidates kept per level (paper: 20, 3, 1). Candidates closer than half the next
            level's perturbation (the last level: half its own) in angle and 2 voxels in shift to a better
            one are suppressed. The last entry is how many are refined.
        min_overlap: gamma in (0, 1]: a shift counts only if the masks overlap by at least this fraction of
            the smaller mask (paper: 0.5).
        epsilon: NGF regularisation for intensities normalised to [0, 1] (paper: 1e-5).
        intensity_percentiles: robust normalisation: these percentiles (inside the mask) map to 0 and 1,
            values outside are clipped.
        local_shift_window: on levels after a global one, shifts are searched within ± this many voxels of
            each parent's shift (one small FFT per parent, widened for free to a fast FFT length) instead of
            over all overlaps.
        max_shift_mm: optional bound on the searched translation, per axis of the fixed image: how far the
            fixed point mapped onto the moving centre of rotation may lie from the fixed image's centre.
            ``None``: any shift with enough overlap. (The final refinement may move a few mm beyond it.)
        refine: after the search, optimise the 6 (2D: 3) rigid parameters of the kept candidates on the
            finest level (L-BFGS on the normalised squared-NGF similarity, see :mod:`.refine`).
        refine_iterations: L-BFGS iterations per refined candidate.
        batch_size: rotations resampled and correlated together (memory grows linearly with it; it is also
            capped so one batch's spectra stay under ~512 MB).
        seed: seed of the rotation sampling (the result is deterministic for a given seed on the CPU).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """

    level_spacing_mm: tuple = (10.0, 5.0, 2.5)
    blur_mm: tuple = (7.0, 3.5, 2.0)
    num_rotations: tuple = (1500, 240, 3)
    perturbation_deg: tuple = (180.0, 20.0, 5.0)
    keep: tuple = (10, 3, 2)
    min_overlap: float = 0.5
    epsilon: float = 1e-5
    intensity_percentiles: tuple = (0.5, 99.5)
    local_shift_window: int = 3
    max_shift_mm: Optional[float] = None
    refine: bool = True
    refine_iterations: int = 30
    batch_size: int = 256
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        names = ("level_spacing_mm", "blur_mm", "num_rotations", "perturbation_deg", "keep")
        for name in names:
            value = getattr(self, name)
            if isinstance(value, (int, float)) or not hasattr(value, "__len__") or len(value) == 0:
                raise InputError(f"{name}: expected a non-empty sequence with one entry per level, got {value!r}")
            setattr(self, name, tuple(value))
        lengths = {name: len(getattr(self, name)) for name in names}
        if len(set(lengths.values())) != 1:
            raise InputError(f"per-level settings: expected equal lengths, got {lengths}")
        self._check_levels()
        self._check_scalars()

    @property
    def num_levels(self) -> int:
        return len(self.level_spacing_mm)

    def _check_levels(self) -> None:
        if any(not s > 0 for s in self.level_spacing_mm):
            raise InputError(f"level_spacing_mm: expected positive voxel sizes, got {self.level_spacing_mm}")
        if any(not b >= 0 for b in self.blur_mm):
            raise InputError(f"blur_mm: expected sigmas >= 0, got {self.blur_mm}")
        if any(int(n) != n or n < 1 for n in self.num_rotations):
            raise InputError(f"num_rotations: expected integers >= 1, got {self.num_rotations}")
        if any(int(k) != k or k < 1 for k in self.keep):
            raise InputError(f"keep: expected integers >= 1, got {self.keep}")
        if self.perturbation_deg[0] < 180 or any(not u > 0 for u in self.perturbation_deg):
            raise InputError(
                "perturbation_deg: expected the first entry >= 180 (global sampling) and positive entries, "
                f"got {self.perturbation_deg}"
            )
        for k in range(1, self.num_levels):
            if self.perturbation_deg[k] < 180 and self.num_rotations[k] < self.keep[k - 1]:
                raise InputError(
                    f"num_rotations: level {k + 1} must evaluate at least the {self.keep[k - 1]} kept candidates "
                    f"of level {k}, got {self.num_rotations[k]}"
                )

    def _check_scalars(self) -> None:
        if not 0 < self.min_overlap <= 1:
            raise InputError(f"min_overlap: expected a fraction in (0, 1], got {self.min_overlap}")
        if not self.epsilon > 0:
            raise InputError(f"epsilon: expected a positive number, got {self.epsilon}")
        pct = tuple(self.intensity_percentiles)
        if len(pct) != 2 or not (0 <= pct[0] < pct[1] <= 100):
            raise InputError(f"intensity_percentiles: expected (low, high) with 0 <= low < high <= 100, "
                             f"got {self.intensity_percentiles}")
        if int(self.local_shift_window) != self.local_shift_window or self.local_shift_window < 0:
            raise InputError(f"local_shift_window: expected an integer >= 0, got {self.local_shift_window}")
        if self.max_shift_mm is not None and not self.max_shift_mm >= 0:
            raise InputError(f"max_shift_mm: expected None or a number >= 0, got {self.max_shift_mm}")
        if int(self.refine_iterations) != self.refine_iterations or self.refine_iterations < 0:
            raise InputError(f"refine_iterations: expected an integer >= 0, got {self.refine_iterations}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise InputError(f"batch_size: expected an integer >= 1, got {self.batch_size}")
        if not isinstance(self.seed, int):
            raise InputError(f"seed: expected an integer, got {self.seed!r}")
        if not isinstance(self.device, str):
            raise InputError(f"device: expected a string such as 'auto' or 'cpu', got {self.device!r}")

    def to_dict(self) -> dict:
        return asdict(self)

"""Configuration of histology slide registration (torch-free: NumPy and the standard library only).

Units: the registration works in the slides' physical frame, micrometres when the files carry a pixel size
and level-0 pixels otherwise ("1 unit = 1 pixel", reported in the result). Sizes given in working pixels
(``search_size``, ``working_size``) are resolutions of the internal pyramid, not of the files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from ...errors import InputError

MIRROR_CHOICES = ("auto", "no", "yes")
IO_SIMILARITIES = ("lncc", "ncc", "mind", "ngf")
NETWORK_STAGES = ("affine", "affine+nonrigid")


@dataclass
class HistologyConfig:
    """Parameters of :func:`register_histology` (validated at construction and again on use).

    Attributes:
        level: pyramid level to read (0 = full resolution); ``None`` = chosen from ``resolution_um`` or the
            level closest to ``working_size``. Mutually exclusive with ``resolution_um``.
        resolution_um: requested working pixel size in µm (needs a pixel size in the files): the finest
            pyramid level not finer than needed is read, then resampled.
        working_size: longest side (pixels) of the fixed image in the finest working level of the affine and
            non-rigid stages; larger slides are downsampled to it (the output field lives on that grid). On the
            two ANHIR pairs the affine stage was as accurate at 256 as at 512 and 1024 (median rTRE 0.25 / 0.50 %,
            0.27 / 0.52 %, 0.30 / – %) and several times faster.
        search_size: longest side (pixels) of the common canvas of the rotation search (coarse, fast).
        rotation_step_deg: angular step of the full 0–359° search (the best angles are then refined).
        mirror: ``"auto"`` also tries the mirrored moving slide (flipped sections), ``"no"`` never, ``"yes"``
            only mirrored.
        candidates: rotation-search candidates kept per search channel (outline, density, edges) and mirror
            state, all refined on the coarsest affine level; the best structure NCC continues.
        affine_levels: pyramid levels of the affine refinement (coarsest at ``search_size``).
        affine_iterations: Adam iterations per affine level.
        io_steps: iterations of the non-rigid instance optimisation per level (0 = affine only, the default:
            on the two ANHIR pairs no setting tried lowered the landmark error below the initial alignment's,
            while on synthetic warps and the BIRL artificial elastic pair it removes most of the non-affine error;
            see BENCHMARKS.md).
        io_size: longest side (pixels) of the fixed grid of the instance optimisation (finer than the affine
            stage's ``working_size``: the residual after the affine stage is a few pixels of a 5 % slide). The
            output field lives on this grid when the stage runs. With local NCC on the BIRL artificial elastic
            pair (not an evaluation pair) 512 left 1.99 px median landmark error against 2.60 px at 256
            (``bench_histology.py --nonrigid-checks``).
        io_levels: pyramid levels of the instance optimisation (finest = ``io_size``).
        io_learning_rate: Adam step of the dense displacement (pixels of the current level).
        io_smoothness: weight of the bending (curvature) regulariser of the non-rigid displacement.
        io_similarity: ``"mind"`` (MIND-SSC) or ``"ngf"`` on the summed optical density, ``"lncc"`` (local NCC) or
            ``"ncc"`` on its gradient magnitude (:mod:`.nonrigid`). Default and smoothness chosen on cases that
            are not benchmark pairs (two synthetic warps with stain changes, the BIRL artificial elastic pair):
            MIND at smoothness 2 had the lowest summed median error there.
        io_radius: window radius (pixels) of the local NCC.
        model: multi-magnification model to apply after the initial alignment, a name (user folder, then
            shipped models) or a ``.pt`` path (``None`` = classical pipeline only). With a model the instance
            optimisation is not run.
        iterations: passes of the networks (each pass: affine network, then non-rigid network; the paper found
            3 better than 1).
        network_stages: ``"affine+nonrigid"`` (both networks) or ``"affine"`` (the local affine network only).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        seed: seeds every stochastic step (ties in the search, network sampling).
        num_threads: torch intra-op threads while registering (``None`` keeps the caller's setting). Many small
            tensor operations: on 2 shared cores 1 thread was faster than 2 (oversubscription), so 1 is the default.
    """

    level: Optional[int] = None
    resolution_um: Optional[float] = None
    working_size: int = 256
    search_size: int = 160
    rotation_step_deg: float = 2.0
    mirror: str = "auto"
    candidates: int = 2
    affine_levels: int = 3
    affine_iterations: int = 80
    io_steps: int = 0
    io_size: int = 512
    io_levels: int = 3
    io_learning_rate: float = 0.3
    io_smoothness: float = 2.0
    io_similarity: str = "mind"
    io_radius: int = 3
    model: Optional[str] = None
    iterations: int = 3
    network_stages: str = "affine+nonrigid"
    device: str = "auto"
    seed: int = 0
    num_threads: Optional[int] = 1

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every field; raises :class:`InputError` naming the field, what was expected and what came."""
        if self.level is not None and self.resolution_um is not None:
            raise InputError("level, resolution_um: give one of them (a pyramid level or a pixel size), got both")
        if self.level is not None:
            _check_int("level", self.level, 0)
        if self.resolution_um is not None:
            _check_positive("resolution_um", self.resolution_um)
        _check_int("working_size", self.working_size, 32)
        _check_int("search_size", self.search_size, 32)
        if self.search_size > self.working_size:
            raise InputError(f"search_size: expected <= working_size ({self.working_size}), got {self.search_size}")
        _check_positive("rotation_step_deg", self.rotation_step_deg)
        if self.rotation_step_deg > 45:
            raise InputError(f"rotation_step_deg: expected <= 45 (a full search), got {self.rotation_step_deg}")
        if self.mirror not in MIRROR_CHOICES:
            raise InputError(f"mirror: expected one of {', '.join(MIRROR_CHOICES)}, got {self.mirror!r}")
        _check_int("candidates", self.candidates, 1)
        _check_int("affine_levels", self.affine_levels, 1)
        _check_int("affine_iterations", self.affine_iterations, 0)
        _check_int("io_steps", self.io_steps, 0)
        _check_int("io_size", self.io_size, 32)
        _check_int("io_levels", self.io_levels, 1)
        _check_positive("io_learning_rate", self.io_learning_rate)
        _check_int("io_radius", self.io_radius, 1)
        if not (np.isfinite(float(self.io_smoothness)) and float(self.io_smoothness) >= 0):
            raise InputError(f"io_smoothness: expected a finite number >= 0, got {self.io_smoothness!r}")
        if self.io_similarity not in IO_SIMILARITIES:
            raise InputError(f"io_similarity: expected one of {', '.join(IO_SIMILARITIES)}, got {self.io_similarity!r}")
        _check_int("iterations", self.iterations, 1)
        if self.network_stages not in NETWORK_STAGES:
            raise InputError(f"network_stages: expected one of {', '.join(NETWORK_STAGES)}, got {self.network_stages!r}")
        if self.model is not None and not isinstance(self.model, str):
            raise InputError(f"model: expected a model name or a .pt path, got {self.model!r}")
        _check_int("seed", self.seed, 0)
        if self.num_threads is not None:
            _check_int("num_threads", self.num_threads, 1)
        if not isinstance(self.device, str):
            raise InputError(f"device: expected 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")

    @property
    def read_size(self) -> int:
        """Longest side (pixels) the slide level read must reach: the finest grid any enabled stage uses
        (the network grid is added by the caller, which knows the model)."""
        if self.io_steps > 0 and self.model is None:
            return max(self.working_size, self.io_size)
        return self.working_size

    def to_dict(self) -> dict:
        return asdict(self)


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(f"{name}: expected an integer >= {low}, got {value!r}")


def _check_positive(name: str, value) -> None:
    try:
        ok = np.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"{name}: expected a positive finite number, got {value!r}")

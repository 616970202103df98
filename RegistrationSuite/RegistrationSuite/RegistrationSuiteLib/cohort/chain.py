"""Initial transforms, composition and the valid chains of registration steps.

Direction: every transform here maps FIXED points to MOVING points (ITK convention, LPS mm). A step run
from an initial transform ``T0`` registers the fixed image against the moving image *seen through* ``T0``
(the "intermediate" moving image ``M'(y) = M(T0(y))``) and finds ``S``; the composed result maps a fixed
point ``x`` to ``T0(S(x))`` in the moving image, so ``sitk.Resample(moving, fixed, composed)`` aligns the
original moving image onto the fixed one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry import affine_matrix_from_sitk

# The one place where the valid chains are listed. A step is the name of a CLI command; a chain is valid
# when it matches one of these exactly. "deformable" and "histology" plug in by name: they are accepted here
# and run once their commands exist (see :func:`check_chain`).
VALID_CHAINS: tuple = (
    ("rigid-search",),
    ("partial-prereg",),
    ("deformable",),
    ("rigid-search", "deformable"),
    ("partial-prereg", "deformable"),
    ("histology",),
)
# Steps that register images (``--fixed``/``--moving`` images, ``--initial-transform``); organ-points
# registers point sets/label maps and is not chained with them.
IMAGE_STEPS = ("rigid-search", "partial-prereg", "deformable", "histology")


def valid_chains_text() -> str:
    """The valid chains, one per ``;``, as quoted in error messages and help."""
    return "; ".join(",".join(c) for c in VALID_CHAINS)


def parse_steps(text: str) -> tuple:
    """``"rigid-search, deformable"`` → ``("rigid-search", "deformable")``."""
    steps = tuple(s.strip() for s in str(text).split(",") if s.strip())
    if not steps:
        raise InputError("--steps: expected a comma-separated list of steps, got nothing")
    return steps


def check_chain(steps: Sequence[str], available: Optional[Sequence[str]] = None) -> tuple:
    """Validate a chain of steps.

    Args:
        steps: step names in order.
        available: commands installed in this version (``None``: do not check).

    Raises:
        InputError: the chain is not one of :data:`VALID_CHAINS` (the message names them), or a step's
            command is not available in this version.
    """
    steps = tuple(steps)
    if steps not in VALID_CHAINS:
        why = ""
        if "organ-points" in steps:
            why = " (organ-points registers point sets/label maps: run it alone with `registration-suite organ-points`)"
        elif "deformable" in steps and steps.index("deformable") == 0 and len(steps) > 1:
            why = " (a deformable step comes after a rigid one, never before)"
        raise InputError(f"--steps: {','.join(steps)} is not a valid chain{why}; valid chains: {valid_chains_text()}")
    if available is not None:
        missing = [s for s in steps if s not in available]
        if missing:
            raise InputError(f"--steps: the step {missing[0]!r} is not available in this version of registration-suite "
                             f"(commands: {', '.join(sorted(available))})")
    return steps


def is_rigid_matrix(matrix: np.ndarray, tol: float = 1e-6) -> bool:
    """True when the linear part of a homogeneous matrix is orthonormal (a rotation, possibly a reflection)."""
    d = matrix.shape[0] - 1
    a = matrix[:d, :d]
    return bool(np.allclose(a.T @ a, np.eye(d), atol=tol))


@dataclass
class PrewarpedMoving:
    """The moving image seen through an initial fixed→moving transform.

    Attributes:
        image: the intermediate moving image ``M'`` (``M'(y) = M(T0(y))``).
        how: ``"header"`` (rigid ``T0``: origin and direction rewritten, voxels untouched, nothing cropped) or
            ``"resampled"`` (any other ``T0``: ``M`` resampled through ``T0`` onto the fixed grid).
    """

    image: sitk.Image
    how: str


def prewarp_moving(moving: sitk.Image, initial: sitk.Transform, fixed: sitk.Image, *,
                   labels: bool = False) -> PrewarpedMoving:
    """The intermediate moving image ``M'(y) = M(T0(y))`` for an initial fixed→moving transform ``T0``.

    A rigid ``T0`` (``y ↦ A y + b``, ``A`` orthonormal) is applied exactly by rewriting the header: a voxel at
    physical point ``p = D S i + o`` of ``M`` sits at ``A⁻¹(p − b)`` in ``M'``, so ``M'`` keeps the voxels and
    spacing with direction ``A⁻¹ D`` and origin ``A⁻¹(o − b)``. Any other ``T0`` (affine with scaling,
    deformable) is applied by resampling ``M`` through ``T0`` onto the fixed grid (linear, or nearest
    neighbour for ``labels``), which limits ``M'`` to the fixed field of view.

    Raises:
        InputError: the transform's dimension differs from the images'.
    """
    d = moving.GetDimension()
    if initial.GetDimension() != d:
        raise InputError(f"--initial-transform: a {initial.GetDimension()}D transform for {d}D images")
    if initial.IsLinear():
        m = affine_matrix_from_sitk(initial, d)
        if is_rigid_matrix(m):
            a_inv = m[:d, :d].T
            out = sitk.Image(moving)
            direction = a_inv @ np.asarray(moving.GetDirection()).reshape(d, d)
            out.SetDirection(tuple(direction.ravel()))
            out.SetOrigin(tuple(a_inv @ (np.asarray(moving.GetOrigin()) - m[:d, d])))
            return PrewarpedMoving(out, "header")
    interp = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    return PrewarpedMoving(sitk.Resample(moving, fixed, initial, interp, 0.0, moving.GetPixelID()), "resampled")


def compose_fixed_to_moving(initial: sitk.Transform, step: sitk.Transform) -> sitk.Transform:
    """``x ↦ initial(step(x))``: the step found against the pre-warped moving image, then the initial one.

    Two linear transforms give one linear transform (an ``Euler`` transform when the result is a proper
    rotation in 2D/3D, else an ``AffineTransform``); otherwise a ``CompositeTransform`` holding ``[initial,
    step]`` (ITK applies the last-added transform first), which :func:`step_of_composed` takes apart again.
    """
    d = step.GetDimension()
    if initial.GetDimension() != d:
        raise InputError(f"--initial-transform: a {initial.GetDimension()}D transform for a {d}D registration")
    if initial.IsLinear() and step.IsLinear():
        return linear_transform(affine_matrix_from_sitk(initial, d) @ affine_matrix_from_sitk(step, d))
    composite = sitk.CompositeTransform(d)
    composite.AddTransform(initial)
    composite.AddTransform(step)
    return composite


def step_of_composed(composed: sitk.Transform, initial: sitk.Transform) -> sitk.Transform:
    """The step's own transform ``S`` from ``composed = initial ∘ S`` (inverse of
    :func:`compose_fixed_to_moving`): exact for linear ones, the last component of a composite otherwise."""
    d = composed.GetDimension()
    if composed.IsLinear() and initial.IsLinear():
        return linear_transform(np.linalg.inv(affine_matrix_from_sitk(initial, d)) @ affine_matrix_from_sitk(composed, d))
    if isinstance(composed, sitk.CompositeTransform) and composed.GetNumberOfTransforms() >= 2:
        last = composed.GetNthTransform(composed.GetNumberOfTransforms() - 1)
        return last.Downcast() if hasattr(last, "Downcast") else last
    if isinstance(composed, sitk.DisplacementFieldTransform) and initial.IsLinear():
        return _field_without_linear(composed, affine_matrix_from_sitk(initial, d))
    raise InputError(f"transform: cannot separate the step from a {composed.GetName()} (expected a composite)")


def linear_transform(matrix: np.ndarray) -> sitk.Transform:
    """A SimpleITK transform for a homogeneous fixed→moving matrix: Euler when rigid (det +1), else affine."""
    matrix = np.asarray(matrix, dtype=float)
    d = matrix.shape[0] - 1
    if d in (2, 3) and is_rigid_matrix(matrix) and np.linalg.det(matrix[:d, :d]) > 0:
        tx = sitk.Euler3DTransform() if d == 3 else sitk.Euler2DTransform()
        tx.SetMatrix(tuple(matrix[:d, :d].ravel()), 1e-6)
        tx.SetTranslation(tuple(matrix[:d, d]))
        return tx
    tx = sitk.AffineTransform(d)
    tx.SetMatrix(tuple(matrix[:d, :d].ravel()))
    tx.SetTranslation(tuple(matrix[:d, d]))
    return tx


def fold_transform_into_field(step: sitk.DisplacementFieldTransform,
                              initial: sitk.Transform) -> sitk.DisplacementFieldTransform:
    """``T0 ∘ S`` as one displacement field on ``S``'s grid for any ``T0`` (linear, B-spline, displacement field,
    composite): ``u'(x) = T0(x + u(x)) − x`` sampled at the grid points. Exact there; between them the field is
    interpolated, which for an affine ``T0`` is exact everywhere (an affine map of the interpolated ``x + u``)."""
    field = step.GetDisplacementField()
    composed = sitk.CompositeTransform([initial, step])  # SimpleITK applies the last one added first: T0(S(x))
    out = sitk.TransformToDisplacementField(composed, sitk.sitkVectorFloat64, field.GetSize(), field.GetOrigin(),
                                            field.GetSpacing(), field.GetDirection())
    return sitk.DisplacementFieldTransform(out)


def affine_fit_over_domain(transform: sitk.Transform, origin, extent, samples: int = 21) -> np.ndarray:
    """The least-squares affine (homogeneous matrix) of ``transform`` sampled on a regular grid over the box
    ``origin .. origin + extent``: the linear part of a non-linear transform, e.g. as a Jacobian estimate."""
    d = len(origin)
    axes = [np.linspace(o, o + e, samples) for o, e in zip(origin, extent)]
    x = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
    y = np.array([transform.TransformPoint(tuple(float(v) for v in p)) for p in x])
    design = np.hstack([x, np.ones((len(x), 1))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    m = np.eye(d + 1)
    m[:d, :d] = coef[:d].T
    m[:d, d] = coef[d]
    return m


def _field_without_linear(composed: sitk.DisplacementFieldTransform, initial: np.ndarray) -> sitk.DisplacementFieldTransform:
    """``S = T0⁻¹ ∘ composed`` for one displacement field with a linear ``T0`` folded in (as the deformable
    command writes it): on the field's grid ``S(x) = A⁻¹(x + u(x) − b)``, so ``u_S(x) = S(x) − x``."""
    field = composed.GetDisplacementField()
    d = field.GetDimension()
    u = sitk.GetArrayFromImage(field).reshape(-1, d)  # (N, d) in x, y(, z) order, index order reversed
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in reversed(field.GetSize())], indexing="ij"), -1).reshape(-1, d)[:, ::-1]
    spacing_dir = np.asarray(field.GetDirection()).reshape(d, d) * np.asarray(field.GetSpacing())
    x = idx @ spacing_dir.T + np.asarray(field.GetOrigin())
    a_inv = np.linalg.inv(initial[:d, :d])
    step = (x + u - initial[:d, d]) @ a_inv.T - x
    out = sitk.GetImageFromArray(step.reshape(tuple(reversed(field.GetSize())) + (d,)), isVector=True)
    out.CopyInformation(field)
    return sitk.DisplacementFieldTransform(sitk.Cast(out, sitk.sitkVectorFloat64))

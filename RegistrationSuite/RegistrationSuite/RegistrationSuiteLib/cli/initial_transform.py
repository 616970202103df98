"""``--initial-transform T`` for the image commands: pre-warp the moving image, compose the result.

Semantics (the same for every image command): ``T`` (any ITK transform file, LPS, fixed→moving) is applied
to the moving image first, the method registers the fixed image against that pre-warped moving image, and
the written transform is the composition ``T ∘ S`` (a fixed point ``x`` goes to ``T(S(x))`` in the moving
image), again fixed→moving. rigid-search is a global search, so ``T`` does not narrow its search: it changes
where the search starts from (the moving image's centre and orientation) and is part of the written result.
partial-prereg's orientation prior then starts from ``T``'s pose. histology takes any 2D ``T`` (linear or not,
in the slides' physical units): the moving slide is resampled through it onto the fixed slide's grid
(glass colour outside), the full rotation search runs on that, and ``T`` is folded into the written field.
See :mod:`RegistrationSuiteLib.cohort.chain`.
"""

from __future__ import annotations

from typing import Optional

import SimpleITK as sitk

from ..cohort.chain import affine_fit_over_domain, compose_fixed_to_moving, fold_transform_into_field, prewarp_moving
from ..geometry import Grid
from ..io import read_transform
from ..result import RegistrationResult


def add_initial_transform_argument(p) -> None:
    p.add_argument("--initial-transform", metavar="T",
                   help="ITK transform file (LPS, fixed→moving) applied to the moving image first; the written "
                        "transform is the composition (still fixed→moving)")


def read_initial_transform(args) -> Optional[sitk.Transform]:
    path = getattr(args, "initial_transform", None)
    return read_transform(path) if path else None


def prewarp(initial: Optional[sitk.Transform], moving: Optional[sitk.Image], fixed: sitk.Image, *,
            labels: bool = False) -> tuple:
    """``(image the method registers, how)``; ``moving`` itself and ``None`` without an initial transform."""
    if initial is None or moving is None:
        return moving, None
    p = prewarp_moving(moving, initial, fixed, labels=labels)
    return p.image, p.how


def compose_result(result: RegistrationResult, initial: Optional[sitk.Transform], moving: sitk.Image,
                   path: Optional[str], how: Optional[str]) -> RegistrationResult:
    """Replace ``result.transform`` by ``initial ∘ step`` and record the step's own transform."""
    if initial is None:
        return result
    step = result.transform
    result.transform = compose_fixed_to_moving(initial, step)
    result.moving_grid = Grid.from_image(moving)
    info = {"path": str(path), "type": initial.GetName(), "prewarp": how, "step_transform_type": step.GetName()}
    if step.IsLinear():
        from ..geometry import affine_matrix_from_sitk

        info["step_fixed_to_moving_lps"] = affine_matrix_from_sitk(step, step.GetDimension()).round(8).tolist()
    result.diagnostics["initial_transform"] = info
    return result


def prewarp_slide(moving, fixed, initial: sitk.Transform):
    """The moving :class:`~RegistrationSuiteLib.methods.histology.slides.Slide` seen through a 2D initial
    transform (any kind: rigid, affine, B-spline, displacement field): its pixels resampled (linear, glass colour
    outside) onto the fixed slide's grid, with the fixed slide's geometry (``M'(y) = M(T0(y))``, ``y`` in the
    fixed physical frame).

    Raises:
        InputError: not a 2D transform.
    """
    import dataclasses

    import numpy as np

    from ..errors import InputError
    from ..methods.histology.outputs import slide_image

    if initial.GetDimension() != 2:
        raise InputError(f"--initial-transform: a {initial.GetDimension()}D transform for 2D slides")
    image = slide_image(moving)
    dtype = moving.pixels.dtype
    glass = float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0
    warped = sitk.Resample(image, slide_image(fixed), initial, sitk.sitkLinear, glass, image.GetPixelID())
    pixels = sitk.GetArrayFromImage(warped)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return dataclasses.replace(fixed, pixels=pixels.astype(dtype, copy=False), source=moving.source,
                               notes=list(moving.notes) + ["seen through --initial-transform on the fixed slide's grid"])


def compose_histology_result(result, initial: sitk.Transform, moving, path):
    """A histology result found against :func:`prewarp_slide`'s slide, made a result for the original moving
    slide: ``T0`` folded into the field (still one 2D displacement field, fixed→moving), the initial affine
    alignment composed with ``T0`` (the inverse landmark transfer starts from it), the original moving slide."""
    from ..geometry import affine_matrix_from_sitk

    result.transform = fold_transform_into_field(result.transform, initial)
    if initial.IsLinear():
        m = affine_matrix_from_sitk(initial, 2)
    else:  # its affine part seeds the inverse landmark transfer
        fixed = result.fixed_slide
        extent = [float(sp) * n for sp, n in zip(fixed.spacing, reversed(fixed.pixels.shape[:2]))]
        m = affine_fit_over_domain(initial, [float(o) for o in fixed.origin], extent)
    if result.affine is not None:
        result.affine = m @ result.affine
    result.moving_slide = moving
    result.diagnostics["initial_transform"] = {"path": str(path), "type": initial.GetName(), "prewarp": "resampled",
                                               "fixed_to_moving" if initial.IsLinear() else "fixed_to_moving_affine_part": m.round(8).tolist(),
                                               "note": "rotation_deg and the candidates are the step's own, after it"}
    return result

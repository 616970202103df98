"""``--initial-transform T`` for the image commands: pre-warp the moving image, compose the result.

Semantics (the same for every image command): ``T`` (any ITK transform file, LPS, fixed→moving) is applied
to the moving image first, the method registers the fixed image against that pre-warped moving image, and
the written transform is the composition ``T ∘ S`` (a fixed point ``x`` goes to ``T(S(x))`` in the moving
image), again fixed→moving. rigid-search is a global search, so ``T`` does not narrow its search: it changes
where the search starts from (the moving image's centre and orientation) and is part of the written result.
partial-prereg's orientation prior then starts from ``T``'s pose. See
:mod:`RegistrationSuiteLib.cohort.chain`.
"""

from __future__ import annotations

from typing import Optional

import SimpleITK as sitk

from ..cohort.chain import compose_fixed_to_moving, prewarp_moving
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

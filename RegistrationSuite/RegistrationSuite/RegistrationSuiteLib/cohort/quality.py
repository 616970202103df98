"""Quality figures read from a result: doubtful reasons and the folding of deformable transforms."""

from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk


def doubtful_reasons(summary: dict) -> list:
    """The method's reasons to check a result, wherever the summary keeps them (top-level ``doubtful``,
    ``diagnostics.doubtful``, or warnings starting with "doubtful")."""
    reasons = summary.get("doubtful")
    if reasons is None:
        reasons = (summary.get("diagnostics") or {}).get("doubtful")
    if reasons is None:
        reasons = [w for w in summary.get("warnings", []) if str(w).lower().startswith("doubtful")]
    if isinstance(reasons, str):
        reasons = [reasons]
    if isinstance(reasons, bool):
        reasons = ["flagged doubtful"] if reasons else []
    return [str(r) for r in reasons or []]


def displacement_field(transform: sitk.Transform) -> Optional[sitk.Image]:
    """The displacement field of a ``DisplacementFieldTransform`` (alone or inside a composite), else None."""
    t = transform.Downcast() if hasattr(transform, "Downcast") else transform
    if isinstance(t, sitk.CompositeTransform):
        for i in range(t.GetNumberOfTransforms()):
            field = displacement_field(t.GetNthTransform(i))
            if field is not None:
                return field
        return None
    if isinstance(t, sitk.DisplacementFieldTransform):
        return t.GetDisplacementField()
    return None


def jacobian_determinant(transform: sitk.Transform) -> Optional[sitk.Image]:
    """Jacobian determinant of ``x ↦ x + u(x)`` on the field's grid (None for linear transforms)."""
    field = displacement_field(transform)
    if field is None:
        return None
    return sitk.DisplacementFieldJacobianDeterminant(sitk.Cast(field, sitk.sitkVectorFloat64))


def folding_percent(transform: sitk.Transform) -> Optional[float]:
    """Percentage of the field's voxels where the Jacobian determinant is ≤ 0 (folding); None when linear."""
    jac = jacobian_determinant(transform)
    if jac is None:
        return None
    arr = sitk.GetArrayViewFromImage(jac)
    return round(float(np.count_nonzero(arr <= 0) * 100.0 / arr.size), 4)

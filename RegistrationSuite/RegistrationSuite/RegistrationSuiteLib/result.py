"""The one result record returned by every ``register_<method>()`` entry point."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import SimpleITK as sitk

from .geometry import Grid, affine_matrix_from_sitk


@dataclass
class RegistrationResult:
    """Outcome of a registration.

    Attributes:
        method: short method name (e.g. ``"global_rigid"``).
        transform: SimpleITK transform in LPS mapping **fixed points to moving points**
            (``sitk.Resample(moving, fixed, transform)`` aligns moving onto fixed). Linear methods give an
            affine/Euler transform; deformable ones a ``DisplacementFieldTransform``.
        fixed_grid, moving_grid: geometry of the inputs (``None`` for point sets).
        score: the method's similarity at the solution (higher is better; method-specific scale).
        confidence: in [0, 1]; how much the solution stands out (method-specific, documented there).
        timings: seconds per named stage, and ``"total"``.
        diagnostics: method-specific, JSON-serialisable details (candidates, inliers, warnings, ...).
        warnings: human-readable notes the user should see (e.g. "RGB converted to luminance").
    """

    method: str
    transform: sitk.Transform
    fixed_grid: Optional[Grid] = None
    moving_grid: Optional[Grid] = None
    score: float = float("nan")
    confidence: float = float("nan")
    timings: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    @property
    def dimension(self) -> int:
        return self.transform.GetDimension()

    @property
    def is_linear(self) -> bool:
        return bool(self.transform.IsLinear())

    @property
    def fixed_to_moving_matrix(self) -> np.ndarray:
        """Homogeneous fixed→moving matrix (LPS); raises for deformable transforms."""
        return affine_matrix_from_sitk(self.transform, self.dimension)

    def summary(self) -> dict:
        """A JSON-serialisable summary (what the CLI prints with ``--json``)."""
        out: dict[str, Any] = {
            "method": self.method,
            "transform_type": self.transform.GetName(),
            "score": _finite_or_none(self.score),
            "confidence": _finite_or_none(self.confidence),
            "timings": {k: round(float(v), 4) for k, v in self.timings.items()},
            "warnings": list(self.warnings),
        }
        if self.is_linear:
            out["fixed_to_moving_lps"] = np.round(self.fixed_to_moving_matrix, 8).tolist()
        out["diagnostics"] = _jsonable(self.diagnostics)
        return out

    def to_json(self) -> str:
        return json.dumps(self.summary(), separators=(",", ":"))


def _finite_or_none(x) -> Optional[float]:
    x = float(x)
    return x if np.isfinite(x) else None


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return _finite_or_none(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    return obj

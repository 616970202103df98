"""Multi-organ Bayesian coherent point drift (MO-BCPD; Joutard et al., WBIR 2022) on organ surface points.

Public API: :class:`OrganPointCloudConfig`, :func:`register_organ_point_cloud` (returns an
:class:`OrganPointCloudResult`, a :class:`~RegistrationSuiteLib.result.RegistrationResult` whose transform maps
fixed to moving points, LPS mm), :func:`transform_points` (the fitted mapping evaluated exactly at points) and
:func:`transform_points_with_field` (any SimpleITK transform applied to points).

Only the configuration is imported eagerly (NumPy only); the torch-based parts load on first use.
"""

from .config import LabelModel, OrganPointCloudConfig

_LAZY = {
    "FittedMapping": "mapping",
    "OrganPointCloudResult": "register",
    "register_organ_point_cloud": "register",
    "transform_points": "register",
    "transform_points_with_field": "register",
}

__all__ = ["LabelModel", "OrganPointCloudConfig", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

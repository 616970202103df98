"""Histology slide registration (consecutive or re-stained sections, e.g. H&E against immunohistochemistry).

Reference pipeline: METHOD_NOTES §4 (tissue mask → rotation search → affine → non-rigid) and the
multi-magnification paper (``papers/histology_multimagnification_WBIR2022.txt``): its local affine and non-rigid
patch networks are in :mod:`.networks` (trained by :mod:`.train`, applied with ``HistologyConfig.model``);
without a model the classical stages run on their own.

Public API: :class:`HistologyConfig`, :func:`register_histology` (returns a :class:`HistologyResult`, a
:class:`~RegistrationSuiteLib.result.RegistrationResult` whose transform maps fixed to moving points in the
slides' physical frame), :func:`read_slide`, :func:`read_landmarks` / :func:`write_landmarks`,
:func:`transfer_landmarks` (fixed → moving) and :func:`transfer_landmarks_inverse` (moving → fixed).

Only the configuration is imported eagerly (NumPy only); the torch-based parts load on first use.
"""

from .config import HistologyConfig

_LAZY = {
    "HistologyResult": "register",
    "register_histology": "register",
    "Slide": "slides",
    "read_slide": "slides",
    "read_landmarks": "landmarks",
    "write_landmarks": "landmarks",
    "relative_tre": "landmarks",
    "transfer_landmarks": "outputs",
    "transfer_landmarks_inverse": "outputs",
    "transfer_points": "outputs",
    "warped_moving": "outputs",
    "checkerboard": "outputs",
}

__all__ = ["HistologyConfig", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

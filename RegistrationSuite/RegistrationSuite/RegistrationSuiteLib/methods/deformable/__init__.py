"""Dense deformable registration: a RegNet/Cao-style field network (optional) followed by instance
optimisation (Sokooti et al., MICCAI 2017; Cao et al., 2018; Heinrich & Hansen, WBIR 2022).

Public API: :class:`DeformableConfig`, :func:`register_deformable` (returns a
:class:`~RegistrationSuiteLib.result.RegistrationResult` whose transform is one ITK displacement field mapping
fixed points to moving points, LPS mm, the initial transform folded in), :func:`synthetic_field`
(RegNet's synthetic displacement fields) and the network helpers :class:`FieldUNet`,
:func:`load_deformable_model`.

Only the configuration is imported eagerly (no torch); the torch-based parts load on first use.
"""

from .config import SIMILARITY_CHOICES, DeformableConfig

_LAZY = {
    "register_deformable": "register",
    "working_grid": "register",
    "choose_similarity": "register",
    "FieldUNet": "network",
    "load_deformable_model": "network",
    "predict_field": "network",
    "synthetic_field": "synthetic",
    "REGNET_CLASSES": "synthetic",
}

__all__ = ["SIMILARITY_CHOICES", "DeformableConfig", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

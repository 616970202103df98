"""Template-Space Patch Mapping (TSPM): learned initialisation for rigid partial-volume registration.

Reference: Xia, Yang, van Kaick, Kin, Igarashi, "Data-driven multi-modal partial medical image
preregistration by template space patch mapping", MICCAI 2022 (``papers/partial_preregistration_TSPM_Xia.txt``).
A network maps 16³ patches of the (partial) moving image to positions in a template space; a RANSAC rigid fit
places the moving image in the template, the fixed image is aligned to the template by the global rigid
search, and a local rigid refinement measured only where the images overlap finishes the job.

Example::

    from RegistrationSuiteLib.methods.partial_prereg import PartialPreregConfig, register_partial_prereg
    result = register_partial_prereg("t2.nii.gz", "t1_crop.nii.gz", PartialPreregConfig(refine="mi"))
    aligned = sitk.Resample(moving, fixed, result.transform)

Only the configuration is imported eagerly (no torch); the network, template and registration load on first use.
"""

from .config import PartialPreregConfig

_LAZY = {
    "DEFAULT_MODEL": "network",
    "IntensityConfig": "patches",
    "PatchNetConfig": "network",
    "PatchPositionNet": "network",
    "TSPMModel": "network",
    "Template": "template",
    "build_template": "template",
    "load_template": "template",
    "load_tspm_model": "network",
    "register_partial_prereg": "register",
}

__all__ = ["PartialPreregConfig", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

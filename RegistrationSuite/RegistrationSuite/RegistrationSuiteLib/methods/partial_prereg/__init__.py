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
"""

from .config import PartialPreregConfig
from .network import DEFAULT_MODEL, PatchNetConfig, PatchPositionNet, TSPMModel, load_tspm_model
from .patches import IntensityConfig
from .register import register_partial_prereg
from .template import Template, build_template, load_template

__all__ = [
    "DEFAULT_MODEL",
    "IntensityConfig",
    "PartialPreregConfig",
    "PatchNetConfig",
    "PatchPositionNet",
    "TSPMModel",
    "Template",
    "build_template",
    "load_template",
    "load_tspm_model",
    "register_partial_prereg",
]

"""Global rigid multimodal alignment by the cross-similarity of squared normalized gradient fields (CSNGF).

Reference: "Cross-Sim-NGF: FFT-based global rigid multimodal alignment of 3D images", WBIR 2022
(``papers/global_rigid_CSNGF_WBIR2022.txt``). For every sampled rotation of the moving image, the similarity
of squared NGF is computed for all integer shifts at once by FFT; a coarse-to-fine search over rotations and a
local refinement give a rigid fixed → moving transform. Works in 2D and 3D, CPU or CUDA.

Example::

    from RegistrationSuiteLib.methods.global_rigid import GlobalRigidConfig, register_global_rigid
    result = register_global_rigid("t1.nii.gz", "flair.nii.gz", GlobalRigidConfig(seed=0))
    aligned = sitk.Resample(moving, fixed, result.transform)

Only the configuration is imported eagerly (no torch); :func:`register_global_rigid` loads torch on first use.
"""

from .config import GlobalRigidConfig

_LAZY = {"register_global_rigid": "register"}

__all__ = ["GlobalRigidConfig", "register_global_rigid"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

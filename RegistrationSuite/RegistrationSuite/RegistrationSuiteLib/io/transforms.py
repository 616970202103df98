"""ITK transform files (``.h5``, ``.tfm``, ``.txt``), always LPS and fixed→moving."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from ..errors import InputError
from .atomic import atomic_output

TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt", ".mat")


def write_transform(transform: sitk.Transform, path) -> None:
    """Write ``transform`` atomically; the suffix picks the ITK format."""
    suffix = Path(path).suffix.lower()
    if suffix not in TRANSFORM_SUFFIXES:
        raise InputError(f"output: transform file must end with one of {', '.join(TRANSFORM_SUFFIXES)}, got {path}")
    with atomic_output(path) as tmp:
        sitk.WriteTransform(transform, tmp)


def read_transform(path) -> sitk.Transform:
    """Read an ITK transform file; a composite holding a single transform is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"transform: file not found: {path}")
    try:
        tx = sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        raise InputError(f"transform: cannot read {path} ({str(exc).strip()[:200]})") from None
    if isinstance(tx, sitk.CompositeTransform) and tx.GetNumberOfTransforms() == 1:
        tx = tx.GetNthTransform(0)
    return tx.Downcast() if hasattr(tx, "Downcast") else tx

"""Image input/output with validation (scalar, 2D/3D, finite, not constant)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .atomic import atomic_output
from .integrity import check_image_file

ImageLike = Union[str, os.PathLike, sitk.Image]

# ITU-R BT.601 luma weights, the usual RGB→grey conversion for photographs and slides.
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class ImageInput:
    """A validated scalar float32 image and the notes raised while reading it."""

    image: sitk.Image
    source: str
    warnings: list = field(default_factory=list)
    #: pixel type of the image as read (before the float32 conversion), e.g. ``sitk.sitkUInt8``
    pixel_id: int = sitk.sitkFloat32


def read_image(source: ImageLike, name: str = "image", *, allow_constant: bool = False) -> ImageInput:
    """Read and validate a scalar 2D or 3D image.

    Args:
        source: a file SimpleITK reads (NIfTI, NRRD, MHA, PNG/JPG/TIFF, ...), a DICOM series folder, or an
            already loaded ``sitk.Image``.
        name: the argument's name, used in error messages ("fixed", "moving", ...).
        allow_constant: accept an image whose voxels all have one value (masks).

    Returns:
        :class:`ImageInput` with a float32 image; a 2D RGB(A) image is converted to luminance (noted in
        ``warnings``); a JPEG file is put on a pixel grid (spacing 1, origin 0, noted in ``warnings`` when its
        header said otherwise): :func:`pixel_units_for_jpeg`.

    Raises:
        InputError: missing/unreadable file, truncated or corrupt file (gzip or NIfTI length check), 4D or
            vector image, NaN/Inf voxels (refused, also in NIfTI files whose reader would turn them into
            zeros), constant image.
    """
    warnings: list = []
    if isinstance(source, sitk.Image):
        image, label = source, "<in-memory image>"
    else:
        image, label = _read_path(Path(source), name), str(source)
        image = pixel_units_for_jpeg(image, Path(source), name, warnings)
    image = _to_scalar(image, name, warnings)
    check_image(image, name, allow_constant=allow_constant)
    return ImageInput(sitk.Cast(image, sitk.sitkFloat32), label, warnings, image.GetPixelID())


def _read_path(path: Path, name: str) -> sitk.Image:
    if not path.exists():
        raise InputError(f"{name}: file not found: {path}")
    if path.is_dir():
        return _read_dicom_series(path, name)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reader error"
        raise InputError(f"{name}: cannot read image {path} ({first[:200]})") from None
    check_image_file(path, name)  # what the reader accepted without a word: truncation, NaN in NIfTI
    return image


#: file suffixes whose resolution field is a print setting (JFIF dots per inch), not the size of a pixel
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")


def pixel_units_for_jpeg(image: sitk.Image, path: Path, name: str, warnings: list) -> sitk.Image:
    """A JPEG's JFIF density (usually 72 or 96 dpi, set by the camera or editor) is not the physical size of its
    pixels, but ITK's reader turns it into spacing (72 dpi → 0.353 mm). Put such an image on the pixel grid
    (spacing 1, origin 0, identity direction) so that transforms and landmarks of JPEG inputs are in pixels, as
    for JPEGs without a density; other formats keep their header. Notes the change in ``warnings``."""
    if path.suffix.lower() not in JPEG_SUFFIXES:
        return image
    dim = image.GetDimension()
    identity = np.eye(dim).ravel().tolist()
    if (np.allclose(image.GetSpacing(), 1.0) and np.allclose(image.GetOrigin(), 0.0)
            and np.allclose(image.GetDirection(), identity)):
        return image
    warnings.append(f"{name}: the JPEG's resolution field (spacing {image.GetSpacing()[0]:.4g}) is a print "
                    "setting, not the pixel size; pixel units used (spacing 1)")
    out = sitk.Image(image)
    out.SetSpacing([1.0] * dim)
    out.SetOrigin([0.0] * dim)
    out.SetDirection(identity)
    return out


def _read_dicom_series(folder: Path, name: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{name}: folder {folder} holds no DICOM series")
    # The largest series is the one a user means when pointing at a folder.
    files = max((reader.GetGDCMSeriesFileNames(str(folder), s) for s in series), key=len)
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{name}: cannot read DICOM series in {folder} ({str(exc).strip()[:200]})") from None


def _to_scalar(image: sitk.Image, name: str, warnings: list) -> sitk.Image:
    dim = image.GetDimension()
    ncomp = image.GetNumberOfComponentsPerPixel()
    if dim == 3 and image.GetSize()[2] == 1 and ncomp in (3, 4):
        image, dim = image[:, :, 0], 2  # PNG/JPG read as a single-slice volume by some IO paths
    if dim not in (2, 3):
        raise InputError(f"{name}: expected a 2D or 3D scalar image, got a {dim}D image of size {image.GetSize()}")
    if ncomp == 1:
        return image
    if dim == 2 and ncomp in (3, 4):
        channels = [sitk.Cast(sitk.VectorIndexSelectionCast(image, i), sitk.sitkFloat32) for i in range(3)]
        luminance = channels[0] * _LUMA[0] + channels[1] * _LUMA[1] + channels[2] * _LUMA[2]
        warnings.append(f"{name}: RGB image converted to luminance")
        return luminance
    raise InputError(
        f"{name}: expected a scalar image, got {ncomp} components per voxel ({dim}D); "
        "vector and multi-channel 3D images are not supported"
    )


def check_image(image: sitk.Image, name: str, *, allow_constant: bool = False) -> None:
    """Raise :class:`InputError` for empty images, NaN/Inf voxels, or (unless allowed) constant images."""
    if any(s < 2 for s in image.GetSize()):
        raise InputError(f"{name}: image too small, size {image.GetSize()} (need at least 2 voxels per axis)")
    arr = sitk.GetArrayViewFromImage(image)
    bad = int(np.count_nonzero(~np.isfinite(arr))) if arr.dtype.kind == "f" else 0
    if bad:
        raise InputError(f"{name}: image contains {bad} NaN/Inf voxels; replace them before registering")
    if not allow_constant and float(arr.max()) == float(arr.min()):
        raise InputError(f"{name}: image is constant (all voxels = {float(arr.min()):g}); nothing to register")


def read_mask(source: ImageLike | None, reference: sitk.Image, name: str = "mask") -> sitk.Image | None:
    """Read a mask (non-zero = inside), resample it onto ``reference``'s grid with nearest neighbour,
    and return a uint8 0/1 image; ``None`` passes through.

    Raises:
        InputError: unreadable, dimension mismatch, or empty on the reference grid.
    """
    if source is None:
        return None
    mask = read_image(source, name, allow_constant=True).image
    if mask.GetDimension() != reference.GetDimension():
        raise InputError(
            f"{name}: dimension {mask.GetDimension()}D does not match its image ({reference.GetDimension()}D)"
        )
    binary = sitk.Cast(sitk.NotEqual(mask, 0.0), sitk.sitkUInt8)
    on_ref = sitk.Resample(binary, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(on_ref)):
        raise InputError(f"{name}: mask is empty (no non-zero voxel inside its image's domain)")
    return on_ref


def write_image(image: sitk.Image, path, *, use_compression: bool = True) -> None:
    """Write ``image`` atomically; 2D images saved as PNG/JPG are rescaled to 8 bits."""
    suffix = Path(path).suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg") and image.GetPixelID() != sitk.sitkUInt8 and image.GetNumberOfComponentsPerPixel() == 1:
        image = sitk.Cast(sitk.RescaleIntensity(image, 0, 255), sitk.sitkUInt8)
    with atomic_output(path) as tmp:
        sitk.WriteImage(image, tmp, use_compression)

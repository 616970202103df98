"""The template space of TSPM: a template image scaled into a cubic canvas (paper §2.1).

The canvas is an image of ``N³`` voxels (N = 128) with isotropic spacing. Its header *is* the exact
physical↔canvas mapping: canvas voxel index ``(i, j, k)`` (ITK order x, y, z) maps to the template's physical
space (LPS mm) by :meth:`Template.canvas_to_physical`. The network predicts patch centres as canvas indices
divided by ``N − 1`` (values in [0, 1]).

A template is built from any 3D image (:func:`build_template`): the bounding box of its foreground, plus a
margin, is scaled so that its longest physical edge spans the canvas, centred, and the rest of the canvas is
filled with the template's background value. The shipped default is derived from the ICBM 2009a symmetric
T1 template (see ``data/NOTICE.md``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from ...errors import InputError
from ...geometry import Grid

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
DEFAULT_TEMPLATE_FILE = "tspm_template_icbm152_2009a_t1_128.nii.gz"
DEFAULT_TEMPLATE_NAME = "icbm152_2009a_t1_128"
CANVAS_SIZE = 128


@dataclass
class Template:
    """A template canvas.

    Attributes:
        name: short identifier stored in model files.
        image: float32 canvas ``(N, N, N)`` with isotropic spacing; index → LPS mm is the template mapping.
        sha256: fingerprint of the canvas voxels and geometry (see :func:`template_fingerprint`).
    """

    name: str
    image: sitk.Image
    sha256: str

    @property
    def grid(self) -> Grid:
        return Grid.from_image(self.image)

    @property
    def canvas_size(self) -> int:
        return int(self.image.GetSize()[0])

    @property
    def spacing_mm(self) -> float:
        return float(self.image.GetSpacing()[0])

    @property
    def direction(self) -> np.ndarray:
        return np.asarray(self.image.GetDirection(), dtype=float).reshape(3, 3)

    def canvas_to_physical(self) -> np.ndarray:
        """``(4, 4)`` matrix: canvas voxel index (x, y, z) → template physical point (LPS mm)."""
        return self.grid.index_to_world()

    def physical_to_canvas(self) -> np.ndarray:
        """``(4, 4)`` matrix: template physical point (LPS mm) → canvas voxel index."""
        return self.grid.world_to_index()

    def array(self) -> np.ndarray:
        """Canvas voxels, shape ``(N, N, N)`` in array order (z, y, x), float32."""
        return sitk.GetArrayFromImage(self.image).astype(np.float32)

    def foreground_mask(self, dilate_mm: float = 0.0) -> sitk.Image:
        """uint8 mask of the template's foreground (above 5 % of its range, holes filled), optionally dilated
        by ``dilate_mm``: the region used when registering a fixed image to the template."""
        from scipy import ndimage

        arr = self.array()
        lo, hi = float(arr.min()), float(np.percentile(arr, 99.5))
        mask = ndimage.binary_fill_holes(arr > lo + 0.05 * (hi - lo))
        radius = int(round(dilate_mm / self.spacing_mm))
        if radius > 0:
            mask = ndimage.binary_dilation(mask, ndimage.generate_binary_structure(3, 1), iterations=radius)
        out = sitk.GetImageFromArray(mask.astype(np.uint8))
        out.CopyInformation(self.image)
        return out

    def geometry(self) -> dict:
        return _rounded_geometry(self.image)

    def to_bytes(self) -> bytes:
        """The canvas as the bytes of a gzip-compressed NIfTI file (what model files embed); integer-valued
        canvases in [0, 255] are stored as uint8 (same fingerprint, a third of the size)."""
        return image_to_nifti_bytes(_compact(self.image))

    def write(self, path: os.PathLike) -> None:
        """Write the canvas (atomically) as a NIfTI file that :func:`load_template` reads back unchanged."""
        from ...io import atomic_output

        with atomic_output(path) as tmp:
            sitk.WriteImage(_compact(self.image), tmp, True)


def is_mirror_symmetric(template: "Template", min_correlation: float = 0.98) -> bool:
    """Whether the canvas is left-right symmetric about its mid-plane in x (canvas index i → N − 1 − i): the
    correlation of the canvas with its x-mirror is at least ``min_correlation`` (the shipped ICBM 2009a
    *symmetric* canvas: 1.0). Mirror augmentation and mirror averaging of TSPM need it."""
    arr = template.array()
    a, b = arr.ravel(), arr[:, :, ::-1].ravel()
    if float(a.std()) == 0.0:
        return True
    return float(np.corrcoef(a, b)[0, 1]) >= min_correlation


def _compact(image: sitk.Image) -> sitk.Image:
    arr = sitk.GetArrayViewFromImage(image)
    if arr.min() >= 0 and arr.max() <= 255 and np.array_equal(arr, np.round(arr)):
        return sitk.Cast(image, sitk.sitkUInt8)
    return image


def _rounded_geometry(image: sitk.Image) -> dict:
    # Rounded so that the float32 header round trip of NIfTI does not change the fingerprint.
    return {
        "size": [int(s) for s in image.GetSize()],
        "spacing": [round(float(s), 4) for s in image.GetSpacing()],
        "origin": [round(float(o), 3) for o in image.GetOrigin()],
        "direction": [round(float(d), 4) + 0.0 for d in image.GetDirection()],
    }


def template_fingerprint(image: sitk.Image) -> str:
    """SHA-256 over the canvas voxels (as float32) and its rounded geometry."""
    h = hashlib.sha256()
    h.update(json.dumps(_rounded_geometry(image), sort_keys=True).encode())
    h.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image), dtype=np.float32).tobytes())
    return h.hexdigest()


def image_to_nifti_bytes(image: sitk.Image) -> bytes:
    fd, tmp = tempfile.mkstemp(suffix=".nii.gz")
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, True)
        return Path(tmp).read_bytes()
    finally:
        os.remove(tmp)


def nifti_bytes_to_image(data: bytes, name: str = "template") -> sitk.Image:
    fd, tmp = tempfile.mkstemp(suffix=".nii.gz")
    os.close(fd)
    try:
        Path(tmp).write_bytes(data)
        return sitk.ReadImage(tmp)
    except RuntimeError:
        raise InputError(f"{name}: embedded template image cannot be read (corrupt model file?)") from None
    finally:
        os.remove(tmp)


def check_canvas(image: sitk.Image, name: str = "template") -> None:
    """Raise :class:`InputError` unless ``image`` is a 3D cubic canvas with isotropic spacing."""
    if image.GetDimension() != 3:
        raise InputError(f"{name}: expected a 3D canvas, got a {image.GetDimension()}D image")
    size, spacing = image.GetSize(), np.asarray(image.GetSpacing())
    if len(set(size)) != 1 or size[0] < 32:
        raise InputError(f"{name}: expected a cubic canvas of at least 32³ voxels, got size {size}")
    if np.ptp(spacing) > 1e-3 * spacing.max():
        raise InputError(f"{name}: expected isotropic canvas spacing, got {tuple(spacing)}")


def template_from_image(image: sitk.Image, name: str) -> Template:
    """Wrap an existing canvas image (validated) as a :class:`Template`."""
    check_canvas(image, name)
    image = sitk.Cast(image, sitk.sitkFloat32)
    return Template(name=name, image=image, sha256=template_fingerprint(image))


def load_template(path: Optional[os.PathLike] = None, name: Optional[str] = None) -> Template:
    """Load a canvas written by :func:`build_template` (default: the shipped ICBM 2009a canvas)."""
    if path is None:
        path, name = DATA_DIR / DEFAULT_TEMPLATE_FILE, name or DEFAULT_TEMPLATE_NAME
    path = Path(path)
    if not path.is_file():
        raise InputError(f"template: file not found: {path}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise InputError(f"template: cannot read image {path}") from None
    return template_from_image(image, name or path.name.split(".")[0])


def build_template(
    image: sitk.Image,
    *,
    name: str,
    canvas_size: int = CANVAS_SIZE,
    margin_mm: float = 4.0,
    threshold_fraction: float = 0.05,
    pixel_type: int = sitk.sitkFloat32,
) -> Template:
    """Scale an image's foreground into a cubic canvas (paper §2.1).

    Args:
        image: the template image (3D, any spacing/orientation; its direction is kept).
        name: identifier stored with models trained in this space.
        canvas_size: canvas edge in voxels (paper: 128).
        margin_mm: margin added around the foreground bounding box on each side.
        threshold_fraction: foreground = above ``min + fraction · (p99.5 − min)``.
        pixel_type: storage type of the canvas (``sitk.sitkUInt8`` keeps a shipped file small).

    Returns:
        The :class:`Template`; background outside the image is filled with the image's minimum.
    """
    if image.GetDimension() != 3:
        raise InputError(f"template: expected a 3D image, got a {image.GetDimension()}D image")
    arr = sitk.GetArrayViewFromImage(image)
    lo, hi = float(arr.min()), float(np.percentile(arr, 99.5))
    fg = np.argwhere(arr > lo + threshold_fraction * (hi - lo))
    if len(fg) == 0:
        raise InputError("template: image has no foreground above its background level")
    first, last = fg.min(axis=0)[::-1], fg.max(axis=0)[::-1]  # ITK order
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    extent = (last - first + 1) * spacing + 2 * margin_mm
    new_spacing = float(extent.max()) / canvas_size
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint(((first + last) / 2.0).tolist()))
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    half = (canvas_size - 1) / 2.0
    origin = centre - direction @ np.full(3, half * new_spacing)
    ref = sitk.Image([canvas_size] * 3, sitk.sitkFloat32)
    ref.SetSpacing([new_spacing] * 3)
    ref.SetOrigin(origin.tolist())
    ref.SetDirection(direction.ravel().tolist())
    src = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), new_spacing / 2.0)
    canvas = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, lo, sitk.sitkFloat32)
    if pixel_type != sitk.sitkFloat32:
        canvas = sitk.Cast(sitk.Round(canvas) if pixel_type in _INTEGER_TYPES else canvas, pixel_type)
    # Canonicalise through the file format so the fingerprint equals that of the written file.
    canvas = nifti_bytes_to_image(image_to_nifti_bytes(canvas))
    return template_from_image(canvas, name)


_INTEGER_TYPES = (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkInt32, sitk.sitkUInt32)

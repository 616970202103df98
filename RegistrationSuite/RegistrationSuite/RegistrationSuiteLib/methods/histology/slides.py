"""Reading whole-slide images: PNG/JPG/TIFF, and pyramidal TIFF/OME-TIFF/SVS through ``tifffile`` (pure pip).

Frames. A :class:`Slide` holds one pyramid level. Its *physical* frame is the one every output uses: level-0
pixel ``(x, y)`` (ANHIR landmark coordinates, pixel centres at integers) sits at ``origin0 + (x, y) * pixel_size``,
in µm when a TIFF carries a pixel size, in mm (LPS, ``unit == "mm"``) for images with a geometry header
(NRRD/MHA/NIfTI, e.g. slides exported from Slicer), otherwise in level-0 pixels (``unit == "px"``, 1 unit =
1 pixel, ``origin0 = 0``).
A pixel ``(i, j)`` of a level downsampled by ``f`` covers level-0 pixels ``[i f, (i + 1) f)``, so its centre is
at level-0 ``i f + (f - 1) / 2``: spacing ``f · pixel_size`` and origin ``(f - 1) / 2 · pixel_size``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ...errors import InputError

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".scn", ".btf")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_UM_PER_UNIT = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3}


@dataclass
class Slide:
    """One level of a slide and its geometry (see the module docstring for the frames).

    Attributes:
        pixels: ``(H, W, C)`` array as stored (uint8/uint16/float), ``C`` = 3 (RGB) or 1 (grey).
        pixel_size: physical size of a level-0 pixel (µm, or 1.0 when ``unit == "px"``).
        unit: ``"um"``, ``"mm"`` (geometry header) or ``"px"``.
        origin0: physical position ``(2,)`` of level-0 pixel (0, 0) (0 except for images with a header).
        downsample: ``(fx, fy)`` level-0 pixels per pixel of ``pixels``.
        level: pyramid level read; ``levels``: how many the file has.
        level0_size: ``(W0, H0)`` of level 0 (landmarks are checked against it).
        source: file name; ``notes``: what the reader decided (level taken, unit), for the output.
    """

    pixels: np.ndarray
    pixel_size: float = 1.0
    unit: str = "px"
    downsample: tuple = (1.0, 1.0)
    level: int = 0
    levels: int = 1
    level0_size: tuple = (0, 0)
    source: str = "<array>"
    notes: list = field(default_factory=list)
    origin0: tuple = (0.0, 0.0)

    @property
    def size(self) -> tuple:
        """``(W, H)`` of the level held."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])

    @property
    def spacing(self) -> np.ndarray:
        """Physical ``(sx, sy)`` of one pixel of ``pixels``."""
        return np.asarray(self.downsample, dtype=float) * self.pixel_size

    @property
    def origin(self) -> np.ndarray:
        """Physical position of pixel ``(0, 0)``'s centre."""
        return np.asarray(self.origin0, float) + (np.asarray(self.downsample, dtype=float) - 1.0) / 2.0 * self.pixel_size

    def level0_to_physical(self, xy: np.ndarray) -> np.ndarray:
        """Level-0 pixel coordinates ``(N, 2)`` (x, y) → physical ``(N, 2)``."""
        return np.asarray(self.origin0, float) + np.asarray(xy, dtype=float) * self.pixel_size

    def physical_to_level0(self, xy: np.ndarray) -> np.ndarray:
        """Physical ``(N, 2)`` → level-0 pixel coordinates ``(N, 2)``."""
        return (np.asarray(xy, dtype=float) - np.asarray(self.origin0, float)) / self.pixel_size

    def rgb_float(self) -> np.ndarray:
        """``(H, W, C)`` float32 in [0, 1]."""
        return to_unit_float(self.pixels)


def from_array(pixels: np.ndarray, *, pixel_size_um: Optional[float] = None, name: str = "image") -> Slide:
    """A :class:`Slide` from an in-memory ``(H, W)``, ``(H, W, 3|4)`` array (one level, level 0)."""
    pixels = _as_hwc(np.asarray(pixels), name, "array")
    slide = Slide(pixels, level0_size=(pixels.shape[1], pixels.shape[0]), source=f"<{name} array>")
    _set_unit(slide, pixel_size_um, name)
    return slide


def read_slide(path, name: str = "image", *, level: Optional[int] = None, resolution_um: Optional[float] = None,
               target_size: Optional[int] = None) -> Slide:
    """Read one level of a slide.

    Args:
        path: PNG/JPG/BMP, TIFF (single page or pyramidal, incl. OME-TIFF and SVS; needs ``tifffile`` for
            pyramids and pixel sizes) or anything SimpleITK reads as a 2D image.
        name: argument name for messages (``"fixed"``, ``"moving"``).
        level: pyramid level to read (0 = full resolution).
        resolution_um: requested pixel size (µm): the coarsest level whose pixels are not larger is read.
        target_size: with neither of the above, the coarsest level whose longest side is still at least this.

    Raises:
        InputError: missing/unreadable file, level out of range, a multi-page or non-2D image where one plane is
            needed, ``resolution_um`` without a pixel size in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{name}: file not found: {path}")
    if path.suffix.lower() in TIFF_SUFFIXES and _have_tifffile():
        slide = _read_tiff(path, name, level, resolution_um, target_size)
    else:
        if path.suffix.lower() in TIFF_SUFFIXES[2:]:
            raise InputError(f"{name}: reading {path.suffix} slides needs tifffile: pip install 'registration-suite[histology]'")
        slide = _read_plain(path, name, level, resolution_um)
    slide.notes.insert(0, _describe(slide, name))
    return slide


# ---------------------------------------------------------------------------------------------- plain images
def _read_plain(path: Path, name: str, level, resolution_um) -> Slide:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reader error"
        raise InputError(f"{name}: cannot read image {path} ({first[:160]})") from None
    arr = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 3:
        if image.GetSize()[2] != 1:
            raise InputError(f"{name}: {path.name} holds {image.GetSize()[2]} planes; a single 2D slide is needed "
                             "(for a pyramidal TIFF install tifffile: pip install 'registration-suite[histology]')")
        arr = arr[0]
    if level not in (None, 0):
        raise InputError(f"{name}: --level {level} requested but {path.name} has a single level (0)")
    if resolution_um is not None:
        raise InputError(f"{name}: --resolution-um needs a pixel size in the file; {path.name} carries none (use --level)")
    pixels = _as_hwc(arr, name, path.name)
    slide = Slide(pixels, level0_size=(pixels.shape[1], pixels.shape[0]), source=str(path))
    if path.suffix.lower() not in PLAIN_SUFFIXES:
        _header_geometry(slide, image, name, path.name)
    return slide


def _header_geometry(slide: Slide, image, name: str, file: str) -> None:
    """Pixel size (mm) and origin from an image header (NRRD/MHA/NIfTI).

    Axes flipped by the direction matrix (e.g. a slide created in Slicer's RAS frame and exported to LPS has
    direction diag(−1, −1)) are flipped back in the array, so that the slide's axes follow x and y; the
    level-0 pixel coordinates of landmarks then refer to the flipped array. Rotated axes are refused.
    """
    d = image.GetDimension()
    spacing = np.asarray(image.GetSpacing()[:2], float)
    origin = np.asarray(image.GetOrigin()[:2], float)
    direction = np.asarray(image.GetDirection(), float).reshape(d, d)[:2, :2]
    signs = np.sign(np.diag(direction))
    if not (np.allclose(direction, np.diag(signs), atol=1e-6) and np.all(signs != 0)):
        raise InputError(f"{name}: {file} has rotated axes (direction {direction.ravel().round(3).tolist()}); "
                         "resample it to an axis-aligned grid first")
    if not np.isclose(spacing[0], spacing[1], rtol=1e-3):
        raise InputError(f"{name}: {file} has non-square pixels ({spacing[0]:g} x {spacing[1]:g}); resample it first")
    size = np.array([slide.pixels.shape[1], slide.pixels.shape[0]], float)
    for axis, sign in enumerate(signs):  # axis 0 = x = array axis 1
        if sign < 0:
            slide.pixels = np.flip(slide.pixels, axis=1 - axis)
            origin[axis] -= (size[axis] - 1) * spacing[axis]
    if np.any(signs < 0):
        slide.notes.append(f"{name}: axes flipped to follow x and y (direction {np.diag(direction).tolist()})")
    if np.allclose(spacing, 1.0) and np.allclose(origin, 0.0):
        return  # no geometry beyond the pixel grid
    slide.pixel_size, slide.unit, slide.origin0 = float(spacing[0]), "mm", (float(origin[0]), float(origin[1]))


# ---------------------------------------------------------------------------------------------- TIFF
def _have_tifffile() -> bool:
    try:
        import tifffile  # noqa: F401
    except ImportError:
        return False
    return True


def _read_tiff(path: Path, name: str, level, resolution_um, target_size) -> Slide:
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tf:
            series = tf.series[0]
            levels = list(series.levels) if getattr(series, "levels", None) else [series]
            shapes = [_plane_shape(lv.shape, lv.axes, name, path.name) for lv in levels]
            pixel_size = _tiff_pixel_size(tf)
            chosen = _choose_level(shapes, pixel_size, level, resolution_um, target_size, name, path.name)
            arr = levels[chosen].asarray()
            axes = levels[chosen].axes
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types for damaged files: one clear line
        raise InputError(f"{name}: cannot read TIFF {path.name} ({type(exc).__name__}: {str(exc)[:160]})") from None
    arr = _squeeze_to_yxs(arr, axes)
    pixels = _as_hwc(arr, name, path.name)
    h0, w0 = shapes[0]
    slide = Slide(pixels, downsample=(w0 / pixels.shape[1], h0 / pixels.shape[0]), level=chosen, levels=len(levels),
                  level0_size=(w0, h0), source=str(path))
    _set_unit(slide, pixel_size, name)
    return slide


def _plane_shape(shape: Sequence[int], axes: str, name: str, file: str) -> tuple:
    """``(H, W)`` of a level; raises for a stack of planes (Z, T, C > 4, pages...)."""
    extra = {a: n for a, n in zip(axes, shape) if a not in "YXS" and n > 1}
    if "C" in extra and extra["C"] in (3, 4) and len(extra) == 1:
        extra = {}
    if extra:
        desc = ", ".join(f"{a}={n}" for a, n in extra.items())
        raise InputError(f"{name}: {file} is not a single 2D plane (axes {axes}: {desc}); "
                         "export the plane to register as its own image")
    return int(shape[axes.index("Y")]), int(shape[axes.index("X")])


def _squeeze_to_yxs(arr: np.ndarray, axes: str) -> np.ndarray:
    keep = [a for a in axes]
    for a in list(axes):
        if a not in "YXSC":
            arr = np.take(arr, 0, axis=keep.index(a))
            keep.remove(a)
    for a in ("C", "S"):  # planar RGB (C|S, Y, X) → (Y, X, C)
        if a in keep and keep.index(a) != len(keep) - 1:
            arr = np.moveaxis(arr, keep.index(a), -1)
            keep.remove(a)
            keep.append(a)
    return arr


def _choose_level(shapes, pixel_size, level, resolution_um, target_size, name, file) -> int:
    if level is not None:
        if not 0 <= level < len(shapes):
            raise InputError(f"{name}: --level {level} out of range; {file} has levels 0..{len(shapes) - 1}")
        return int(level)
    w0 = shapes[0][1]
    if resolution_um is not None:
        if pixel_size is None:
            raise InputError(f"{name}: --resolution-um needs a pixel size in the file; {file} carries none (use --level)")
        sizes = [pixel_size * w0 / s[1] for s in shapes]
        ok = [i for i, s in enumerate(sizes) if s <= resolution_um * 1.0001]
        return max(ok) if ok else 0
    if target_size is not None:
        ok = [i for i, s in enumerate(shapes) if max(s) >= target_size]
        return max(ok) if ok else 0
    return 0


def _tiff_pixel_size(tf) -> Optional[float]:
    """Level-0 pixel size in µm from OME, SVS (``MPP``) or TIFF resolution tags; ``None`` when absent."""
    if tf.is_ome and tf.ome_metadata:
        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tf.ome_metadata)
        if m:
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tf.ome_metadata)
            return float(m.group(1)) * _UM_PER_UNIT.get(unit.group(1) if unit else "µm", 1.0)
    page = tf.pages[0]
    m = re.search(r"MPP\s*=\s*([0-9.]+)", page.description or "")
    if m:
        return float(m.group(1))
    tags = page.tags
    if "XResolution" not in tags:
        return None
    num, den = tags["XResolution"].value
    if not num or not den:
        return None
    per_unit = num / den
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    if unit == 2:
        return 25400.0 / per_unit
    if unit == 3:
        return 10000.0 / per_unit
    ij = tf.imagej_metadata or {}
    if str(ij.get("unit", "")).lower() in ("micron", "um", "µm", "\\u00B5m"):
        return 1.0 / per_unit
    return None


# ---------------------------------------------------------------------------------------------- helpers
def _as_hwc(arr: np.ndarray, name: str, file: str) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"{name}: {file}: expected a 2D grey or RGB image, got an array of shape {arr.shape}")
    if arr.shape[2] in (2, 4):  # drop alpha
        arr = arr[:, :, : arr.shape[2] - 1]
    if min(arr.shape[:2]) < 16:
        raise InputError(f"{name}: {file}: image too small ({arr.shape[1]}x{arr.shape[0]} pixels, need >= 16)")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: {file}: image contains NaN/Inf values")
    return arr


def to_unit_float(arr: np.ndarray) -> np.ndarray:
    """An image array as float32 in [0, 1] (integers divided by their type's maximum)."""
    if arr.dtype.kind in "ui":
        return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    arr = arr.astype(np.float32)
    top = float(arr.max()) if arr.size else 1.0
    return arr / top if top > 1.0 else arr


def _set_unit(slide: Slide, pixel_size_um: Optional[float], name: str) -> None:
    if pixel_size_um is not None and np.isfinite(pixel_size_um) and pixel_size_um > 0:
        slide.pixel_size, slide.unit = float(pixel_size_um), "um"
    else:
        slide.pixel_size, slide.unit = 1.0, "px"


def _describe(slide: Slide, name: str) -> str:
    unit = {"um": f"{slide.pixel_size:g} µm/pixel at level 0", "mm": f"{slide.pixel_size:g} mm/pixel (image header)"}.get(
        slide.unit, "no pixel size (1 unit = 1 pixel)")
    w, h = slide.size
    return f"{name}: level {slide.level} of {slide.levels} read ({w}x{h} pixels), {unit}"

"""Checks of image files that the readers do not make.

- A truncated or corrupt gzip stream (``.nii.gz``, ``.gz``) is read by ITK's NIfTI reader with the missing
  voxels filled with zeros, and no error: here the whole stream is decompressed and its CRC and length are
  checked.
- An uncompressed NIfTI file shorter than its header says is read the same way: its size is checked.
- ITK's NIfTI reader turns NaN voxels into zeros: the float voxels of a NIfTI file are counted here, so that
  NaN/Inf voxels are refused as they are for every other format.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import InputError

_CHUNK = 1 << 24
# NIfTI-1 datatype code -> numpy dtype character (floats only need counting; others only sizes).
_FLOAT_CODES = {16: "f4", 64: "f8"}


def check_image_file(path: Path, name: str) -> None:
    """Raise :class:`InputError` when ``path`` is a truncated/corrupt gzip or NIfTI file, or a NIfTI file
    holding NaN/Inf voxels."""
    lower = path.name.lower()
    try:
        if lower.endswith((".nii", ".nii.gz")):
            _check_nifti(path, name)  # reads the whole (decompressed) stream: gzip's checks run too
        elif lower.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                while fh.read(_CHUNK):
                    pass
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{name}: {path} is truncated or corrupt (gzip check failed: {exc}); "
                         "it would be read with missing voxels set to zero") from None


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _nifti_header(fh):
    """``(endian, shape, datatype code, bits per voxel, data offset)`` or ``None`` when not NIfTI-1."""
    raw = fh.read(348)
    if len(raw) < 348:
        return None
    for endian in "<>":
        if struct.unpack(endian + "i", raw[:4])[0] == 348:
            break
    else:
        return None
    dims = struct.unpack(endian + "8h", raw[40:56])
    datatype, bitpix = struct.unpack(endian + "hh", raw[70:74])
    offset = int(struct.unpack(endian + "f", raw[108:112])[0])
    ndim = max(0, min(int(dims[0]), 7))
    shape = [max(1, int(d)) for d in dims[1:1 + ndim]]
    return endian, shape, int(datatype), int(bitpix), max(offset, 348)


def _check_nifti(path: Path, name: str) -> None:
    with _open(path) as fh:
        header = _nifti_header(fh)
        if header is None:
            return
        endian, shape, datatype, bitpix, offset = header
        fh.read(offset - 348)
        expected = int(np.prod(shape)) * bitpix // 8
        dtype = np.dtype(endian + _FLOAT_CODES[datatype]) if datatype in _FLOAT_CODES else None
        got, bad, rest = 0, 0, b""
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            got += len(chunk)
            if dtype is not None:
                data = rest + chunk
                usable = len(data) - len(data) % dtype.itemsize
                values = np.frombuffer(data[:usable], dtype=dtype)
                bad += int(np.count_nonzero(~np.isfinite(values)))
                rest = data[usable:]
    if got < expected:
        raise InputError(f"{name}: {path} is truncated ({got} of {expected} bytes of voxel data); "
                         "it would be read with missing voxels set to zero")
    if bad:
        raise InputError(f"{name}: image contains {bad} NaN/Inf voxels; replace them before registering")

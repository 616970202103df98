"""Labelled point sets (organ surface points): the record, and CSV/VTK/VTP/PLY reading and writing.

Coordinates are physical **LPS millimetres** (the frame of ITK/SimpleITK); every file written here holds LPS
points. Supported files:

- ``.csv``: a header ``x,y,z,label`` then one point per row (label an integer);
- ``.vtk`` (legacy) and ``.vtp`` (XML) polydata with an integer point-data array named ``label``; a file that
  3D Slicer marks as RAS (``SPACE=RAS`` in the ``.vtk`` header, a ``SPACE`` field-data string in ``.vtp``) is
  converted to LPS, a file marked LPS or not marked at all is read as LPS;
- ``.ply`` (ASCII or binary) with a ``label`` vertex property, always LPS (PLY has no coordinate mark). VTK's
  PLY reader/writer drop extra vertex
  properties and store float32 coordinates, so PLY is read and written here with NumPy (doubles kept).

Writers are atomic (:func:`~RegistrationSuiteLib.io.atomic.atomic_output`): a failed write leaves nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import InputError
from .atomic import atomic_output

PathLike = Union[str, os.PathLike]
POINT_SUFFIXES = (".csv", ".vtk", ".vtp", ".ply")
CSV_HEADER = ("x", "y", "z", "label")
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


@dataclass
class LabeledPoints:
    """Points with one integer organ label each.

    Attributes:
        points: ``(N, 3)`` float64 coordinates in mm, LPS.
        labels: ``(N,)`` int64 organ labels (any integers; 0 is an ordinary label here).

    Raises:
        InputError: wrong shapes, non-finite coordinates or non-integer labels (checked at construction).
    """

    points: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        self.points, self.labels = _validated(self.points, self.labels, "points")

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @property
    def unique_labels(self) -> np.ndarray:
        """Sorted distinct labels ``(L,)``."""
        return np.unique(self.labels)

    def counts(self) -> dict:
        """``{label: number of points}`` (plain ints, JSON-able)."""
        values, counts = np.unique(self.labels, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}

    def select(self, labels) -> "LabeledPoints":
        """The subset whose labels are in ``labels`` (order of points kept)."""
        keep = np.isin(self.labels, np.asarray(list(labels), dtype=np.int64))
        return LabeledPoints(self.points[keep], self.labels[keep])


def _validated(points, labels, name: str):
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected numeric coordinates of shape (N, 3), got {type(points).__name__}") from None
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f"{name}: expected coordinates of shape (N, 3) (3D, mm, LPS), got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        bad = int(np.count_nonzero(~np.isfinite(pts).all(axis=1)))
        raise InputError(f"{name}: expected finite coordinates, got {bad} point(s) with NaN/Inf")
    lab = np.asarray(labels)
    if lab.shape != (pts.shape[0],):
        raise InputError(f"{name}: expected one label per point, shape ({pts.shape[0]},), got shape {lab.shape}")
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        try:
            as_float = lab.astype(np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{name}: expected integer labels, got dtype {lab.dtype}") from None
        if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
            raise InputError(f"{name}: expected integer labels, got non-integer values such as {as_float[0]!r}")
        lab = as_float
    return pts, lab.astype(np.int64)


# ---------------------------------------------------------------------------------------------------- reading


def read_points(path: PathLike, name: str = "points") -> LabeledPoints:
    """Read a labelled point set (LPS mm) from ``.csv``, ``.vtk``, ``.vtp`` or ``.ply``.

    Args:
        path: the file.
        name: the argument's name for error messages (``"fixed"``, ``"moving"``).

    Raises:
        InputError: missing file, unknown suffix, wrong CSV columns, no ``label`` array, NaN coordinates.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{name}: file not found: {path}")
    suffix = path.suffix.lower()
    readers = {".csv": _read_csv, ".vtk": _read_vtk, ".vtp": _read_vtk, ".ply": _read_ply}
    if suffix not in readers:
        raise InputError(f"{name}: expected a point file ending with {', '.join(POINT_SUFFIXES)}, got {path.name}")
    points, labels = readers[suffix](path, name)
    return LabeledPoints(*_validated(points, labels, f"{name} ({path.name})"))


def _read_csv(path: Path, name: str):
    with open(path, newline="", encoding="utf-8-sig") as fh:
        header = fh.readline().strip()
        columns = tuple(c.strip().lower() for c in header.split(","))
        if columns != CSV_HEADER:
            raise InputError(f"{name}: expected CSV columns {','.join(CSV_HEADER)} in {path.name}, got '{header}'")
        rows = [line for line in fh.read().splitlines() if line.strip()]
    table = np.empty((len(rows), 4))
    for i, line in enumerate(rows):
        cells = line.split(",")
        if len(cells) != 4:
            raise InputError(f"{name}: expected 4 values per row in {path.name}, got {len(cells)} on line {i + 2}")
        try:
            table[i] = [float(c) for c in cells]
        except ValueError:
            raise InputError(f"{name}: expected numbers in {path.name}, got '{line.strip()}' on line {i + 2}") from None
    return table[:, :3], table[:, 3]


def _read_vtk(path: Path, name: str):
    import vtk
    from vtk.util import numpy_support

    reader = vtk.vtkXMLPolyDataReader() if path.suffix.lower() == ".vtp" else vtk.vtkPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    poly = reader.GetOutput()
    if poly is None or poly.GetPoints() is None or poly.GetNumberOfPoints() == 0:
        raise InputError(f"{name}: expected polydata with points in {path.name}, got none (unreadable or empty)")
    array = poly.GetPointData().GetArray("label")
    if array is None:
        names = [poly.GetPointData().GetArrayName(i) for i in range(poly.GetPointData().GetNumberOfArrays())]
        raise InputError(f"{name}: expected a point-data array 'label' in {path.name}, got arrays {names}")
    points = numpy_support.vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)
    labels = numpy_support.vtk_to_numpy(array)
    if labels.ndim != 1:
        raise InputError(f"{name}: expected a one-component 'label' array in {path.name}, got shape {labels.shape}")
    if vtk_coordinate_system(reader, poly) == "RAS":
        points = points * np.array([-1.0, -1.0, 1.0])  # RAS -> LPS
    return points, labels


def vtk_coordinate_system(reader, poly) -> str:
    """``"RAS"`` or ``"LPS"`` as 3D Slicer marks it: ``SPACE=RAS``/``SPACE=LPS`` in a legacy ``.vtk`` header, a
    string field-data array ``SPACE`` in ``.vtp``; files without a mark are LPS (this package's convention)."""
    import re

    header = reader.GetHeader() if hasattr(reader, "GetHeader") else ""
    match = re.search(r"SPACE=(RAS|LPS)", header or "", re.I)
    if match:
        return match.group(1).upper()
    field = poly.GetFieldData().GetAbstractArray("SPACE")
    if field is not None and field.GetNumberOfValues() > 0:
        value = str(field.GetVariantValue(0).ToString()).strip().upper()
        if value in ("RAS", "LPS"):
            return value
    return "LPS"


def _parse_ply_header(fh, path: Path, name: str):
    if fh.readline().strip() != b"ply":
        raise InputError(f"{name}: expected a PLY file starting with 'ply', got something else in {path.name}")
    fmt, elements = None, []
    while True:
        line = fh.readline()
        if not line:
            raise InputError(f"{name}: PLY header of {path.name} has no end_header")
        words = line.decode("ascii", "replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            return fmt, elements
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            elements[-1][2].append(("list", words[-1]) if words[1] == "list" else (words[1], words[2]))


def _read_ply(path: Path, name: str):
    with open(path, "rb") as fh:
        fmt, elements = _parse_ply_header(fh, path, name)
        if not elements or elements[0][0] != "vertex":
            raise InputError(f"{name}: expected the first PLY element to be 'vertex' in {path.name}")
        _, count, props = elements[0]
        if any(t == "list" for t, _ in props) or any(t not in _PLY_TYPES for t, _ in props):
            raise InputError(f"{name}: unsupported vertex property types in {path.name}: {props}")
        names = [p for _, p in props]
        for needed in CSV_HEADER:
            if needed not in names:
                raise InputError(f"{name}: expected vertex properties x,y,z,label in {path.name}, got {names}")
        if fmt == "ascii":
            data = np.loadtxt(fh, max_rows=count, ndmin=2)
            if data.shape != (count, len(names)):
                raise InputError(f"{name}: expected {count} vertex rows of {len(names)} values in {path.name}")
            columns = {p: data[:, i] for i, p in enumerate(names)}
        elif fmt in ("binary_little_endian", "binary_big_endian"):
            order = "<" if fmt == "binary_little_endian" else ">"
            dtype = np.dtype([(p, order + _PLY_TYPES[t]) for t, p in props])
            data = np.frombuffer(fh.read(dtype.itemsize * count), dtype=dtype)
            if data.shape[0] != count:
                raise InputError(f"{name}: PLY file {path.name} is truncated ({data.shape[0]} of {count} vertices)")
            columns = {p: data[p] for p in names}
        else:
            raise InputError(f"{name}: unknown PLY format '{fmt}' in {path.name}")
    points = np.stack([columns[c].astype(np.float64) for c in "xyz"], axis=1)
    return points, columns["label"]


# ---------------------------------------------------------------------------------------------------- writing


def write_points(points: LabeledPoints, path: PathLike) -> None:
    """Write a labelled point set atomically; the suffix (``.csv``, ``.vtk``, ``.vtp``, ``.ply``) picks the
    format. Coordinates are written as LPS mm with full double precision (CSV/PLY) or float64 arrays (VTK)."""
    if not isinstance(points, LabeledPoints):
        raise InputError(f"points: expected LabeledPoints, got {type(points).__name__}")
    suffix = Path(path).suffix.lower()
    writers = {".csv": _write_csv, ".vtk": _write_vtk, ".vtp": _write_vtk, ".ply": _write_ply}
    if suffix not in writers:
        raise InputError(f"output: point file must end with one of {', '.join(POINT_SUFFIXES)}, got {path}")
    with atomic_output(path) as tmp:
        writers[suffix](points, tmp)


def _write_csv(points: LabeledPoints, tmp: str) -> None:
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(",".join(CSV_HEADER) + "\n")
        for (x, y, z), lab in zip(points.points.tolist(), points.labels.tolist()):
            fh.write(f"{x!r},{y!r},{z!r},{lab}\n")


def _to_polydata(points: LabeledPoints):
    import vtk
    from vtk.util import numpy_support

    poly = vtk.vtkPolyData()
    vpts = vtk.vtkPoints()
    vpts.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(points.points), deep=True))
    poly.SetPoints(vpts)
    n = len(points)
    # One vertex cell per point so that viewers (Slicer, ParaView) display the points.
    verts = vtk.vtkCellArray()
    verts.SetData(numpy_support.numpy_to_vtkIdTypeArray(np.arange(n + 1, dtype=np.int64), deep=True),
                  numpy_support.numpy_to_vtkIdTypeArray(np.arange(n, dtype=np.int64), deep=True))
    poly.SetVerts(verts)
    lab = numpy_support.numpy_to_vtk(points.labels.astype(np.int32), deep=True)
    lab.SetName("label")
    poly.GetPointData().AddArray(lab)
    return poly


def _write_vtk(points: LabeledPoints, tmp: str) -> None:
    import vtk

    if tmp.lower().endswith(".vtp"):
        writer = vtk.vtkXMLPolyDataWriter()
    else:
        writer = vtk.vtkPolyDataWriter()
        writer.SetFileTypeToBinary()
        writer.SetHeader("RegistrationSuite labelled points SPACE=LPS")
    writer.SetFileName(tmp)
    writer.SetInputData(_to_polydata(points))
    if not writer.Write():
        raise OSError(f"VTK could not write {tmp}")


def _write_ply(points: LabeledPoints, tmp: str) -> None:
    n = len(points)
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment RegistrationSuite labelled points, LPS mm\n"
        f"element vertex {n}\nproperty double x\nproperty double y\nproperty double z\nproperty int label\n"
        "end_header\n"
    )
    table = np.empty(n, dtype=[("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("label", "<i4")])
    for i, c in enumerate("xyz"):
        table[c] = points.points[:, i]
    table["label"] = points.labels
    with open(tmp, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(table.tobytes())

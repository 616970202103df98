"""Labelled point files: round trips in every format, and every bad input gives a clear InputError."""

import numpy as np
import pytest

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.io.points import LabeledPoints, read_points, write_points


@pytest.fixture
def points():
    rng = np.random.default_rng(3)
    return LabeledPoints(rng.normal(scale=50.0, size=(37, 3)) + [10.0, -200.0, 1234.5], rng.integers(1, 6, size=37))


@pytest.mark.parametrize("suffix", [".csv", ".vtk", ".vtp", ".ply"])
def test_round_trip_keeps_coordinates_and_labels(tmp_path, points, suffix):
    path = tmp_path / f"pts{suffix}"
    write_points(points, path)
    back = read_points(path)
    np.testing.assert_array_equal(back.labels, points.labels)
    np.testing.assert_allclose(back.points, points.points, rtol=0, atol=1e-9)


def test_csv_has_documented_header(tmp_path, points):
    path = tmp_path / "pts.csv"
    write_points(points, path)
    assert path.read_text().splitlines()[0] == "x,y,z,label"


def test_ascii_ply_with_label_property(tmp_path):
    path = tmp_path / "a.ply"
    path.write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
                    "property float z\nproperty uchar label\nelement face 0\nproperty list uchar int vertex_indices\n"
                    "end_header\n1 2 3 4\n5 6 7 8\n")
    pts = read_points(path)
    np.testing.assert_allclose(pts.points, [[1, 2, 3], [5, 6, 7]])
    np.testing.assert_array_equal(pts.labels, [4, 8])


def test_wrong_csv_columns(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("x,y,label\n1,2,3\n")
    with pytest.raises(InputError, match=r"fixed: expected CSV columns x,y,z,label .* got 'x,y,label'"):
        read_points(path, "fixed")


def test_csv_row_with_missing_value(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("x,y,z,label\n1,2,3,1\n1,2,3\n")
    with pytest.raises(InputError, match=r"expected 4 values per row .* got 3 on line 3"):
        read_points(path)


def test_nan_coordinates_rejected(tmp_path):
    path = tmp_path / "nan.csv"
    path.write_text("x,y,z,label\n1,2,3,1\nnan,2,3,1\n")
    with pytest.raises(InputError, match=r"moving .*expected finite coordinates, got 1 point\(s\) with NaN"):
        read_points(path, "moving")


def test_non_integer_labels_rejected(tmp_path):
    path = tmp_path / "lab.csv"
    path.write_text("x,y,z,label\n1,2,3,1.5\n")
    with pytest.raises(InputError, match="expected integer labels"):
        read_points(path)


def test_vtk_without_label_array(tmp_path, points):
    import vtk
    from vtk.util import numpy_support

    poly = vtk.vtkPolyData()
    vp = vtk.vtkPoints()
    vp.SetData(numpy_support.numpy_to_vtk(points.points, deep=True))
    poly.SetPoints(vp)
    path = tmp_path / "nolabel.vtk"
    writer = vtk.vtkPolyDataWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(poly)
    writer.Write()
    with pytest.raises(InputError, match=r"expected a point-data array 'label'"):
        read_points(path)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_points(tmp_path / "none.csv", "fixed")
    other = tmp_path / "pts.txt"
    other.write_text("1 2 3\n")
    with pytest.raises(InputError, match=r"expected a point file ending with .csv, .vtk, .vtp, .ply"):
        read_points(other)


@pytest.mark.parametrize(
    "coords, labels, message",
    [
        (np.zeros((4, 2)), np.ones(4), r"expected coordinates of shape \(N, 3\).*got shape \(4, 2\)"),
        (np.zeros((4, 3)), np.ones(3), r"expected one label per point"),
        (np.array([[0, 0, np.inf]]), np.ones(1), "expected finite coordinates"),
    ],
)
def test_labeled_points_validation(coords, labels, message):
    with pytest.raises(InputError, match=message):
        LabeledPoints(coords, labels)


def test_failed_write_leaves_nothing(tmp_path, points):
    with pytest.raises(InputError, match="point file must end with"):
        write_points(points, tmp_path / "out.xyz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix, system", [(".vtk", "RAS"), (".vtp", "RAS"), (".vtk", "LPS")])
def test_points_written_by_slicer_read_in_lps(tmp_path, suffix, system):
    """A model written the way 3D Slicer writes it (model storage node, RAS or LPS file) reads as LPS."""
    slicer = pytest.importorskip("slicer", reason="needs slicer-core to write a file as Slicer does")
    import vtk

    from RegistrationSuiteLib.mrml.scene import close_headless_scene, create_headless_scene

    ras = np.array([[10.0, 20.0, 30.0], [-5.0, 7.0, 1.0], [3.0, -4.0, 9.0]])
    pts = vtk.vtkPoints()
    for p in ras:
        pts.InsertNextPoint(*p)
    poly = vtk.vtkPolyData()
    poly.SetPoints(pts)
    lab = vtk.vtkIntArray()
    lab.SetName("label")
    for v in (1, 1, 2):
        lab.InsertNextValue(v)
    poly.GetPointData().AddArray(lab)
    scene = create_headless_scene(set_global=False)
    try:
        model = scene.AddNewNodeByClass("vtkMRMLModelNode")
        model.SetAndObservePolyData(poly)
        storage = scene.AddNewNodeByClass("vtkMRMLModelStorageNode")
        storage.SetCoordinateSystem(getattr(slicer.vtkMRMLStorageNode, f"CoordinateSystem{system}"))
        storage.SetFileName(str(tmp_path / f"m{suffix}"))
        assert storage.WriteData(model)
    finally:
        close_headless_scene(scene)
    got = read_points(tmp_path / f"m{suffix}")
    np.testing.assert_allclose(got.points, ras * [-1, -1, 1], atol=1e-5)  # the same points, in LPS
    np.testing.assert_array_equal(got.labels, [1, 1, 2])

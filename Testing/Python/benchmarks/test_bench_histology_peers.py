"""``Testing/Benchmarks/bench_histology.py``: the SimpleITK peer rows are reproducible. With ITK on several threads
the same seeded Mattes-MI registration ended at different optima from one call to the next (the lesion row gave
2.61 % and 1.10 % median rTRE); the peer now runs ITK on one thread. Small synthetic slides, nothing measured."""

import sys
from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "Benchmarks"))
import bench_histology as bh  # noqa: E402


def _slides():
    """A textured 'slide' and a copy rotated by 8° and shifted, anisotropic pixels (0.5 × 0.7)."""
    rng = np.random.default_rng(3)
    arr = np.zeros((140, 120), np.float32)
    yy, xx = np.mgrid[:140, :120]
    for _ in range(25):
        cy, cx, r = rng.uniform(20, 120), rng.uniform(20, 100), rng.uniform(4, 12)
        arr += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    fixed = sitk.GetImageFromArray(arr)
    fixed.SetSpacing((0.5, 0.7))
    truth = sitk.Euler2DTransform((30.0, 49.0), np.deg2rad(8.0), (2.0, -1.5))
    moving = sitk.Resample(fixed, fixed, truth.GetInverse(), sitk.sitkLinear, 0.0)
    return fixed, moving, truth


@pytest.mark.parametrize("bspline", [False, True])
def test_sitk_peer_repeats_exactly_and_runs_single_threaded(many_itk_threads, bspline):
    fixed, moving, truth = _slides()
    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(2),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    points = [(20.0, 30.0), (40.0, 60.0), (50.0, 20.0), (30.0, 49.0)]
    runs = []
    for _ in range(2):
        tx = bh.sitk_register(fixed, moving, sitk.AffineTransform(init), bspline)
        runs.append(np.array([tx.TransformPoint(p) for p in points]))
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == bh.PEER_ITK_THREADS == 1
    np.testing.assert_array_equal(runs[0], runs[1])  # bit for bit, not merely close
    expected = np.array([truth.TransformPoint(p) for p in points])
    assert np.abs(runs[0] - expected).max() < 1.0  # and it did register (mm; the start is off by up to ~7 mm)
    assert np.abs(np.array(points) - expected).max() > 5.0


def test_peer_images_are_on_the_pixel_grid_of_the_landmarks(tmp_path):
    """A JPEG written at 72 dpi reads with 0.357 mm spacing in SimpleITK; the peers work on pixels (the landmark
    CSVs and our search's start are in level-0 pixels), so ``_grey`` must give spacing 1, origin 0."""
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path / "slide.jpg"
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(path, dpi=(72, 72))
    assert sitk.ReadImage(str(path)).GetSpacing()[0] == pytest.approx(25.4 / 72)  # what the peers used to get
    img = bh._grey(path)
    assert img.GetSize() == (60, 40)
    assert img.GetSpacing() == (1.0, 1.0) and img.GetOrigin() == (0.0, 0.0)
    # a pixel landmark maps to the same pixel index, so a B-spline on this grid covers every landmark
    assert img.TransformPhysicalPointToIndex((59.0, 39.0)) == (59, 39)

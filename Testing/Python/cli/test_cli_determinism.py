"""Same inputs, same options, same seed → the same written transform, for every command (issue 15).

Each command in ``CASES`` runs three times in separate processes: twice with one seed (the transforms must be
bit-identical, or within the case's stated ``tolerance_mm``), once with another seed (a stochastic method must
then give a different transform, which shows the seed reaches its random steps; a deterministic one must give
the same). The runs use several threads on purpose: thread-order-dependent sums are one of the causes.

Adding a command: append a :class:`Case` to ``CASES`` with a function that writes its (small) inputs into the
run folder and the command line without ``--seed``; set ``stochastic=False`` if ``--seed`` must not matter,
and ``tolerance_mm`` only where bit-identity is documented as not guaranteed (README "Reproducibility").
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.sample_data import known_rigid_case, load_sample, sample_path

CLI = [sys.executable, "-m", "RegistrationSuiteLib"]
SEED, OTHER_SEED = 0, 1  # 0 is the default seed, the one the partial-prereg bug hit
THREADS = "2"  # torch and ITK threads of every run: multi-threaded, and the same in every run
PROBES_PER_AXIS = 7


@dataclass(frozen=True)
class Case:
    """One command to check.

    Attributes:
        name: test id.
        make_inputs: writes the inputs into the run folder (called once per run; must be deterministic).
        args: command line after ``python -m RegistrationSuiteLib``, relative to the run folder, without ``--seed``.
        output: the transform file the command writes (relative to the run folder), fixed → moving.
        fixed: the fixed image (relative to the run folder); the transforms are compared on a grid over it.
        stochastic: whether ``--seed`` changes the result.
        tolerance_mm: largest allowed displacement between two same-seed runs; 0 means bit-identical.
    """

    name: str
    make_inputs: Callable[[Path], None]
    args: Tuple[str, ...]
    output: str
    fixed: str
    stochastic: bool = True
    tolerance_mm: float = 0.0


def _rigid_inputs(folder: Path) -> None:
    fixed, _ = known_rigid_case(load_sample("T1"))
    sitk.WriteImage(fixed, str(folder / "fixed.nii.gz"))


def _partial_inputs(folder: Path) -> None:
    # a 16 x 24 x 40 mm slab of the T1 sample as the partial moving image (as in test_cli_partial_prereg)
    crop = sitk.RegionOfInterest(sitk.ReadImage(str(sample_path("T1"))), [44, 48, 36], [8, 12, 20])
    sitk.WriteImage(crop, str(folder / "crop.nii.gz"))


def _organ_labels(shift_vox=(0, 0, 0)) -> sitk.Image:
    """Two ellipsoid organs (labels 1, 2) on an anisotropic 2 x 2 x 3 mm grid; ``shift_vox`` moves organ 2."""
    z, y, x = np.mgrid[0:28, 0:48, 0:56].astype(float)
    arr = np.zeros(z.shape, np.uint8)
    arr[((x - 18) / 9) ** 2 + ((y - 24) / 11) ** 2 + ((z - 14) / 6) ** 2 <= 1] = 1
    sx, sy, sz = shift_vox
    arr[((x - 38 - sx) / 8) ** 2 + ((y - 24 - sy) / 9) ** 2 + ((z - 14 - sz) / 7) ** 2 <= 1] = 2
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 2.0, 3.0))
    img.SetOrigin((-50.0, 20.0, 5.0))
    return img


def _organ_inputs(folder: Path) -> None:
    sitk.WriteImage(_organ_labels(), str(folder / "fixed.nii.gz"))
    sitk.WriteImage(_organ_labels(shift_vox=(3, 1, 0)), str(folder / "moving.nii.gz"))


def _slide(angle_deg: float, size: int = 160) -> np.ndarray:
    """RGB uint8 synthetic stained section (an ellipse and a lobe with smooth texture), rotated by ``angle_deg``."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = ((xx - 0.45) / 0.27) ** 2 + ((yy - 0.52) / 0.2) ** 2 < 1
    tissue = body | (((xx - 0.68) / 0.1) ** 2 + ((yy - 0.3) / 0.09) ** 2 < 1)
    texture = ndimage.gaussian_filter(rng.normal(size=(size, size)), size / 40)
    density = tissue * (0.25 + 0.75 * (texture - texture.min()) / np.ptp(texture))
    density = ndimage.rotate(ndimage.gaussian_filter(density, 0.7), angle_deg, reshape=False, order=1)
    rgb = 0.96 * np.exp(-1.5 * density[..., None] * np.array([0.55, 0.85, 0.45]))
    return np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)


def _histology_inputs(folder: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(_slide(0.0), isVector=True), str(folder / "fixed.png"))
    sitk.WriteImage(sitk.GetImageFromArray(_slide(25.0), isVector=True), str(folder / "moving.png"))


def _no_inputs(folder: Path) -> None:
    """The case reads the shipped samples directly."""


def _demo_inputs(folder: Path) -> None:
    _rigid_inputs(folder)  # only for the comparison grid: demo builds the same case itself


CASES: Sequence[Case] = (
    Case("rigid-search", _rigid_inputs,
         ("rigid-search", "--fixed", "fixed.nii.gz", "--moving", str(sample_path("T2")), "--output", "t.tfm",
          "--device", "cpu"), "t.tfm", "fixed.nii.gz"),
    Case("partial-prereg", _partial_inputs,
         ("partial-prereg", "--fixed", str(sample_path("T2")), "--moving", "crop.nii.gz", "--output", "t.tfm",
          "--device", "cpu"), "t.tfm", str(sample_path("T2"))),
    Case("organ-points", _organ_inputs,
         ("organ-points", "--fixed", "fixed.nii.gz", "--moving", "moving.nii.gz", "--output", "t.h5",
          "--points-per-organ", "300", "--device", "cpu"), "t.h5", "fixed.nii.gz"),
    Case("deformable", _no_inputs,
         ("deformable", "--fixed", str(sample_path("T1")), "--moving", str(sample_path("T2")), "--output", "t.h5",
          "--spacing", "4", "--io-steps", "40", "--device", "cpu"), "t.h5", str(sample_path("T1")),
         stochastic=False),  # without a network nothing is random (the seed only reaches torch's generator)
    Case("histology", _histology_inputs,
         ("histology", "--fixed", "fixed.png", "--moving", "moving.png", "--output", "t.h5", "--working-size", "160",
          "--device", "cpu"), "t.h5", "fixed.png", stochastic=False),  # classical stages only: no random step
    Case("demo", _demo_inputs,
         ("demo", "--output-dir", "demo", "--no-scene", "--device", "cpu"),
         "demo/transform_fixed_to_moving.h5", "fixed.nii.gz"),
)


# ----------------------------------------------------------------------------------------------- helpers
def run_case(case: Case, seed: int, folder: Path) -> sitk.Transform:
    """Run ``case`` with ``seed`` in a fresh process in ``folder``; returns the transform it wrote."""
    folder.mkdir(parents=True, exist_ok=True)
    case.make_inputs(folder)
    # each run computes everything itself: an empty on-disk cache (partial-prereg caches fixed → template)
    env = dict(os.environ, OMP_NUM_THREADS=THREADS, MKL_NUM_THREADS=THREADS,
               ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=THREADS, REGISTRATION_SUITE_CACHE=str(folder / "cache"))
    proc = subprocess.run(CLI + list(case.args) + ["--seed", str(seed), "--quiet"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{case.name} (seed {seed}) failed: {proc.stderr[-2000:]}"
    return sitk.ReadTransform(str(folder / case.output))


def transform_parameters(transform: sitk.Transform) -> np.ndarray:
    """All parameters and fixed parameters of ``transform`` (composites flattened), for exact comparison."""
    composite = transform if isinstance(transform, sitk.CompositeTransform) else sitk.CompositeTransform(transform)
    parts = []
    for i in range(composite.GetNumberOfTransforms()):
        t = composite.GetNthTransform(i)
        parts += [np.asarray(t.GetParameters(), float), np.asarray(t.GetFixedParameters(), float)]
    return np.concatenate(parts)


def probe_points(image_path: Path, per_axis: int = PROBES_PER_AXIS) -> np.ndarray:
    """``(per_axis³, 3)`` LPS points on a regular grid spanning the image (voxel centres, corner to corner)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(image_path))
    reader.ReadImageInformation()
    size = reader.GetSize()
    axes = [np.linspace(0, s - 1, per_axis) for s in size]
    index = np.array(np.meshgrid(*axes, indexing="ij")).reshape(len(size), -1).T
    origin, spacing = np.asarray(reader.GetOrigin()), np.asarray(reader.GetSpacing())
    direction = np.asarray(reader.GetDirection()).reshape(len(size), len(size))
    return origin + (index * spacing) @ direction.T


def max_displacement_mm(a: sitk.Transform, b: sitk.Transform, points: np.ndarray) -> float:
    """Largest distance between where ``a`` and ``b`` map the same points (mm)."""
    return max(float(np.linalg.norm(np.subtract(a.TransformPoint(tuple(map(float, p))),
                                                b.TransformPoint(tuple(map(float, p)))))) for p in points)


_RUNS: Dict[Tuple[str, int, int], Tuple[sitk.Transform, Path]] = {}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(case, seed, repeat)`` → (transform, folder), each run made once per test session."""

    def get(case: Case, seed: int, repeat: int = 0):
        key = (case.name, seed, repeat)
        if key not in _RUNS:
            folder = tmp_path_factory.mktemp(f"{case.name}-seed{seed}-run{repeat}")
            _RUNS[key] = (run_case(case, seed, folder), folder)
        return _RUNS[key]

    return get


def _cases():
    return [pytest.param(c, id=c.name, marks=pytest.mark.slow) for c in CASES]


# ----------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", _cases())
def test_same_seed_same_transform(case, runs):
    first, folder = runs(case, SEED, 0)
    second, _ = runs(case, SEED, 1)
    if case.tolerance_mm == 0.0:
        a, b = transform_parameters(first), transform_parameters(second)
        assert a.shape == b.shape and np.array_equal(a, b), (
            f"{case.name}: two runs with seed {SEED} differ (max parameter difference "
            f"{np.abs(a - b).max() if a.shape == b.shape else 'shape'})")
    else:
        moved = max_displacement_mm(first, second, probe_points(folder / case.fixed))
        assert moved <= case.tolerance_mm, f"{case.name}: same-seed runs differ by {moved:.3g} mm"


@pytest.mark.parametrize("case", _cases())
def test_other_seed(case, runs):
    first, _ = runs(case, SEED, 0)
    other, _ = runs(case, OTHER_SEED, 0)
    a, b = transform_parameters(first), transform_parameters(other)
    identical = a.shape == b.shape and np.array_equal(a, b)
    if case.stochastic:
        # The seed must reach the random steps, else "same seed, same result" above would prove nothing. How far
        # apart the two results are is the method's robustness to its sampling, not a reproducibility property
        # (partial-prereg on this 16 x 24 x 40 mm slab misses with seed 1), so it is not bounded here.
        assert not identical, f"{case.name}: --seed {OTHER_SEED} gave exactly the transform of --seed {SEED}"
    else:
        assert identical, f"{case.name} is documented as deterministic, but --seed changed its transform"


def test_helpers_detect_a_difference(tmp_path):
    """The comparison helpers are not blind: a 0.01 mm shift is seen by both."""
    image = sitk.Image([8, 9, 10], sitk.sitkUInt8)
    image.SetSpacing((1.0, 2.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "g.nii.gz"))
    a, b = sitk.TranslationTransform(3, (1.0, 2.0, 3.0)), sitk.TranslationTransform(3, (1.0, 2.0, 3.01))
    assert not np.array_equal(transform_parameters(a), transform_parameters(b))
    assert max_displacement_mm(a, b, probe_points(tmp_path / "g.nii.gz")) == pytest.approx(0.01)
    assert probe_points(tmp_path / "g.nii.gz")[-1] == pytest.approx([7.0, 16.0, 27.0])

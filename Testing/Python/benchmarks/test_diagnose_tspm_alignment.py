"""diagnose_tspm_pipeline.py's measures of the fixed → template alignment: distances between two alignments over
the template's brain region and the similarity fit (the registrations themselves are what it diagnoses)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "Benchmarks"))
diagnose = pytest.importorskip("diagnose_tspm_pipeline")


def test_alignment_distance_of_a_known_scale_about_the_origin():
    points = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, -40.0, 30.0]])
    scaled = np.diag([0.9, 0.9, 0.9, 1.0])
    out = diagnose.alignment_distance(points, np.eye(4), scaled)
    assert out["max_mm"] == pytest.approx(5.0)  # 10 % of the 50 mm point
    assert out["mean_mm"] == pytest.approx((0.0 + 1.0 + 5.0) / 3, abs=0.01)


def test_fit_similarity_recovers_a_known_similarity():
    rng = np.random.default_rng(4)
    source = rng.uniform(-60, 60, (40, 3))
    r = Rotation.from_euler("xyz", [12.0, -30.0, 7.0], degrees=True).as_matrix()
    target = 0.83 * source @ r.T + np.array([5.0, -7.0, 11.0])
    matrix, scale = diagnose.fit_similarity(source, target)
    assert scale == pytest.approx(0.83)
    np.testing.assert_allclose(matrix[:3, :3], 0.83 * r, atol=1e-9)
    np.testing.assert_allclose(matrix[:3, 3], [5.0, -7.0, 11.0], atol=1e-9)


def test_brain_points_lie_in_the_template_foreground():
    from RegistrationSuiteLib.methods.partial_prereg.template import load_template

    template = load_template()
    points = diagnose.brain_points(template, stride=6)
    assert len(points) > 500
    index = np.rint(np.asarray([template.image.TransformPhysicalPointToContinuousIndex(p) for p in points[::50]]))
    mask = template.foreground_mask()
    assert all(mask[tuple(int(v) for v in i)] == 1 for i in index)

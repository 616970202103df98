"""Progress/cancel plumbing and the common result record."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib import RegistrationCancelled, RegistrationResult
from RegistrationSuiteLib.progress import Progress, as_progress


def test_progress_subranges_map_onto_parent():
    seen = []
    p = Progress(lambda f, m: seen.append((round(f, 6), m)))
    p.sub(0.5, 1.0).sub(0.0, 0.5).report(0.5, "half of a quarter")
    p.report(2.0, "clipped")
    assert seen == [(0.625, "half of a quarter"), (1.0, "clipped")]


def test_cancel_raises():
    p = as_progress(None, cancel=lambda: True)
    with pytest.raises(RegistrationCancelled):
        p.report(0.1)
    assert as_progress(p) is p


def test_result_summary_is_json_and_exact():
    tx = sitk.Euler3DTransform((0, 0, 0), 0.0, 0.0, 0.5, (1.0, 2.0, 3.0))
    res = RegistrationResult("demo", tx, score=0.5, confidence=float("nan"),
                             timings={"total": 1.23456}, diagnostics={"arr": np.arange(3), "x": np.float32(2)})
    s = json.loads(res.to_json())
    assert s["method"] == "demo" and s["confidence"] is None and s["diagnostics"]["arr"] == [0, 1, 2]
    m = np.array(s["fixed_to_moving_lps"])
    np.testing.assert_allclose(m[:3, 3], [1.0, 2.0, 3.0], atol=1e-8)
    assert res.is_linear and res.dimension == 3

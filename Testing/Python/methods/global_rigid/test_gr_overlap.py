"""Impossible minimum overlap is reported before the search, naming γ; low confidence is flagged doubtful."""

import time

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import RegistrationFailed
from RegistrationSuiteLib.methods.global_rigid import GlobalRigidConfig, register_global_rigid
from RegistrationSuiteLib.methods.global_rigid.overlap import max_overlap_fraction
from RegistrationSuiteLib.methods.global_rigid.register import DOUBTFUL_CONFIDENCE, doubtful_reasons


def _box(size_mm, spacing=5.0, seed=0):
    n = [int(round(s / spacing)) for s in size_mm]
    img = sitk.GetImageFromArray(np.random.default_rng(seed).random(n[::-1]).astype(np.float32))
    img.SetSpacing((spacing,) * 3)
    return img


def test_bound_known_values():
    # a 40 mm slab cannot hold half of a 150 mm cube whatever the pose: 40 * sqrt(3) * 150² / 150³ = 0.462
    assert max_overlap_fraction([300, 300, 40], [150, 150, 150]) == pytest.approx(40 * np.sqrt(3) / 150)
    assert max_overlap_fraction([100, 100, 100], [50, 60, 70]) == pytest.approx(1.0)
    assert max_overlap_fraction([100, 10], [30, 30]) == pytest.approx(10 * np.hypot(30, 30) / 900)  # 2D


def test_impossible_overlap_fails_fast_naming_gamma():
    fixed, moving = _box([300, 300, 40]), _box([150, 150, 150], seed=1)
    t0 = time.perf_counter()
    with pytest.raises(RegistrationFailed) as err:
        register_global_rigid(fixed, moving, GlobalRigidConfig(min_overlap=0.5, device="cpu"))
    assert time.perf_counter() - t0 < 30  # before the search, not after it (a generous bound)
    text = str(err.value)
    assert "γ = min_overlap = 0.5" in text and "smaller image's volume" in text and "--min-overlap" in text
    assert "0.46" in text and "mask" not in text


def test_doubtful_below_threshold_only():
    assert doubtful_reasons(DOUBTFUL_CONFIDENCE / 2) and "confidence" in doubtful_reasons(DOUBTFUL_CONFIDENCE / 2)[0]
    assert doubtful_reasons(DOUBTFUL_CONFIDENCE * 2) == []
    assert doubtful_reasons(0.0) and doubtful_reasons(0.05) == []  # a zero confidence is flagged, a typical one not
    assert doubtful_reasons(float("nan"))

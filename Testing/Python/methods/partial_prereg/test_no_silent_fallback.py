"""No silent fallbacks: a refinement level ITK cannot run is reported and flags the result doubtful; the
fixed → template cache is keyed by every setting its result depends on."""

import types

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.methods.partial_prereg import PartialPreregConfig
from RegistrationSuiteLib.methods.partial_prereg import refine as refine_module
from RegistrationSuiteLib.methods.partial_prereg import register as register_module
from RegistrationSuiteLib.progress import as_progress


def _blob(shift=0.0):
    z, y, x = np.mgrid[:24, :24, :24].astype(np.float32)
    arr = np.exp(-((x - 12 - shift) ** 2 + (y - 11) ** 2 + (z - 13) ** 2) / 30.0).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 2.0, 2.0))
    return img


def test_refinement_level_itk_cannot_run_is_reported(monkeypatch):
    real_method = refine_module._method

    class Failing:  # the real ITK registration, whose optimisation fails the way ITK reports it
        def __init__(self, *a, **k):
            self._real = real_method(*a, **k)

        def __getattr__(self, name):
            return getattr(self._real, name)

        def Execute(self, *a):
            raise RuntimeError("itk::ERROR: Too many samples map outside moving image buffer: 10 / 100")

    monkeypatch.setattr(refine_module, "_method", Failing)
    init = np.eye(4)
    init[0, 3] = 2.0
    out = refine_module.refine_rigid(_blob(), _blob(1.0), init, metric="mi")
    assert len(out.skipped_levels) == len(refine_module.LEVELS)
    assert "outside moving image buffer" in out.skipped_levels[0]
    assert out.to_dict()["skipped_levels"] == list(out.skipped_levels)
    diag = {"ransac": {"inlier_ratio": 0.9}, "refinement": dict(out.to_dict(), metric="mi", improved=True)}
    warnings = []
    register_module._flag_doubtful(diag, warnings, PartialPreregConfig())
    assert any("not refined" in r and "outside moving image buffer" in r for r in diag["doubtful"])
    assert any(w.startswith("doubtful result: refinement: level 1/") for w in warnings)


def test_fixed_to_template_cache_keyed_by_refine_iterations(monkeypatch):
    import RegistrationSuiteLib.methods.global_rigid as gr

    calls = []

    def fake_search(*a, **k):
        calls.append(1)
        return types.SimpleNamespace(fixed_to_moving_matrix=np.eye(4), score=0.5, confidence=0.1)

    monkeypatch.setattr(gr, "register_global_rigid", fake_search)
    monkeypatch.setattr(register_module, "_FIXED_CACHE", type(register_module._FIXED_CACHE)())
    template = types.SimpleNamespace(image=_blob(), sha256="t", foreground_mask=lambda dilate_mm: None)
    fixed = _blob(0.5)
    for iterations, expect_cached in ((30, False), (30, True), (5, False)):
        cfg = PartialPreregConfig(refine_iterations=iterations, fixed_to_template_refine="none", device="cpu",
                                  fixed_to_template_search="global")  # the search is faked; the cache is tested
        diag = {}
        register_module._fixed_to_template(fixed, template, cfg, diag, as_progress(None))
        assert diag["fixed_to_template"]["cached"] is expect_cached, iterations
    assert len(calls) == 2


def test_fixed_to_template_result_is_reused_from_disk_by_a_new_process(monkeypatch):
    import RegistrationSuiteLib.methods.global_rigid as gr
    from RegistrationSuiteLib import cache

    calls = []
    truth = np.eye(4)
    truth[:3, 3] = (4.0, -2.0, 7.5)

    def fake_search(*a, **k):
        calls.append(1)
        return types.SimpleNamespace(fixed_to_moving_matrix=truth, score=0.5, confidence=0.1)

    monkeypatch.setattr(gr, "register_global_rigid", fake_search)
    template = types.SimpleNamespace(image=_blob(), sha256="t", foreground_mask=lambda dilate_mm: None)
    fixed = _blob(0.5)

    def run(**options):
        monkeypatch.setattr(register_module, "_FIXED_CACHE", type(register_module._FIXED_CACHE)())  # new process
        diag = {}
        cfg = PartialPreregConfig(device="cpu", fixed_to_template_search="global", **options)
        out = register_module._fixed_to_template(fixed, template, cfg, diag, as_progress(None))
        return out, diag["fixed_to_template"]

    first, info = run()
    assert info["cached"] is False and info["metric"] == "none"  # "auto" with the local search: no refinement
    again, info = run()
    assert info["cached"] is True and info["on_disk"] is True and len(calls) == 1
    np.testing.assert_allclose(again, truth)
    for options in ({"seed": 3}, {"global_search_rotations": 200}, {"fixed_to_template_refine": "none",
                                                                    "local_search": False, "refine_iterations": 7}):
        assert run(**options)[1]["cached"] is False  # every option the result depends on is in the key
    assert run(cache_fixed_to_template=False)[1]["cached"] is False
    assert len(calls) == 5 and cache.cache_usage()["entries"] == 4
    assert cache.clear_cache() == 4 and run()[1]["cached"] is False


@pytest.mark.parametrize("score,global_runs", [(0.55, False), (0.45, True)])
def test_scanner_seeded_fixed_to_template_falls_back_to_the_global_search(monkeypatch, score, global_runs):
    """The default fixed → template search starts from the scanner orientation; below
    FIXED_TO_TEMPLATE_MIN_SCORE the global search replaces it, and the diagnostics say so."""
    import RegistrationSuiteLib.methods.global_rigid as gr
    from RegistrationSuiteLib.methods.global_rigid import local as local_module

    local_matrix, global_matrix = np.eye(4), np.eye(4)
    local_matrix[:3, 3], global_matrix[:3, 3] = (1.0, 2.0, 3.0), (-9.0, 4.0, 0.0)
    seeds = []

    def fake_local(template_image, fixed_image, seed_list, **k):
        seeds.append(np.asarray(seed_list[0]))
        return types.SimpleNamespace(fixed_to_moving_matrix=local_matrix, score=score, confidence=0.1)

    monkeypatch.setattr(local_module, "local_rigid_search", fake_local)
    monkeypatch.setattr(gr, "register_global_rigid",
                        lambda *a, **k: types.SimpleNamespace(fixed_to_moving_matrix=global_matrix, score=0.6,
                                                              confidence=0.2))
    monkeypatch.setattr(register_module, "_FIXED_CACHE", type(register_module._FIXED_CACHE)())
    template = types.SimpleNamespace(image=_blob(), sha256="t", foreground_mask=lambda dilate_mm: None)
    diag = {}
    out = register_module._fixed_to_template(_blob(0.5), template, PartialPreregConfig(
        device="cpu", cache_fixed_to_template=False), diag, as_progress(None))
    info = diag["fixed_to_template"]
    assert len(seeds) == 1 and np.allclose(seeds[0][:3, :3], np.eye(3))  # scanner orientation
    np.testing.assert_allclose(out, global_matrix if global_runs else local_matrix)
    assert info["scanner_search_score"] == score and info["search"] == ("global" if global_runs else "scanner")
    assert ("matched poorly" in info.get("note", "")) is global_runs

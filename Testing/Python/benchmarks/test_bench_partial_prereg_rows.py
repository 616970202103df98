"""bench_partial_prereg.py's bookkeeping: cases independent of the selection, rows appended as they finish,
resumable runs (the registrations themselves are what the benchmark measures, not unit tests)."""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "Benchmarks"))
bench = pytest.importorskip("bench_partial_prereg")


def test_a_case_is_the_same_whatever_else_the_run_selects():
    a = bench.case_rng(0, "T2", "T1", "small", 1).random(4)
    assert np.array_equal(a, bench.case_rng(0, "T2", "T1", "small", 1).random(4))
    for other in ((1, "T2", "T1", "small", 1), (0, "FLAIR", "T1", "small", 1), (0, "T1", "T2", "small", 1),
                  (0, "T2", "T1", "tiny", 1), (0, "T2", "T1", "small", 0)):
        assert not np.array_equal(a, bench.case_rng(*other).random(4)), other


def _row(method, contrast="T1", modality="T2", cls="tiny", case=0, seed=0, model=""):
    return dict(method=method, moving_contrast=contrast, modality=modality, size_class=cls, case=case, seed=seed,
                model=model, error_mm=1.0)


def _args(**kw):
    base = dict(seed=0, model=None, skip=[], moving=["T1"], fixed=["T2", "FLAIR"], classes=["tiny", "small"],
                cases_per_class=2)
    return argparse.Namespace(**dict(base, **kw))


def test_rows_file_tolerates_a_cut_off_last_line_and_old_json_lists(tmp_path):
    tspm = "TSPM (+ refine, MI)"
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(_row(tspm)) + "\n" + json.dumps(_row(tspm, case=1)) + "\n" + '{"method": "TS')
    assert [r["case"] for r in bench.read_rows(path)] == [0, 1]
    old = tmp_path / "old.json"
    old.write_text(json.dumps([_row(tspm)]))
    assert len(bench.read_rows(old)) == 1 and bench.read_rows(tmp_path / "absent.jsonl") == []


def test_select_rows_keeps_only_this_runs_selection_and_keys_identify_cases():
    tspm, centre = "TSPM (+ refine, MI)", "centre init + refine"
    rows = [_row(tspm), _row(tspm, case=2), _row(tspm, seed=1), _row(tspm, model="other.pt"), _row(tspm, cls="large"),
            _row(tspm, contrast="T2", modality="T1"), _row(centre), _row(tspm, modality="FLAIR", cls="small", case=1)]
    kept = bench.select_rows(rows, _args(skip=["centre"]))
    assert kept == [rows[0], rows[-1]]
    assert len(bench.select_rows(rows, _args(moving=["T1", "T2"], skip=["centre"]))) == 3
    assert bench.row_key(rows[0]) != bench.row_key(rows[2]) != bench.row_key(rows[3])
    # a new model: the network rows of the old one drop out, the network-free rows stay valid
    renamed = [_row(tspm, model="m@1"), _row(tspm), _row(centre), _row(centre, model="m@1")]
    assert bench.select_rows(renamed, _args(), "m@1") == [renamed[0], renamed[2]]
    legacy = {k: v for k, v in rows[0].items() if k not in ("seed", "model")}  # rows written before these keys
    assert bench.row_key(legacy) == bench.row_key(rows[0]) and bench.select_rows([legacy], _args()) == [legacy]


def test_run_all_skips_finished_rows_and_appends_new_ones_at_once(tmp_path, monkeypatch, shared_data):
    calls = []

    def fake(fixed, moving):
        calls.append(moving.GetSize())
        return np.eye(4)

    monkeypatch.setattr(bench, "METHODS", {"A": ("a", fake), "B": ("b", fake)})
    path = tmp_path / "rows.jsonl"
    first = bench.run_all(1, 0, set(), lambda s: None, ("T2",), ("tiny",), ("T1",), rows_path=path)
    assert [r["method"] for r in first] == ["A", "B"] and len(bench.read_rows(path)) == 2
    done = {bench.row_key(r) for r in bench.read_rows(path)}
    calls.clear()
    again = bench.run_all(1, 0, set(), lambda s: None, ("T2",), ("tiny",), ("T1",), rows_path=path, done=done)
    assert again == [] and calls == []  # nothing left to run: no case even drawn
    more = bench.run_all(2, 0, set(), lambda s: None, ("T2",), ("tiny",), ("T1",), rows_path=path, done=done)
    assert [(r["method"], r["case"]) for r in more] == [("A", 1), ("B", 1)] and len(bench.read_rows(path)) == 4
    assert all(np.isfinite(r["error_mm"]) and r["error_mm"] > 0 for r in first + more)  # identity is not the truth


def test_rotation_range_scales_the_same_cases_and_keys_its_rows(shared_data):
    """``--rotation-deg``: the default draws the table's cases; another range rotates the same crop (same size, same
    centre offset) by proportionally larger angles, and its rows never mix with the ±15° rows."""
    from RegistrationSuiteLib.geometry import Grid, apply_affine

    t1 = bench.sitk.ReadImage(str(shared_data / "brain" / "stroke" / "T1.nii.gz"), bench.sitk.sitkFloat32)
    fixed = bench.sitk.ReadImage(str(shared_data / "brain" / "stroke" / "T2.nii.gz"), bench.sitk.sitkFloat32)
    rng = lambda: bench.case_rng(11, "T1", "T2", "small", 0)  # noqa: E731 - a development seed
    default, truth15, _ = bench.make_case(t1, fixed, "small", rng())
    same, truth15b, _ = bench.make_case(t1, fixed, "small", rng(), 15.0)
    wide, truth45, _ = bench.make_case(t1, fixed, "small", rng(), 45.0)
    assert np.array_equal(truth15, truth15b) and default.GetSize() == same.GetSize() == wide.GetSize()

    def angle(m):
        return np.degrees(np.arccos(np.clip((np.trace(m[:3, :3]) - 1) / 2, -1, 1)))

    assert 2.0 < angle(truth45) / angle(truth15) < 4.0  # three times the Euler angles: roughly three times the turn
    # the same crop (its centre maps to the same fixed point) placed at the same offset (same moving centre)
    centre = lambda img, m: apply_affine(np.linalg.inv(m), Grid.from_image(img).center()[None])[0]  # noqa: E731
    assert np.allclose(centre(default, truth15), centre(wide, truth45), atol=1e-6)
    assert np.allclose(Grid.from_image(default).center(), Grid.from_image(wide).center(), atol=1e-6)
    tspm = "TSPM (+ refine, MI)"
    rows = [_row(tspm), dict(_row(tspm), rotation_deg=45.0)]
    assert bench.row_key(rows[0]) != bench.row_key(rows[1])
    assert bench.select_rows(rows, _args()) == [rows[0]]
    assert bench.select_rows(rows, _args(rotation_deg=45.0)) == [rows[1]]


def test_optional_window_rows_run_only_when_named():
    assert set(bench.OPTIONAL_ROWS) <= set(bench.skipped_rows(None, []))
    assert "tspm" not in bench.skipped_rows(None, []) and "elastix" in bench.skipped_rows(None, ["elastix"])
    only = bench.skipped_rows(["tspm_w25", "local_centre_w25"], [])
    assert "tspm_w25" not in only and "local_centre_w25" not in only and "tspm" in only


def test_seed_errors_and_widening_record_what_the_pipeline_started_from():
    """The network's candidates are turned into the local search's seeds (moving → template⁻¹ · template →
    fixed⁻¹) and compared with the truth; the widening's starts likewise."""
    from RegistrationSuiteLib.geometry import rigid_about_center

    moving = bench.sitk.Image([20, 30, 10], bench.sitk.sitkFloat32)
    moving.SetSpacing((2.0, 1.0, 3.0))
    r = bench._euler_deg([0.0, 0.0, 30.0])
    truth = rigid_about_center(r, np.zeros(3), np.array([5.0, -3.0, 2.0]))
    t_tf = rigid_about_center(bench._euler_deg([10.0, 0.0, 0.0]), np.zeros(3), np.array([1.0, 2.0, 3.0]))
    exact = np.linalg.inv(truth @ t_tf)  # a moving → template candidate whose seed is the truth
    off = np.linalg.inv(rigid_about_center(bench._euler_deg([0.0, 12.0, 0.0]), np.zeros(3), np.zeros(3)) @ truth
                        @ t_tf)
    diag = {"moving_to_template": {"ransac": exact, "orientation_prior": off},
            "fixed_to_template": {"template_to_fixed": t_tf}}
    errors = bench._seed_errors(diag, moving, truth)
    assert errors["ransac"]["rotation_error_deg"] < 1e-4 and errors["ransac"]["error_mm"] < 1e-6
    assert errors["orientation_prior"]["rotation_error_deg"] == pytest.approx(12.0, abs=1e-6)
    assert errors["orientation_prior"]["error_mm"] > 1.0
    assert bench._seed_errors({}, moving, truth) is None
    assert bench.rotation_angle_deg(r) == pytest.approx(30.0) == pytest.approx(bench.rotation_angle_deg(1.07 * r))
    wide = {"kept": "widened", "first": {"candidates": {"a": {"ngf_similarity": 0.5}}},
            "widened": {"candidates": {"b": {"ngf_similarity": 0.7}}},
            "first_fixed_to_moving": truth, "widened_fixed_to_moving": np.linalg.inv(off) @ np.eye(4)}
    w = bench._widening({"local_search_widened": wide}, moving, truth)
    assert w["first_error_mm"] < 1e-6 and w["widened_error_mm"] > 1.0
    assert (w["first_ngf"], w["widened_ngf"]) == (0.5, 0.7)
    assert bench._widening({}, moving, truth) is None
    rows = [dict(_row("TSPM (+ refine, MI)"), widening=w, ngf_similarity=[0.7]),
            dict(_row("TSPM (+ refine, MI)", case=1), widening=None, ngf_similarity=[0.8]),
            dict(_row("TSPM alone (w/o local search and refinement)"), widening=None, ngf_similarity=[])]
    assert "TSPM (+ refine, MI) 1 of 2 (widened search kept 1, a start within 5 mm swapped for a worse one 1)" in \
        bench._widening_sentence(rows)
    assert "TSPM alone" not in bench._widening_sentence(rows)  # no local search, nothing to widen


def test_a_rotation_stress_run_writes_its_own_section_never_the_table(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(bench, "update_benchmarks_md", lambda section, body: written.append((section, body)))
    centre = "no network: TSPM's search from the centre seed (+ refine)"
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(dict(_row(centre, cls=c), rotation_deg=deg, seconds=2.0, cpu_seconds=1.5,
                                             error_mm=err))
                              for c, deg, err in (("tiny", 45.0, 1.0), ("small", 45.0, 30.0), ("tiny", 15.0, 2.0))))
    common = ["--from-json", str(rows), "--only", "local_centre", "--cases-per-class", "1", "--classes", "tiny",
              "small", "--fixed", "T2", "--write"]
    assert bench.main(common + ["--rotation-deg", "45"]) == 0
    section, body = written[-1]
    assert section == "partial_prereg-rotation45" and "rotated ±45° per axis (a stress test" in body
    assert "| 100% (1) | 0% (1) |" in body and "--rotation-deg 45" in body  # the two ±45° rows, not the ±15° one
    assert bench.main(common) == 0 and written[-1][0] == "partial_prereg" and "| 100% (1) | – |" in written[-1][1]

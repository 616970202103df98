"""The ship rule of ``Testing/Benchmarks/compare_histology_models.py``: a candidate counts as better only when
both its summed non-evaluation median error (3-pass row) and its synthetic EPE are lower; ANHIR rows never count."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "Benchmarks"))
compare = pytest.importorskip("compare_histology_models")


def _result(case_px, epe, anhir_px):
    cases = [{"case": f"case {i}", "row": row, "median_px": px, "median_rtre_pct": px / 10, "cpu_seconds": 1.0}
             for i, px in enumerate(case_px) for row in compare.ROWS]
    cases += [{"case": "ANHIR pair (evaluation pair: reported, not used to decide)", "row": row, "median_px": anhir_px,
               "median_rtre_pct": anhir_px / 10, "cpu_seconds": 1.0} for row in compare.ROWS]
    return {"model": {"path": "m.pt", "sha256": "0" * 12, "cpu_minutes": 1.0, "command": "train-histology"},
            "epe": {"synthetic_epe_px_identity": 4.0, "synthetic_epe_px_affine": epe,
                    "synthetic_epe_px_affine_nonrigid": epe}, "cases": cases}


@pytest.mark.parametrize("cand_cases, cand_epe, cand_anhir, better", [
    ([1.0, 1.0], 2.0, 9.0, True),     # both decision figures lower; a worse ANHIR does not matter
    ([1.0, 3.0], 2.0, 1.0, False),    # summed case error higher (4.0 vs 3.0) despite a far better ANHIR
    ([1.0, 1.0], 2.6, 1.0, False),    # synthetic EPE higher
])
def test_decision_rule(cand_cases, cand_epe, cand_anhir, better):
    results = {"ref": _result([1.5, 1.5], 2.5, 5.0), "cand": _result(cand_cases, cand_epe, cand_anhir)}
    text = compare.summarise(results, ["ref", "cand"], 1.0, ["--models", "a", "b"])
    assert ("Decision: cand is better than ref" in text) is better
    assert ("Decision: cand is not better than ref" in text) is (not better)

"""Organ label names (TotalSegmentator's total numbering) and the organ-points one-line summary."""

import json

import SimpleITK as sitk

from RegistrationSuiteLib.cli.main import main
from RegistrationSuiteLib.cli.organ_points import summarize_organs
from RegistrationSuiteLib.labels import TOTALSEGMENTATOR_TOTAL, describe_labels
from RegistrationSuiteLib.result import RegistrationResult


def test_totalsegmentator_table_known_entries():
    assert len(TOTALSEGMENTATOR_TOTAL) == 117
    assert [TOTALSEGMENTATOR_TOTAL[k] for k in (1, 5, 26, 27, 50, 51, 79, 90, 92, 115, 117)] == [
        "spleen", "liver", "vertebrae_S1", "vertebrae_L5", "vertebrae_C1", "heart", "spinal_cord", "brain",
        "rib_left_1", "rib_right_12", "costal_cartilages"]
    assert describe_labels([5, 300]) == "5 liver, 300"


def _result(used, skipped):
    notes = [f"organ label {lab} is present in fixed but absent from moving; skipped" for lab in skipped]
    return RegistrationResult("organ_point_cloud", sitk.Transform(3, sitk.sitkIdentity), warnings=["other"] + notes,
                              diagnostics={"labels": used, "skipped_labels": skipped})


def test_one_summary_instead_of_a_note_per_skipped_label():
    result = _result([1, 2, 3, 5], list(range(6, 24)))
    line = summarize_organs(result, points_input=False)
    assert line.startswith("registered 4 organ(s): 1 spleen, 2 kidney_right, 3 kidney_left, 5 liver")
    assert "TotalSegmentator" in line
    assert result.warnings[0] == "other" and len(result.warnings) == 2
    assert result.warnings[1].startswith("18 label(s) not present in both inputs were skipped: 6 stomach, 7 pancreas")


def test_labels_outside_the_table_or_point_files_unnamed():
    result = _result([1, 500], [])
    assert summarize_organs(result, points_input=False) == "registered 2 organ(s): 1, 500"
    assert summarize_organs(_result([1, 2], []), points_input=True) == "registered 2 organ(s): 1, 2"


def test_models_command_lists_cards(tmp_path, capsys):
    assert main(["models", "--user-dir", str(tmp_path), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    shipped = [m for m in listing["models"] if m["source"] == "shipped"]
    assert shipped and all(m["card"] and m["card"].endswith(".md") for m in shipped)
    assert listing["user_models_dir"] == str(tmp_path)
    assert main(["models", "--user-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert shipped[0]["name"] in out and "card:" in out

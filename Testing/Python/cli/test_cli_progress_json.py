"""``--progress-json`` (machine-readable progress for the Slicer modules' child processes) and the options the
modules pass to the CLI (``rigid-search --rotations``, ``organ-points --lambda-mm LABEL:MM,...``)."""

import io
import json

import pytest

from RegistrationSuiteLib.cli.main import build_parser, main
from RegistrationSuiteLib.cli.organ_points import per_label_mm
from RegistrationSuiteLib.cli.progress_lines import (
    JsonLinesProgress,
    parse_progress_line,
    progress_for,
    stage_of,
)


def test_json_lines_progress_writes_parseable_lines_and_throttles(monkeypatch):
    clock = iter([0.0, 0.01, 0.02, 0.5, 0.51])
    monkeypatch.setattr("RegistrationSuiteLib.cli.progress_lines.time.monotonic", lambda: next(clock))
    stream = io.StringIO()
    progress = JsonLinesProgress(stream, min_interval=0.1)
    progress(0.1, "level 1: 10/100 rotations")  # first: written
    progress(0.2, "level 1: 20/100 rotations")  # too soon, same stage: dropped
    progress(0.3, "level 2: 1/10 rotations")  # stage changed: written
    progress(0.4, "level 2: 5/10 rotations")  # interval passed: written
    progress(1.5, "done")  # clipped to 1, final: written
    records = [parse_progress_line(line) for line in stream.getvalue().splitlines()]
    assert [kind for kind, _ in records] == ["progress"] * 4
    assert [r["fraction"] for _, r in records] == [0.1, 0.3, 0.4, 1.0]
    assert [r["stage"] for _, r in records] == ["level 1", "level 2", "level 2", "done"]
    assert records[0][1]["message"] == "level 1: 10/100 rotations"


@pytest.mark.parametrize("line, kind", [
    ('{"event":"progress","fraction":0.5,"stage":"s","message":"m"}', "progress"),
    ('{"method":"global_rigid","score":0.5}', "summary"),
    ("plain text from a library", None),
    ('{"event":"progress","fraction":"nan?"}', None),
    ("[1, 2]", None),
    ('{"truncated": ', None),
])
def test_parse_progress_line(line, kind):
    assert parse_progress_line(line)[0] == kind


def test_stage_of():
    assert stage_of("level 2.5 mm: 3/3 rotations") == "level 2.5 mm"
    assert stage_of("done") == "done" and stage_of("") == ""


def test_progress_flag_on_every_command_implies_json():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        assert "--progress-json" in sub.format_help(), name
    args = parser.parse_args(["rigid-search", "--fixed", "f", "--moving", "m", "--output", "t.h5",
                              "--progress-json"])
    assert isinstance(progress_for(args), JsonLinesProgress)
    args = parser.parse_args(["rigid-search", "--fixed", "f", "--moving", "m", "--output", "t.h5", "--quiet"])
    assert not isinstance(progress_for(args), JsonLinesProgress)


def test_progress_json_error_is_one_line_on_stderr(tmp_path, capsys):
    code = main(["rigid-search", "--fixed", str(tmp_path / "missing.nii.gz"), "--moving", "m.nii.gz",
                 "--output", str(tmp_path / "t.h5"), "--progress-json"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1


def test_rotations_option_is_checked(tmp_path, capsys):
    import SimpleITK as sitk

    image = sitk.Image([8, 8, 8], sitk.sitkFloat32)
    image[4, 4, 4] = 1.0
    sitk.WriteImage(image, str(tmp_path / "f.nrrd"))
    code = main(["rigid-search", "--fixed", str(tmp_path / "f.nrrd"), "--moving", str(tmp_path / "f.nrrd"),
                 "--output", str(tmp_path / "t.h5"), "--rotations", "10,x"])
    assert code == 2 and "--rotations" in capsys.readouterr().err


def test_per_label_mm():
    assert per_label_mm("10") == 10.0
    assert per_label_mm("1:10,2:5.5") == {1: 10.0, 2: 5.5}
    with pytest.raises(ValueError):
        per_label_mm("1:ten")
    assert json.dumps(per_label_mm("3:1"))  # plain types (the config validates the values)

"""``registration-suite pipeline``: chains run in order and compose to a known answer; bad chains refused."""

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cohort"))
from tiny_cases import corner_error_mm, known_pair_2d, rigid_2d  # noqa: E402

from RegistrationSuiteLib.cli import main as cli_main  # noqa: E402
from RegistrationSuiteLib.cohort.chain import compose_fixed_to_moving  # noqa: E402
from RegistrationSuiteLib.geometry import affine_matrix_from_sitk  # noqa: E402


def _known_field(fixed: sitk.Image, amplitude_mm: float) -> sitk.DisplacementFieldTransform:
    """A smooth non-identity displacement field on the fixed grid: u_x = a·sin(y/15 mm), u_y = a/2."""
    size = fixed.GetSize()
    ys = np.array([fixed.TransformIndexToPhysicalPoint((0, j))[1] for j in range(size[1])])
    arr = np.zeros((size[1], size[0], 2))
    arr[..., 0] = amplitude_mm * np.sin(ys / 15.0)[:, None]
    arr[..., 1] = amplitude_mm / 2
    field = sitk.GetImageFromArray(arr, isVector=True)
    field.CopyInformation(fixed)
    return sitk.DisplacementFieldTransform(field)


@pytest.fixture
def fake_deformable(monkeypatch):
    """A stand-in for the 'deformable' command returning a KNOWN field, composed with its --initial-transform as
    the image commands do: it checks the chain machinery against a known answer, not the deformable method."""
    from RegistrationSuiteLib.cli.initial_transform import add_initial_transform_argument, read_initial_transform
    from RegistrationSuiteLib.io import write_transform

    def run(args):
        fixed = sitk.ReadImage(args.fixed)
        field = _known_field(fixed, args.amplitude)
        initial = read_initial_transform(args)
        write_transform(compose_fixed_to_moving(initial, field) if initial else field, args.output)
        if args.json:
            print(json.dumps({"method": "fake_deformable", "score": 0.5, "confidence": 0.9, "timings": {"total": 0.1},
                              "warnings": [], "diagnostics": {"doubtful": ["fake reason"]}}))
        return 0

    def add_parser(sub):
        p = sub.add_parser("deformable")
        for name in ("--fixed", "--moving", "--output"):
            p.add_argument(name, required=True)
        p.add_argument("--amplitude", type=float, default=3.0)
        p.add_argument("--json", action="store_true")
        add_initial_transform_argument(p)
        p.set_defaults(run=run)
        return p

    original = cli_main._commands
    fake = types.SimpleNamespace(__name__="fake_deformable", add_parser=add_parser)
    monkeypatch.setattr(cli_main, "_commands",
                        lambda: [c for c in original() if not c.__name__.endswith(".deformable")] + [fake])


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    fixed, moving, truth = known_pair_2d(angle_deg=25.0, shift_mm=(5.0, -7.0))
    sitk.WriteImage(fixed, str(d / "f.nii.gz"))
    sitk.WriteImage(moving, str(d / "m.nii.gz"))
    return d / "f.nii.gz", d / "m.nii.gz", fixed, truth


def test_rigid_then_deformable_composes_to_known_answer(pair_files, fake_deformable, tmp_path, capsys):
    f, m, fixed, truth = pair_files
    out, d = tmp_path / "chain.h5", tmp_path / "steps"
    code = cli_main.main(["pipeline", "--fixed", str(f), "--moving", str(m), "--steps", "rigid-search,deformable",
                          "--output", str(out), "--output-dir", str(d), "--step-options", "deformable:--amplitude 4",
                          "--step-options", "rigid-search:--device cpu --seed 1", "--json", "--quiet",
                          "--output-report", str(tmp_path / "r.html")])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == ["rigid-search", "deformable"] and summary["doubtful"] == ["deformable: fake reason"]
    final = sitk.ReadTransform(str(out))
    field = _known_field(fixed, 4.0)
    # expected fixed→moving: truth(field(x)) — the deformable step acts first on fixed points, then the rigid one
    rng = np.random.default_rng(0)
    size = np.asarray(fixed.GetSize())
    pts = [fixed.TransformContinuousIndexToPhysicalPoint((0.1 + 0.8 * rng.random(2)) * (size - 1)) for _ in range(40)]
    err = [np.linalg.norm(np.subtract(final.TransformPoint(p), truth.TransformPoint(field.TransformPoint(p)))) for p in pts]
    assert np.mean(err) < 1.5
    # the composition is not the rigid part alone (the field moves points by up to 4 mm)
    rigid_only = [np.linalg.norm(np.subtract(final.TransformPoint(p), truth.TransformPoint(p))) for p in pts]
    assert np.mean(rigid_only) > 2.0
    # each step's own transform and summary are written
    own1 = sitk.ReadTransform(str(d / "01_rigid-search.step.h5"))
    assert corner_error_mm(fixed, own1, truth) < 1.5
    own2 = sitk.ReadTransform(str(d / "02_deformable.step.h5"))
    p = pts[0]
    np.testing.assert_allclose(own2.TransformPoint(p), field.TransformPoint(p), atol=1e-6)
    assert json.loads((d / "02_deformable.json").read_text())["method"] == "fake_deformable"
    # the review page shows the Jacobian map of the composed deformable result and its doubtful flag
    page = (tmp_path / "r.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3 and "Jacobian" in page and "fake reason" in page


def test_user_initial_transform_starts_the_chain(pair_files, tmp_path, capsys):
    f, m, fixed, truth = pair_files
    center = fixed.TransformContinuousIndexToPhysicalPoint([s / 2 for s in fixed.GetSize()])
    t0 = rigid_2d(40.0, (-8.0, 2.0), center)
    sitk.WriteTransform(t0, str(tmp_path / "t0.tfm"))
    out, d = tmp_path / "chain.tfm", tmp_path / "steps"
    code = cli_main.main(["pipeline", "--fixed", str(f), "--moving", str(m), "--steps", "rigid-search",
                          "--initial-transform", str(tmp_path / "t0.tfm"), "--output", str(out), "--output-dir", str(d),
                          "--step-options", "rigid-search:--device cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert corner_error_mm(fixed, sitk.ReadTransform(str(out)), truth) < 1.5
    own = affine_matrix_from_sitk(sitk.ReadTransform(str(d / "01_rigid-search.step.h5")), 2)
    expected = np.linalg.inv(affine_matrix_from_sitk(t0, 2)) @ affine_matrix_from_sitk(truth, 2)
    np.testing.assert_allclose(own[:2, :2], expected[:2, :2], atol=0.02)


@pytest.mark.parametrize("steps,needle", [("deformable,rigid-search", "never before"),
                                          ("rigid-search,organ-points", "point sets"),
                                          ("partial-prereg,rigid-search", "valid chains")])
def test_invalid_chain_refused_with_valid_chains(pair_files, tmp_path, capsys, steps, needle):
    f, m, _, _ = pair_files
    code = cli_main.main(["pipeline", "--fixed", str(f), "--moving", str(m), "--steps", steps, "--output", str(tmp_path / "t.h5")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "rigid-search,deformable" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t.h5").exists()


def test_unavailable_or_misconfigured_step_refused_before_running(pair_files, tmp_path, capsys, monkeypatch):
    f, m, _, _ = pair_files
    original = cli_main._commands
    monkeypatch.setattr(cli_main, "_commands", lambda: [c for c in original() if "deformable" not in c.__name__])
    code = cli_main.main(["pipeline", "--fixed", str(f), "--moving", str(m), "--steps", "rigid-search,deformable",
                          "--output", str(tmp_path / "t.h5")])
    assert code == 2 and "not available" in capsys.readouterr().err
    code = cli_main.main(["pipeline", "--fixed", str(f), "--moving", str(m), "--steps", "rigid-search",
                          "--step-options", "rigid-search:--no-such-option 3", "--output", str(tmp_path / "t.h5")])
    err = capsys.readouterr().err
    assert code == 2 and "--no-such-option" in err and not (tmp_path / "t.h5").exists()
    code = cli_main.main(["pipeline", "--fixed", str(f), "--moving", str(m), "--steps", "rigid-search",
                          "--step-options", "rigid-search:--output x.h5", "--output", str(tmp_path / "t.h5")])
    assert code == 2 and "set by the pipeline" in capsys.readouterr().err


def test_progress_json_one_line_per_step_then_summary(pair_files, tmp_path, capsys):
    f, m, _, _ = pair_files
    code = cli_main.main(["pipeline", "--fixed", str(f), "--moving", str(m), "--steps", "rigid-search",
                          "--step-options", "rigid-search:--device cpu --rotations 300,60,3", "--output",
                          str(tmp_path / "t.h5"), "--progress-json"])
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert code == 0 and lines[-1]["method"] == "pipeline"
    fractions = [x.get("fraction") for x in lines[:-1]]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and "step 1/1" in json.dumps(lines[0])

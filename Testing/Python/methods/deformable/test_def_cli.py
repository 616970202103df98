"""CLI ``deformable``: end to end (transform, field image, Jacobian, inverse, resampled), and every bad input
gives one line, exit code 2, nothing written, inputs untouched."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.methods.deformable import FieldUNet
from RegistrationSuiteLib.methods.deformable.network import model_file_for
from RegistrationSuiteLib.models.model_file import save_model
from RegistrationSuiteLib.sample_data import sample_path

CLI = [sys.executable, "-m", "RegistrationSuiteLib"]
FAST = ["--spacing", "4", "--io-steps", "6", "--device", "cpu"]


def _run(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(CLI + args, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("[")]
    return proc, lines


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.slow
def test_deformable_end_to_end(tmp_path):
    init = sitk.TranslationTransform(3, (3.0, -2.0, 1.0))
    sitk.WriteTransform(init, str(tmp_path / "init.tfm"))
    t1, t2 = str(sample_path("T1")), str(sample_path("T2"))
    proc, _ = _run(["deformable", "--fixed", t1, "--moving", t2, "--output", "t.h5", "--initial-transform", "init.tfm",
                    "--output-jacobian", "j.nii.gz", "--output-inverse", "inv.h5", "--output-resampled", "r.nii.gz",
                    "--output-diagnostics", "d.json", "--json", *FAST, "--io-steps", "20"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["transform_type"] == "DisplacementFieldTransform"
    full = json.loads((tmp_path / "d.json").read_text())
    assert full["diagnostics"]["similarity"]["name"] == "mind"  # T1 → T2: cross contrast
    assert full["diagnostics"]["folding_fraction"] < 1e-3
    tx = sitk.ReadTransform(str(tmp_path / "t.h5"))
    fixed = sitk.ReadImage(t1)
    p = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()])
    # the pair is aligned, so the initial translation (3.7 mm) is wrong: starting from it (folded into the
    # output), the deformable stage brings the map back towards the identity (20 steps: with FAST's 6, the map
    # has hardly moved, about 4.4 mm left on average over the head, and one point's residual is chance)
    assert np.linalg.norm(np.subtract(tx.TransformPoint(p), p)) < 0.5 * np.linalg.norm((3.0, -2.0, 1.0))
    for name in ("j.nii.gz", "inv.h5", "r.nii.gz"):
        assert (tmp_path / name).exists()
    proc, _ = _run(["deformable", "--fixed", t1, "--moving", t1, "--output", "field.nii.gz", *FAST], tmp_path)
    assert proc.returncode == 0, proc.stderr
    field = sitk.ReadImage(str(tmp_path / "field.nii.gz"))
    assert field.GetNumberOfComponentsPerPixel() == 3


def _bad_inputs(tmp_path):
    t1 = sitk.ReadImage(str(sample_path("T1")), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(t1)
    arr[5, 5, 5] = np.nan
    nan = sitk.GetImageFromArray(arr)
    nan.CopyInformation(t1)
    sitk.WriteImage(nan, str(tmp_path / "nan.mha"))
    sitk.WriteImage(sitk.Image(t1.GetSize(), sitk.sitkUInt8).__copy__(), str(tmp_path / "empty_mask.nii.gz"))
    empty = sitk.ReadImage(str(tmp_path / "empty_mask.nii.gz"))
    empty.CopyInformation(t1)
    sitk.WriteImage(empty, str(tmp_path / "empty_mask.nii.gz"))
    sitk.WriteTransform(sitk.TranslationTransform(3, (900.0, 0.0, 0.0)), str(tmp_path / "far.tfm"))
    sitk.WriteTransform(sitk.AffineTransform((1, 0, 0, 0, 0, 0, 0, 0, 1), (0, 0, 0)), str(tmp_path / "flat.tfm"))
    (tmp_path / "garbage.h5").write_text("not a transform")
    card = {"name": "m2d", "summary": "", "training_data": [], "data_licence": "", "command": "", "seed": 0, "metrics": {}}
    save_model(model_file_for(FieldUNet(2, (4, 8), (8, 4)), spacing_mm=2.0, modality="mr", card=card), tmp_path / "m2d.pt")


BAD = {
    "no_overlap": (["--initial-transform", "far.tfm"], "do not overlap"),
    "unreadable_transform": (["--initial-transform", "garbage.h5"], "cannot read"),
    "singular_transform": (["--initial-transform", "flat.tfm"], "not invertible"),
    "model_other_dimension": (["--model", "m2d.pt"], "2D field network"),
    "too_small": (["--spacing", "60"], "too small for the working resolution"),
    "nan": (["--moving", "nan.mha"], "NaN"),
    "empty_mask": (["--fixed-mask", "empty_mask.nii.gz"], "mask is empty"),
    "memory": (["--spacing", "0.3", "--max-memory-gb", "0.5"], "needs about"),
    "output_suffix": (["--output", "t.tfm"], "stored as .h5"),
    "threads": (["--threads", "-1"], "--threads"),
    "network_passes": (["--network-passes", "0"], "network_passes"),
    "network_skip_levels": (["--network-skip-levels", "-1"], "network_skip_levels"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, case):
    _bad_inputs(tmp_path)
    extra, match = BAD[case]
    args = {"--fixed": str(sample_path("T1")), "--moving": str(sample_path("T1")), "--output": "t.h5",
            "--output-resampled": "r.nii.gz", "--output-jacobian": "j.nii.gz", "--spacing": "4", "--io-steps": "2",
            "--device": "cpu"}
    for key, value in zip(extra[::2], extra[1::2]):
        args[key] = value
    before = {p.name: _digest(p) for p in tmp_path.iterdir()}
    proc, lines = _run(["deformable", *[x for kv in args.items() for x in kv]], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and match in lines[0], lines
    after = {p.name: _digest(p) for p in tmp_path.iterdir()}
    assert after == before  # nothing written, inputs untouched


def test_train_paired_scheme_without_volume_sampling_is_refused_cleanly(tmp_path):
    (tmp_path / "l.csv").write_text(f"image\n{sample_path('T1')}\n")
    proc, lines = _run(["train-deformable", "--scheme", "paired", "--images", "l.csv", "--output", "m.pt"], tmp_path)
    assert proc.returncode == 2 and len(lines) == 1 and "needs --sampling volume" in lines[0]
    assert not (tmp_path / "m.pt").exists()


def test_train_bad_channel_list_is_refused_cleanly(tmp_path):
    (tmp_path / "l.csv").write_text(f"image\n{sample_path('T1')}\n")
    proc, lines = _run(["train-deformable", "--images", "l.csv", "--output", "m.pt", "--encoder", "8,x"], tmp_path)
    assert proc.returncode == 2 and len(lines) == 1 and "--encoder" in lines[0]
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.slow
def test_init_rigid_search_recovers_a_large_rotation(tmp_path):
    """``--init rigid-search``: the shipped T1 rotated 25° and shifted (about 16 mm) as fixed, the T2 as moving.
    Without an initialisation the deformable stage cannot bridge that; with the global search first (folded
    into the output) the delivered map agrees with the true rigid map inside the head."""
    from RegistrationSuiteLib.geometry import apply_affine
    from RegistrationSuiteLib.sample_data import known_rigid_case, load_sample

    fixed, truth = known_rigid_case(load_sample("T1"))
    sitk.WriteImage(fixed, str(tmp_path / "fixed.nii.gz"))
    proc, _ = _run(["deformable", "--fixed", "fixed.nii.gz", "--moving", str(sample_path("T2")), "--output", "t.h5",
                    "--init", "rigid-search", "--output-diagnostics", "d.json", *FAST], tmp_path)
    assert proc.returncode == 0, proc.stderr
    tx = sitk.ReadTransform(str(tmp_path / "t.h5"))
    arr = sitk.GetArrayFromImage(fixed)
    zyx = np.argwhere(arr > np.percentile(arr[arr > 0], 50))[::397]  # points inside the head (fixed grid)
    pts = np.array([fixed.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]]) for p in zyx])
    expected = apply_affine(truth, pts)
    got = np.array([tx.TransformPoint(p.tolist()) for p in pts])
    identity_error = np.linalg.norm(pts - expected, axis=1).mean()
    error = np.linalg.norm(got - expected, axis=1).mean()
    assert identity_error > 10.0  # the case is far from the identity ...
    # ... and the rigid search + a cheap deformable stage (4 mm grid, 6 steps) recover it to within the
    # tolerance of the rigid-search CLI test (measured: 4.2 mm here, against 21 mm for the identity)
    assert error < 5.0, (error, identity_error)
    assert json.loads((tmp_path / "d.json").read_text())["diagnostics"]["folding_fraction"] < 1e-3


def test_cli_defaults_come_from_the_config():
    """The parser's defaults are the configuration's (one source): a default typed into the parser drifts."""
    from RegistrationSuiteLib.cli.main import build_parser
    from RegistrationSuiteLib.methods.deformable import DeformableConfig

    args = build_parser().parse_args(["deformable", "--fixed", "f.nii.gz", "--moving", "m.nii.gz", "--output", "t.h5"])
    cfg = DeformableConfig()
    assert (args.io_steps, args.regularization, args.regularizer) == (cfg.io_steps, cfg.regularization, cfg.regularizer)
    assert (args.similarity, args.seed, args.max_memory_gb, args.spacing) == \
        (cfg.similarity, cfg.seed, cfg.max_memory_gb, cfg.spacing_mm)
    assert (cfg.model or "none") == args.model
    assert (args.network_passes, args.network_skip_levels) == (cfg.network_passes, cfg.network_skip_levels)
    from RegistrationSuiteLib.methods.deformable.config import PRESETS

    assert PRESETS["balanced"] == (cfg.io_steps, cfg.regularization)  # the module's default preset = the CLI's
    assert PRESETS["fast"][0] < cfg.io_steps < PRESETS["accurate"][0]

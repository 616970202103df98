"""CLI of TSPM: partial-prereg end to end (JSON, outputs), one-line errors without partial outputs, and
train-partial-prereg writing a loadable model with its card."""

import json
import os
import subprocess
import sys

import numpy as np
import SimpleITK as sitk

from RegistrationSuiteLib.cli.main import main
from RegistrationSuiteLib.models.registry import resolve_model
from RegistrationSuiteLib.sample_data import sample_path

CLI = [sys.executable, "-m", "RegistrationSuiteLib"]


def _run(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(CLI + args, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("[")]
    return proc, lines


def _moved_crop(tmp_path):
    """A T1 crop whose header is moved by a known rigid transform (10°, (8, -6, 5) mm): the true fixed → moving
    (T2 is co-registered with T1) is that transform, far from the identity."""
    from RegistrationSuiteLib.geometry import Grid, rigid_about_center, rotation_from_quaternion

    crop = sitk.RegionOfInterest(sitk.ReadImage(str(sample_path("T1"))), [44, 48, 36], [8, 12, 20])
    center = np.array(Grid.from_image(crop).center())
    half = np.radians(10.0) / 2
    rotation = rotation_from_quaternion(np.r_[np.cos(half), np.sin(half) * np.array([0.6, 0.0, 0.8])][None])[0]
    truth = rigid_about_center(rotation, center, [8.0, -6.0, 5.0])
    moved = sitk.Image(crop)
    moved.SetDirection((truth[:3, :3] @ np.array(crop.GetDirection()).reshape(3, 3)).ravel().tolist())
    moved.SetOrigin((truth[:3, :3] @ np.array(crop.GetOrigin()) + truth[:3, 3]).tolist())
    sitk.WriteImage(moved, str(tmp_path / "crop.nii.gz"))
    corners = Grid.from_image(moved).corners()
    return truth, corners


def _corner_error(estimate, truth, corners):
    from RegistrationSuiteLib.geometry import apply_affine

    inv = np.linalg.inv
    return np.linalg.norm(apply_affine(inv(estimate), corners) - apply_affine(inv(truth), corners), axis=1).mean()


def test_partial_prereg_end_to_end(tmp_path):
    truth, corners = _moved_crop(tmp_path)
    assert _corner_error(np.eye(4), truth, corners) > 12.0  # the identity is far from the answer
    proc, _ = _run(["partial-prereg", "--fixed", str(sample_path("T2")), "--moving", "crop.nii.gz",
                    "--output", "t.tfm", "--output-resampled", "r.nii.gz", "--json", "--device", "cpu",
                    "--output-diagnostics", "d.json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    diagnostics = json.loads((tmp_path / "d.json").read_text())["diagnostics"]
    assert summary["method"] == "partial_prereg" and diagnostics["ransac"]["consensus"]
    assert _corner_error(np.array(summary["fixed_to_moving_lps"]), truth, corners) < 4.0
    assert (tmp_path / "t.tfm").exists() and (tmp_path / "r.nii.gz").exists()
    assert diagnostics["initialisation"]["chosen"].startswith("local_search_from_")
    from RegistrationSuiteLib import cache

    assert cache.cache_usage()["entries"] == 1  # the fixed → template alignment, for the next process


def test_partial_prereg_without_local_search(tmp_path):
    moving = sitk.RegionOfInterest(sitk.ReadImage(str(sample_path("T1"))), [44, 48, 36], [8, 12, 20])
    sitk.WriteImage(moving, str(tmp_path / "crop.nii.gz"))
    proc, _ = _run(["partial-prereg", "--fixed", str(sample_path("T2")), "--moving", "crop.nii.gz",
                    "--output", "t.tfm", "--no-local-search", "--json", "--device", "cpu",
                    "--output-diagnostics", "d.json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    diagnostics = json.loads((tmp_path / "d.json").read_text())["diagnostics"]
    assert "local_search" not in diagnostics
    assert diagnostics["initialisation"]["chosen"] in ("ransac", "orientation_prior")


def test_corrupt_model_one_line_error_and_no_output(tmp_path):
    (tmp_path / "bad.pt").write_bytes(resolve_model("tspm_t1_mr_icbm152").read_bytes()[:5000])
    proc, lines = _run(["partial-prereg", "--fixed", str(sample_path("T2")), "--moving", str(sample_path("T1")),
                        "--model", "bad.pt", "--output", "t.h5", "--output-resampled", "r.nii.gz"], tmp_path)
    assert proc.returncode == 2 and len(lines) == 1 and "corrupt or truncated" in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["bad.pt"]


def test_negative_threads_is_a_one_line_input_error(tmp_path):
    proc, lines = _run(["partial-prereg", "--fixed", str(sample_path("T2")), "--moving", str(sample_path("T1")),
                        "--output", "t.h5", "--threads", "-1"], tmp_path)
    assert proc.returncode == 2 and len(lines) == 1 and "--threads" in lines[0], proc.stderr
    assert os.listdir(tmp_path) == []


def test_moving_too_small_for_patches_is_registered_and_flagged(tmp_path):
    # 20 x 50 x 50 mm: thinner than a 16³ patch at template scale (23.6 mm); not an input error
    small = sitk.RegionOfInterest(sitk.ReadImage(str(sample_path("T1"))), [10, 25, 25], [25, 25, 25])
    sitk.WriteImage(small, str(tmp_path / "small.nii.gz"))
    proc, lines = _run(["partial-prereg", "--fixed", str(sample_path("T2")), "--moving", "small.nii.gz",
                        "--output", "t.h5", "--json", "--device", "cpu", "--refine", "none"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert any("network was skipped" in r and "16³" in r for r in summary["doubtful"])
    assert (tmp_path / "t.h5").exists() and 0.0 <= summary["confidence"] <= 1.0


def test_cache_command_shows_and_clears(tmp_path, capsys):
    from RegistrationSuiteLib import cache

    cache.store_entry("tspm_fixed_to_template", "ab" * 32, {"template_to_fixed": np.eye(4).tolist()})
    assert main(["cache", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out.strip())
    assert shown["entries"] == 1 and shown["folder"] == str(cache.cache_dir()) and shown["removed"] is None
    assert main(["cache", "--clear"]) == 0
    assert "removed 1 cache entries" in capsys.readouterr().out and cache.cache_usage()["entries"] == 0


def test_help(capsys):
    for command in ("partial-prereg", "train-partial-prereg", "cache"):
        try:
            main([command, "--help"])
        except SystemExit as exc:
            assert exc.code == 0
        assert "usage: registration-suite" in capsys.readouterr().out


def test_train_partial_prereg_writes_loadable_model(tmp_path):
    """One tiny step on the shipped sample (aligned with the template by identity, good enough here)."""
    import shutil

    from RegistrationSuiteLib.methods.partial_prereg import load_tspm_model

    shutil.copyfile(sample_path("T1"), tmp_path / "t1.nii.gz")
    (tmp_path / "PAIRS.csv").write_text("image,template_to_image,split,licence,name\nt1.nii.gz,,train,MIT,t1\n")
    code = main(["train-partial-prereg", "--pairs", str(tmp_path / "PAIRS.csv"), "--output", str(tmp_path / "m.pt"),
                 "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "16", "--device", "cpu", "--quiet"])
    assert code == 0
    model = load_tspm_model(str(tmp_path / "m.pt"))
    assert model.card["seed"] == 0 and "--epochs 1" in model.card["command"]
    assert (tmp_path / "m.md").read_text().startswith("# Model card: m")
    assert (tmp_path / "m.pt.ckpt").exists()
    code = main(["train-partial-prereg", "--pairs", str(tmp_path / "PAIRS.csv"), "--output", str(tmp_path / "m2.pt"),
                 "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "16", "--device", "cpu", "--quiet",
                 "--init-weights", str(tmp_path / "m.pt"), "--lr", "1e-4", "--seed", "1"])
    assert code == 0
    card = load_tspm_model(str(tmp_path / "m2.pt")).card
    assert card["initialised_from"]["file"] == "m.pt" and "--epochs 1" in card["initialised_from"]["command"]
    code = main(["train-partial-prereg", "--pairs", str(tmp_path / "PAIRS.csv"), "--output", str(tmp_path / "x.txt")])
    assert code == 2


def test_train_partial_prereg_narrower_network(tmp_path):
    """--channels/--hidden/--dropout train (and record) another network than the paper's; the model file loads
    it with that architecture; --init-weights refuses a model of another architecture; bad values are input
    errors."""
    import shutil

    from RegistrationSuiteLib.methods.partial_prereg import load_tspm_model
    from RegistrationSuiteLib.methods.partial_prereg.network import count_parameters

    shutil.copyfile(sample_path("T1"), tmp_path / "t1.nii.gz")
    (tmp_path / "PAIRS.csv").write_text("image,template_to_image,split,licence,name\nt1.nii.gz,,train,MIT,t1\n")
    base = ["train-partial-prereg", "--pairs", str(tmp_path / "PAIRS.csv"), "--epochs", "1", "--steps-per-epoch",
            "1", "--batch-size", "16", "--device", "cpu", "--quiet"]
    code = main(base + ["--output", str(tmp_path / "s.pt"), "--channels", "8", "16", "16", "32", "32",
                        "--hidden", "64", "--dropout", "0.1"])
    assert code == 0
    model = load_tspm_model(str(tmp_path / "s.pt"))
    cfg = model.net.config
    assert cfg.channels == (8, 16, 16, 32, 32) and cfg.hidden == 64 and cfg.dropout == 0.1
    assert model.card["network"]["parameters"] == count_parameters(model.net) < 200_000
    assert model.card["network"]["paper_network"] is False
    assert "--channels 8 16 16 32 32" in model.card["command"] and "--hidden 64" in model.card["command"]
    # the paper's network cannot start from the narrower one
    code = main(base + ["--output", str(tmp_path / "p.pt"), "--init-weights", str(tmp_path / "s.pt")])
    assert code == 2
    assert main(base + ["--output", str(tmp_path / "d.pt"), "--dropout", "1.5"]) == 2
    assert main(base + ["--output", str(tmp_path / "c.pt"), "--channels", "8", "0", "16", "32", "32"]) == 2


def test_train_partial_prereg_mirror_symmetric_and_cosine(tmp_path):
    """--mirror-symmetric records mirror averaging in the network and mirrored crops in the schedule, and is
    refused for a template that is not left-right symmetric; --lr-schedule cosine is recorded; the card carries
    the CPU time of the training steps."""
    import shutil

    import numpy as np
    import SimpleITK as sitk

    from RegistrationSuiteLib.methods.partial_prereg import load_tspm_model
    from RegistrationSuiteLib.methods.partial_prereg.template import load_template

    shutil.copyfile(sample_path("T1"), tmp_path / "t1.nii.gz")
    (tmp_path / "PAIRS.csv").write_text("image,template_to_image,split,licence,name\nt1.nii.gz,,train,MIT,t1\n")
    base = ["train-partial-prereg", "--pairs", str(tmp_path / "PAIRS.csv"), "--epochs", "2", "--steps-per-epoch",
            "1", "--batch-size", "16", "--device", "cpu", "--quiet", "--channels", "4", "8", "8", "8", "8",
            "--hidden", "16", "--mirror-symmetric", "--lr-schedule", "cosine"]
    assert main(base + ["--output", str(tmp_path / "m.pt")]) == 0
    model = load_tspm_model(str(tmp_path / "m.pt"))
    assert model.net.config.mirror_average is True
    card = model.card
    assert card["schedule"]["mirror_prob"] == 0.5 and card["schedule"]["optim"]["lr_schedule"] == "cosine"
    assert "--mirror-symmetric" in card["command"] and "--lr-schedule cosine" in card["command"]
    assert "--mirror-symmetric True" not in card["command"]
    history = card["metrics"]["history"]
    assert len(history) == 2 and all(h["cpu_seconds"] > 0 for h in history)
    assert card["training_cpu_s"] == round(sum(h["cpu_seconds"] for h in history), 1)
    template = load_template()
    shifted = sitk.GetImageFromArray(np.roll(template.array(), 6, axis=2))
    shifted.CopyInformation(template.image)
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nii.gz"))
    assert main(base + ["--output", str(tmp_path / "s.pt"), "--template", str(tmp_path / "shifted.nii.gz")]) == 2
    assert not (tmp_path / "s.pt").exists()


def test_train_partial_prereg_label_atlas_contrasts(tmp_path):
    """--labels trains with synthetic contrasts of a label atlas (alone, and together with --tissue): the card
    records the atlas, its number of labels (3 tissue labels per region + background + 2 head classes) and the
    contrast families; the command line carries --labels; a missing LABELS.csv or an atlas anatomy that is not
    a training row is an input error (exit 2) that writes nothing."""
    import shutil

    import numpy as np
    import SimpleITK as sitk

    from RegistrationSuiteLib.methods.partial_prereg import load_tspm_model

    shutil.copyfile(sample_path("T1"), tmp_path / "t1.nii.gz")
    t1 = sitk.ReadImage(str(tmp_path / "t1.nii.gz"), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(t1)
    fg = arr > 0.2 * np.percentile(arr, 99)
    half = np.indices(arr.shape)[2] >= arr.shape[2] // 2
    atlas = sitk.GetImageFromArray((fg * (1 + half)).astype(np.uint8))
    atlas.CopyInformation(t1)
    sitk.WriteImage(atlas, str(tmp_path / "atlas.nii.gz"))
    sitk.WriteImage(sitk.Cast(atlas > 0, sitk.sitkFloat32), str(tmp_path / "fg.nii.gz"))
    (tmp_path / "PAIRS.csv").write_text("image,template_to_image,split,licence,name\nt1.nii.gz,,train,MIT,t1\n")
    (tmp_path / "LABELS.csv").write_text("image,licence,anatomy\natlas.nii.gz,MIT,t1\n")
    (tmp_path / "TISSUE.csv").write_text("class,image,anatomy\nfg,fg.nii.gz,t1\n")
    base = ["train-partial-prereg", "--pairs", str(tmp_path / "PAIRS.csv"), "--epochs", "1", "--steps-per-epoch",
            "2", "--batch-size", "16", "--device", "cpu", "--quiet", "--channels", "4", "8", "8", "8", "8",
            "--hidden", "16", "--synthetic-fraction", "0.5"]
    assert main(base + ["--output", str(tmp_path / "m.pt"), "--labels", str(tmp_path / "LABELS.csv")]) == 0
    card = load_tspm_model(str(tmp_path / "m.pt")).card
    synth = card["synthetic_contrasts"]
    assert synth["fraction_of_crops"] == 0.5 and "tissue_maps" not in synth
    assert synth["label_atlas"]["files"][0]["file"] == "atlas.nii.gz" and synth["label_atlas"]["anatomy"] == "t1"
    # two regions; the template brain mask's voxels outside the atlas may add a third
    assert synth["label_atlas"]["labels"] in (1 + 3 * 2 + 2, 1 + 3 * 3 + 2)
    assert set(synth["label_atlas"]["family_weights"]) == {"random", "t1", "t2", "flair", "pd"}
    assert "--labels" in card["command"]
    both = base + ["--output", str(tmp_path / "b.pt"), "--labels", str(tmp_path / "LABELS.csv"), "--tissue",
                   str(tmp_path / "TISSUE.csv")]
    assert main(both) == 0
    synth = load_tspm_model(str(tmp_path / "b.pt")).card["synthetic_contrasts"]
    assert "tissue_maps" in synth and "label_atlas" in synth and "50/50" in synth["sources"]
    assert main(base + ["--output", str(tmp_path / "x.pt"), "--labels", str(tmp_path / "nope.csv")]) == 2
    (tmp_path / "LABELS2.csv").write_text("image,anatomy\natlas.nii.gz,colin\n")
    assert main(base + ["--output", str(tmp_path / "y.pt"), "--labels", str(tmp_path / "LABELS2.csv")]) == 2
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()

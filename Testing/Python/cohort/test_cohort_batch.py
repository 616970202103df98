"""Cohort batches: a local Dask cluster of 2 worker processes, failures recorded, --resume, a killed worker."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.cli.main import main
from RegistrationSuiteLib.cohort import batch as batch_mod
from RegistrationSuiteLib.cohort.pairs import read_pairs
from RegistrationSuiteLib.errors import InputError

from tiny_cases import corner_error_mm, known_pair_2d, organ_labels

CLI = [sys.executable, "-m", "RegistrationSuiteLib"]
ANGLES = {"p0": (12.0, (4.0, -2.0)), "p1": (-28.0, (-3.0, 5.0)), "p2": (35.0, (6.0, 1.0))}


def _write_cohort(folder: Path, ids=("p0", "p1", "p2"), bad: bool = True) -> dict:
    """Tiny 2D pairs with known non-identity truths (relative paths in the CSV), plus an unreadable one."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    truths, rows = {}, []
    for pid in ids:
        angle, shift = ANGLES[pid]
        fixed, moving, truth = known_pair_2d(angle_deg=angle, shift_mm=shift)
        sitk.WriteImage(fixed, str(folder / "img" / f"{pid}_f.nii.gz"))
        sitk.WriteImage(moving, str(folder / "img" / f"{pid}_m.nii.gz"))
        truths[pid] = (fixed, truth)
        rows.append(f"{pid},img/{pid}_f.nii.gz,img/{pid}_m.nii.gz")
    if bad:
        (folder / "img" / "broken.nii.gz").write_bytes(b"not an image")
        rows.append("bad,img/p0_f.nii.gz,img/broken.nii.gz")
    (folder / "cohort.csv").write_text("id,fixed,moving\n" + "\n".join(rows) + "\n")
    return truths


def _attempts(out: Path) -> list:
    path = out / ".batch" / "attempts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _summary(out: Path) -> dict:
    with open(out / "summary.csv", newline="") as f:
        return {row["id"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def finished_batch(tmp_path_factory):
    """One batch on a local cluster of 2 worker processes: 3 good pairs and one unreadable file."""
    pytest.importorskip("distributed", reason="needs Dask: pip install 'registration-suite[cluster]'")
    d = tmp_path_factory.mktemp("cohort")
    truths = _write_cohort(d)
    out = d / "D"
    proc = subprocess.run(CLI + ["batch", "--pairs", str(d / "cohort.csv"), "--output-dir", str(out), "--workers", "2",
                                 "--memory-per-worker", "2GB", "--options=--device cpu", "--json"],
                          capture_output=True, text=True, timeout=600)
    return d, out, truths, proc


@pytest.mark.slow
def test_local_cluster_batch_records_failure_and_finishes_the_others(finished_batch):
    d, out, truths, proc = finished_batch
    assert proc.returncode == 1, proc.stderr  # one pair failed
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["mode"] == "dask-local" and result["workers"] == 2 and result["failed"] == ["bad"]
    assert "dashboard:" in proc.stderr and "[batch] 3/4 done, 1 failed" in proc.stderr
    # the workers were two distinct processes
    assert len({a["pid"] for a in _attempts(out)}) == 2
    for pid, (fixed, truth) in truths.items():
        assert corner_error_mm(fixed, sitk.ReadTransform(str(out / pid / "transform.h5")), truth) < 1.5
        assert json.loads((out / pid / "pair.json").read_text())["status"] == "done"
    err = json.loads((out / "bad" / "error.json").read_text())
    assert err["exit_code"] == 2 and "broken.nii.gz" in err["message"] and "\n" not in err["message"]
    rows = _summary(out)
    assert list(rows) == ["p0", "p1", "p2", "bad"] and rows["bad"]["status"] == "failed"
    assert all(float(rows[p]["score"]) > 0 and float(rows[p]["peak_memory_mb"]) > 10 for p in truths)
    assert not any((out / ".tmp").iterdir()) if (out / ".tmp").exists() else True


class _ReportParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.section, self.images, self.rows, self._in_tbody = None, {}, [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and a.get("class") == "pair":
            self.section = a["id"].removeprefix("pair-")
            self.images[self.section] = []
        if tag == "img" and self.section:
            self.images[self.section].append(a.get("src", ""))
        if tag == "tbody":
            self._in_tbody = True
        if tag == "a" and self._in_tbody and a.get("href", "").startswith("#pair-"):
            self.rows.append(a["href"][6:])

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_tbody = False


@pytest.mark.slow
def test_report_parses_and_shows_every_pair(finished_batch):
    d, out, truths, _ = finished_batch
    text = (out / "report.html").read_text()
    parser = _ReportParser()
    parser.feed(text)
    parser.close()
    assert parser.rows[0] == "bad" and sorted(parser.rows) == ["bad", "p0", "p1", "p2"]  # failed first
    for pid in truths:  # checkerboard + edge overlay, embedded
        assert len(parser.images[pid]) == 2 and all(s.startswith("data:image/png;base64,iVBOR") for s in parser.images[pid])
    # the failed pair (unreadable moving image) is shown with its error and its readable fixed image alone
    assert "broken.nii.gz" in text and len(parser.images["bad"]) == 1
    assert parser.images["bad"][0].startswith("data:image/png;base64,iVBOR") and "the fixed image alone" in text
    assert "http://" not in text and "https://" not in text  # self-contained
    # `registration-suite report D` rewrites it
    os.remove(out / "report.html")
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()


@pytest.mark.slow
def test_resume_skips_finished_and_redoes_changed_input(finished_batch, tmp_path):
    d, out, truths, _ = finished_batch
    before = {p: (out / p / "pair.json").stat().st_mtime_ns for p in truths}
    n_attempts = len(_attempts(out))
    # p1's moving image changes (another known rotation): its hash changes, it must be redone
    fixed, moving, truth = known_pair_2d(angle_deg=-15.0, shift_mm=(2.0, 2.0))
    sitk.WriteImage(moving, str(d / "img" / "p1_m.nii.gz"))
    code = main(["batch", "--pairs", str(d / "cohort.csv"), "--output-dir", str(out), "--workers", "1", "--resume",
                 "--options=--device cpu", "--quiet", "--no-report"])
    assert code == 1  # "bad" is still bad and is retried (failed pairs are never reused)
    started = [a["id"] for a in _attempts(out)[n_attempts:] if a["event"] == "start"]
    assert sorted(started) == ["bad", "p1"]
    assert (out / "p0" / "pair.json").stat().st_mtime_ns == before["p0"]
    assert (out / "p2" / "pair.json").stat().st_mtime_ns == before["p2"]
    assert corner_error_mm(fixed, sitk.ReadTransform(str(out / "p1" / "transform.h5")), truth) < 1.5
    rows = _summary(out)
    assert rows["p0"]["reused"] == "yes" and rows["p1"]["reused"] == "no"


@pytest.mark.slow
def test_killed_worker_pair_is_retried(tmp_path):
    """The worker that already finished a pair is killed while running its next one: that pair is retried and
    the finished one (whose result Dask lost with the worker) is not registered a second time."""
    pytest.importorskip("distributed")
    truths = _write_cohort(tmp_path, ids=("p0", "p1", "p2"), bad=False)
    out = tmp_path / "D"
    proc = subprocess.Popen(CLI + ["batch", "--pairs", str(tmp_path / "cohort.csv"), "--output-dir", str(out),
                                   "--workers", "2", "--retries", "1", "--options=--device cpu", "--json", "--no-report"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim, deadline = None, time.time() + 300
    while victim is None and time.time() < deadline and proc.poll() is None:
        starts = [a for a in _attempts(out) if a["event"] == "start"]
        if len(starts) >= 3:  # the third pair starts on the worker that finished one of the first two
            victim = starts[2]
            time.sleep(0.5)  # let its child start, so the kill hits the pair mid-way
            os.kill(victim["pid"], signal.SIGKILL)
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=600)
    assert victim is not None, stderr
    assert proc.returncode == 0, stderr
    attempts = _attempts(out)
    starts = [a for a in attempts if a["id"] == victim["id"] and a["event"] == "start"]
    done = {p: sum(a["id"] == p and a["event"] == "done" for a in attempts) for p in truths}
    assert len(starts) == 2 and starts[1]["pid"] != victim["pid"]  # retried on another (or restarted) worker
    assert done == {p: 1 for p in truths}  # every pair registered exactly once
    for pid, (fixed, truth) in truths.items():
        assert corner_error_mm(fixed, sitk.ReadTransform(str(out / pid / "transform.h5")), truth) < 1.5


def test_in_process_without_dask_and_memory_limit(tmp_path, monkeypatch, capsys):
    _write_cohort(tmp_path, ids=("p0",), bad=False)
    monkeypatch.setattr(batch_mod, "dask_available", lambda: False)
    code = main(["batch", "--pairs", str(tmp_path / "cohort.csv"), "--output-dir", str(tmp_path / "D"), "--workers", "2"])
    assert code == 2 and "pip install" in capsys.readouterr().err
    # one worker runs in this process; a child over its memory limit is killed and recorded, not fatal
    code = main(["batch", "--pairs", str(tmp_path / "cohort.csv"), "--output-dir", str(tmp_path / "D"), "--workers", "1",
                 "--memory-per-worker", "40MB", "--no-report", "--no-previews", "--json"])
    out = capsys.readouterr()
    assert code == 1 and json.loads(out.out.strip())["mode"] == "in-process"
    err = json.loads((tmp_path / "D" / "p0" / "error.json").read_text())
    assert "memory limit" in err["message"] and err["exit_code"] < 0


def test_cohort_csv_checks_and_per_row_options(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mask.nii.gz").write_bytes(b"x")
    (tmp_path / "c.csv").write_text("id,fixed,moving,fixed_mask,seed\na1,f.nii,m.nii,sub/mask.nii.gz,3\na2,f.nii,m.nii,,\n")
    pairs = read_pairs(tmp_path / "c.csv")
    assert pairs[0].fixed == str((tmp_path / "f.nii").resolve())
    assert pairs[0].extra == {"--fixed-mask": str((tmp_path / "sub" / "mask.nii.gz").resolve()), "--seed": "3"}
    assert pairs[1].extra == {}
    for text, needle in [("id,fixed\na,b\n", "missing moving"), ("id,fixed,moving\na,f,m\na,f,m\n", "duplicate"),
                         ("id,fixed,moving\n../x,f,m\n", "names a folder"), ("id,fixed,moving\n", "no rows")]:
        (tmp_path / "c.csv").write_text(text)
        with pytest.raises(InputError, match=needle):
            read_pairs(tmp_path / "c.csv")


def test_auto_workers_bounded_by_cores_memory_and_pairs():
    cores = len(os.sched_getaffinity(0))
    assert batch_mod.auto_workers(100, 1) == cores
    assert batch_mod.auto_workers(1, 1) == 1
    assert batch_mod.auto_workers(100, 10**15) == 1  # nothing fits: still one
    assert batch_mod.parse_memory("4GB") == 4 * 10**9 and batch_mod.parse_memory("512MiB") == 512 * 2**20
    with pytest.raises(InputError):
        batch_mod.parse_memory("lots")


@pytest.mark.slow
def test_batch_of_chains_keeps_each_step(tmp_path):
    truths = _write_cohort(tmp_path, ids=("p2",), bad=False)
    code = main(["batch", "--pairs", str(tmp_path / "cohort.csv"), "--output-dir", str(tmp_path / "D"), "--workers", "1",
                 "--steps", "rigid-search", "--options", "rigid-search:--device cpu", "--quiet", "--no-report", "--no-previews"])
    assert code == 0
    fixed, truth = truths["p2"]
    folder = tmp_path / "D" / "p2"
    assert corner_error_mm(fixed, sitk.ReadTransform(str(folder / "transform.h5")), truth) < 1.5
    assert (folder / "steps" / "01_rigid-search.step.h5").is_file()
    assert json.loads((folder / "summary.json").read_text())["method"] == "pipeline"


def test_task_recomputed_after_worker_loss_does_not_register_again(tmp_path):
    """Dask recomputes a finished task whose result was held by a worker that died: the pair was published by
    this batch run (same run token), so the task returns its record and starts no child."""
    from RegistrationSuiteLib.cohort.runner import run_pair

    (tmp_path / "p0").mkdir()
    record = {"id": "p0", "status": "done", "run_token": "abc", "hash": "h"}
    (tmp_path / "p0" / "pair.json").write_text(json.dumps(record))
    job = {"id": "p0", "argv": ["rigid-search", "--fixed", "missing.nii", "--moving", "missing.nii"],
           "out_root": str(tmp_path), "hash": "h", "fixed": "f", "moving": "m", "run_token": "abc"}
    assert run_pair(job) == record
    assert [a["event"] for a in _attempts(tmp_path)] == ["already-done"]
    # another batch run (another token) does run it: here the inputs are missing, so it fails and says why
    failed = run_pair({**job, "run_token": "other", "previews": False})
    assert failed["status"] == "failed" and "missing.nii" in failed["message"]
    assert [a["event"] for a in _attempts(tmp_path)] == ["already-done", "start", "failed"]


def test_resident_memory_needs_no_psutil(monkeypatch):
    """The per-pair memory limit must not depend on psutil being installed (it is not a core dependency)."""
    import os
    import sys

    from RegistrationSuiteLib.cohort.runner import resident_memory

    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil now fails
    rss = resident_memory(os.getpid())
    assert rss is not None and rss > 10 * 2**20  # this pytest process holds well over 10 MB
    assert resident_memory(2**22 + 12345) is None  # no such process


@pytest.mark.slow
def test_mixed_cohort_rows_with_their_own_method_and_report_images(tmp_path):
    """One cohort mixing an image pair (the batch's rigid-search) and a label-map pair run by organ-points
    (the row's method/options columns): both registered correctly, and the review page has images for both."""
    truths = _write_cohort(tmp_path, ids=("p1",), bad=False)
    sitk.WriteImage(organ_labels(), str(tmp_path / "img" / "seg_f.nii.gz"))
    sitk.WriteImage(organ_labels(shift_vox=3), str(tmp_path / "img" / "seg_m.nii.gz"))  # organ 2: +6 mm in x
    with open(tmp_path / "cohort.csv", "a") as f:
        f.write("organs,img/seg_f.nii.gz,img/seg_m.nii.gz,organ-points,--device cpu --points-per-organ 300\n")
    text = (tmp_path / "cohort.csv").read_text().replace("id,fixed,moving\n", "id,fixed,moving,method,options\n")
    (tmp_path / "cohort.csv").write_text(text.replace("_m.nii.gz\n", "_m.nii.gz,,\n", 1))
    out = tmp_path / "D"
    code = main(["batch", "--pairs", str(tmp_path / "cohort.csv"), "--output-dir", str(out), "--workers", "1",
                 "--options=--device cpu", "--quiet"])
    assert code == 0
    fixed, truth = truths["p1"]
    assert corner_error_mm(fixed, sitk.ReadTransform(str(out / "p1" / "transform.h5")), truth) < 1.5
    record = json.loads((out / "organs" / "pair.json").read_text())
    assert record["command"][:2] == ["organ-points", "--device"] and record["status"] == "done"
    assert record["cpu_s"] > 0 and record["worker_peak_memory_mb"] >= record["peak_memory_mb"] * 0.5
    field = sitk.ReadTransform(str(out / "organs" / "transform.h5"))
    c2 = np.array(organ_labels().TransformContinuousIndexToPhysicalPoint((33, 20, 12)))
    assert np.asarray(field.TransformPoint(tuple(c2)))[0] - c2[0] == pytest.approx(6.0, abs=2.0)
    parser = _ReportParser()
    parser.feed((out / "report.html").read_text())
    assert sorted(parser.images) == ["organs", "p1"]
    assert len(parser.images["p1"]) == 2  # rigid: checkerboard + edges
    assert len(parser.images["organs"]) == 3  # a displacement field: + the Jacobian map
    rows = _summary(out)
    assert float(rows["organs"]["cpu_s"]) > 0 and rows["organs"]["status"] == "done"


def test_cohort_csv_method_and_options_columns(tmp_path):
    (tmp_path / "U.csv").write_text("1,0\n0,1\n")
    (tmp_path / "c.csv").write_text("id,fixed,moving,method,options,seed\n"
                                    "a,f.nii,m.nii,organ-points,\"--labels 1,2 --label-transition U.csv\",4\n"
                                    "b,f.nii,m.nii,,,\n")
    a, b = read_pairs(tmp_path / "c.csv")
    assert a.method == "organ-points" and a.extra == {"--seed": "4"}
    assert a.options == ["--labels", "1,2", "--label-transition", str((tmp_path / "U.csv").resolve())]
    assert a.command(["rigid-search", "--device", "cpu"]) == ["organ-points", *a.options]
    assert b.method is None and b.command(["rigid-search"]) == ["rigid-search"]
    # the options file's content is part of the pair's hash (resume redoes the pair when it changes)
    from RegistrationSuiteLib.cohort.pairs import pair_hash

    before = pair_hash(a, ["rigid-search"])
    (tmp_path / "U.csv").write_text("0.9,0.1\n0.1,0.9\n")
    assert pair_hash(a, ["rigid-search"]) != before
    (tmp_path / "c.csv").write_text("id,fixed,moving,method,options\na,f,m,organ-points,--labels 1,2\n")
    with pytest.raises(InputError, match="must be quoted"):
        read_pairs(tmp_path / "c.csv")
    (tmp_path / "c.csv").write_text("id,fixed,moving,options\na,f,m,--seed 3\n")
    with pytest.raises(InputError, match="needs a 'method'"):
        read_pairs(tmp_path / "c.csv")
    (tmp_path / "c.csv").write_text("id,fixed,moving,method\na,f,m,pipeline\n")
    assert main(["batch", "--pairs", str(tmp_path / "c.csv"), "--output-dir", str(tmp_path / "D")]) == 2


def test_output_dir_that_would_destroy_inputs_is_refused(tmp_path, capsys):
    """A pair's folder D/<id>/ is replaced by its results: refused, before anything runs, when it holds an input
    or is not a batch result; the CSV may not be D/summary.csv; D may not be a file. Nothing is touched."""
    (tmp_path / "p0").mkdir()
    fixed, moving, _ = known_pair_2d()
    sitk.WriteImage(fixed, str(tmp_path / "p0" / "f.nii.gz"))
    sitk.WriteImage(moving, str(tmp_path / "p0" / "m.nii.gz"))
    (tmp_path / "p0" / "notes.txt").write_text("the user's own file")
    (tmp_path / "cohort.csv").write_text("id,fixed,moving\np0,p0/f.nii.gz,p0/m.nii.gz\n")
    before = sorted(p.name for p in (tmp_path / "p0").iterdir())

    def batch(out, csv="cohort.csv"):
        return main(["batch", "--pairs", str(tmp_path / csv), "--output-dir", str(out), "--workers", "1",
                     "--quiet", "--no-report", "--no-previews"])

    assert batch(tmp_path) == 2  # D = the data folder: D/p0/ holds the pair's own inputs
    assert "lies in" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "p0").iterdir()) == before
    (tmp_path / "D" / "p0").mkdir(parents=True)
    (tmp_path / "D" / "p0" / "mine.txt").write_text("not a batch result")
    (tmp_path / "c2.csv").write_text("id,fixed,moving\np0,p0/f.nii.gz,p0/m.nii.gz\n")
    assert batch(tmp_path / "D", "c2.csv") == 2
    assert "is not a batch result" in capsys.readouterr().err and (tmp_path / "D" / "p0" / "mine.txt").is_file()
    (tmp_path / "E").mkdir()
    (tmp_path / "E" / "summary.csv").write_text("id,fixed,moving\nq0,../p0/f.nii.gz,../p0/m.nii.gz\n")
    assert batch(tmp_path / "E", "E/summary.csv") == 2
    assert "is the batch's output summary.csv" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert batch(tmp_path / "afile") == 2 and "is a file" in capsys.readouterr().err
    # a folder of an earlier batch (pair.json) is replaced as before
    assert batch(tmp_path / "F") == 0 and batch(tmp_path / "F") == 0


@pytest.mark.slow
def test_optional_outputs_of_each_pair_land_in_its_folder(tmp_path, capsys):
    """``--options "--output-qa qa.png ..."``: each pair writes its own qa.png (and resampled image) into
    D/<id>/, published with the rest; absolute or reserved names are refused before anything runs."""
    _write_cohort(tmp_path, ids=("p0", "p2"), bad=False)
    out = tmp_path / "D"
    code = main(["batch", "--pairs", str(tmp_path / "cohort.csv"), "--output-dir", str(out), "--workers", "1",
                 "--options=--device cpu --output-qa qa.png --output-resampled=r.nii.gz", "--quiet", "--no-report",
                 "--no-previews"])
    assert code == 0
    for pid in ("p0", "p2"):
        assert (out / pid / "qa.png").is_file()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / pid / "r.nii.gz"))).shape[::-1],
                                      sitk.ReadImage(str(tmp_path / "img" / f"{pid}_f.nii.gz")).GetSize())
    assert not (tmp_path / "qa.png").exists() and not Path("qa.png").exists()
    for bad, needle in [(f"--output-qa {tmp_path / 'x.png'}", "give a file name"), ("--output-qa ../x.png", "give a file name"),
                        ("--output-diagnostics summary.json", "the batch's own file")]:
        code = main(["batch", "--pairs", str(tmp_path / "cohort.csv"), "--output-dir", str(tmp_path / "E"),
                     "--workers", "1", f"--options=--device cpu {bad}", "--quiet"])
        assert code == 2 and needle in capsys.readouterr().err
        assert not (tmp_path / "E").exists()

"""Benchmark of the cohort batch machinery (``registration-suite batch``) on this machine.

Cohort: every ordered pair of the stroke subject's T1/T2/FLAIR (``../shared/data/brain/stroke``, one 1 mm
grid) on one axial slice (2D, so the benchmark stays short on 2 shared cores); the moving image of each pair
is its modality seen through a known rigid transform (rotation ±15–30°, shift ±15 mm) on its own 1.25 mm
grid, so each pair has a known non-identity fixed→moving answer. Method: ``rigid-search --device cpu --rotations 300,60,3`` (a reduced
search, to keep the benchmark short). Plus the abdomen organ pairs: the TotalSegmentator label maps of
subjects A and B (``../shared/data/abdomen``), both ways, registered by ``organ-points`` (the cohort CSV's
``method``/``options`` columns), scored by the Dice of the warped organs.

Measured (each figure written by this script into its own BENCHMARKS.md section):
- wall time of the whole cohort: the CLI called directly pair after pair, the batch machinery without Dask,
  a Dask local cluster with 1, 2 (and 4) worker processes (previews and report off, so the work is the same);
- per-pair overhead of the batch machinery against calling the CLI directly, each pair run both ways back to
  back (the machine is shared: slow load changes then hit both alike);
- peak memory of a pair's child process against the per-worker limit;
- ``--resume`` of the finished batch (the whole ``registration-suite batch`` command, interpreter start included);
- fault test: a Dask batch of 2 workers where one worker process is killed (SIGKILL) while running a pair;
  every pair must complete exactly once (attempt log) with a correct transform.

Usage::

    nice -n 10 python Testing/Benchmarks/bench_cohort.py [--workers 1,2,4] [--write]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from RegistrationSuiteLib.cohort.batch import BatchOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, markdown_table, require_shared_data, update_benchmarks_md  # noqa: E402

MODALITIES = ("T1", "T2", "FLAIR")
ORGAN_OPTIONS = ["--device", "cpu", "--labels", "1,2,3,5,6,7"]  # as bench_organ_points.py's real pair
CLI = [sys.executable, "-m", "RegistrationSuiteLib"]
COMMAND = ["rigid-search", "--device", "cpu", "--rotations", "300,60,3"]
OUT = REPO / "Testing" / "Benchmarks" / "output" / "cohort"


def _slice(image: sitk.Image, z: int) -> sitk.Image:
    """Axial slice ``z`` as a 2D image (1 mm pixels, identity direction, origin at 0)."""
    out = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[z].astype(np.float32))
    out.SetSpacing(image.GetSpacing()[:2])
    return out


def make_cohort(slices=(70,), seed: int = 0) -> dict:
    """Write the images and ``cohort.csv``; returns ``{id: (fixed path, truth 3x3)}``."""
    from RegistrationSuiteLib.geometry import rigid_about_center, sitk_affine_from_matrix

    stroke = require_shared_data("brain", "stroke")
    rng = np.random.default_rng(seed)
    img = {m: sitk.ReadImage(str(stroke / f"{m}.nii.gz")) for m in MODALITIES}
    d = OUT / "data"
    d.mkdir(parents=True, exist_ok=True)
    rows, truths = [], {}
    for z in slices:
        for a, b in itertools.permutations(MODALITIES, 2):
            pid = f"{a}-{b}-z{z}"
            fixed, source = _slice(img[a], z), _slice(img[b], z)
            center = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()])
            angle = np.deg2rad(rng.uniform(15, 30) * rng.choice([-1, 1]))
            rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            truth = rigid_about_center(rot, center, rng.uniform(-15, 15, 2))
            # moving(y) = B(truth⁻¹(y)) on its own grid (1.25 mm pixels): truth maps fixed points onto it
            grid = sitk.Image([int(s / 1.25) for s in fixed.GetSize()], sitk.sitkFloat32)
            grid.SetSpacing((1.25, 1.25))
            grid.SetOrigin((-6.0, 4.0))
            moving = sitk.Resample(source, grid, sitk_affine_from_matrix(np.linalg.inv(truth)), sitk.sitkLinear, 0.0)
            sitk.WriteImage(fixed, str(d / f"{pid}_fixed.nii.gz"))
            sitk.WriteImage(moving, str(d / f"{pid}_moving.nii.gz"))
            rows.append(f"{pid},data/{pid}_fixed.nii.gz,data/{pid}_moving.nii.gz,,")
            truths[pid] = (d / f"{pid}_fixed.nii.gz", truth)
    (OUT / "cohort.csv").write_text("id,fixed,moving,method,options\n" + "\n".join(rows + organ_rows()) + "\n")
    return truths


def organ_rows() -> list:
    """The abdomen organ pairs (label maps of subjects A and B, both ways), each with its own method."""
    a = require_shared_data("abdomen", "subjectA_seg_totalsegmentator.nii.gz")
    b = require_shared_data("abdomen", "subjectB_seg_totalsegmentator.nii.gz")
    return [f"abdomen-{fa}-{fb},{pf},{pm},organ-points,\"{' '.join(ORGAN_OPTIONS)}\""
            for fa, pf, fb, pm in (("A", a, "B", b), ("B", b, "A", a))]


def organ_dice(pair, transform_path) -> float:
    """Mean Dice of the moving organs warped onto the fixed labels (within the moving field of view), as in
    bench_organ_points.py's real-pair table."""
    from bench_organ_points import ORGANS, overlap_scores

    fixed_seg, moving_seg = sitk.ReadImage(pair.fixed), sitk.ReadImage(pair.moving)
    tx = sitk.ReadTransform(str(transform_path))
    warped = sitk.Resample(moving_seg, fixed_seg, tx, sitk.sitkNearestNeighbor, 0, moving_seg.GetPixelID())
    ones = sitk.Image(moving_seg.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving_seg)
    inside = sitk.Resample(ones, fixed_seg, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    scores = overlap_scores(fixed_seg, moving_seg, warped, inside, ORGANS)
    return float(np.mean([v[0] for v in scores.values()]))


def cohort_pairs() -> list:
    from RegistrationSuiteLib.cohort.pairs import read_pairs

    return read_pairs(OUT / "cohort.csv")


def corner_error(fixed_path, transform_path, truth) -> float:
    from RegistrationSuiteLib.geometry import Grid, affine_matrix_from_sitk, apply_affine

    corners = Grid.from_image(sitk.ReadImage(str(fixed_path))).corners()
    tx = sitk.ReadTransform(str(transform_path))
    est = affine_matrix_from_sitk(tx, tx.GetDimension())
    return float(np.linalg.norm(apply_affine(est, corners) - apply_affine(truth, corners), axis=1).mean())


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _direct(pair, folder: Path) -> tuple:
    """(wall s, CPU s) of the CLI called directly on one pair."""
    # The same thread settings as a batch child with one thread per worker: only the machinery differs.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    t, c = time.perf_counter(), _children_cpu()
    subprocess.run(CLI + pair.command(COMMAND) + ["--fixed", pair.fixed, "--moving", pair.moving,
                                                  "--output", str(folder / f"{pair.id}.h5"), "--json", "--quiet"],
                   check=True, capture_output=True, env=env)
    return time.perf_counter() - t, _children_cpu() - c


def _machinery(pair, folder: Path) -> tuple:
    """(wall s, CPU s of the pair's child) of one pair through the batch machinery (child wrapper, memory
    polling, atomic folder, records), no Dask."""
    from RegistrationSuiteLib.cohort.batch import BatchOptions, plan
    from RegistrationSuiteLib.cohort.runner import run_pair

    (job,), _ = plan([pair], BatchOptions(command=COMMAND, previews=False), folder)
    t = time.perf_counter()
    record = run_pair(job)
    if record["status"] != "done":
        sys.exit(f"{pair.id}: {record['message']}")
    return time.perf_counter() - t, record["cpu_s"]


def run_interleaved() -> dict:
    """Per pair, the CLI called directly and the same pair through the batch machinery, back to back (order
    alternating), so slow changes of the machine's load hit both alike. Returns ``{id: [direct wall, direct
    CPU, machinery wall, machinery CPU]}``."""
    d = OUT / "interleaved"
    d.mkdir(exist_ok=True)
    out = {}
    for k, pair in enumerate(cohort_pairs()):
        if k % 2 == 0:
            a, b = _direct(pair, d), _machinery(pair, d)
        else:
            b, a = _machinery(pair, d), _direct(pair, d)
        out[pair.id] = [*a, *b]
        print(pair.id, out[pair.id], flush=True)
    return out


def run_api(workers: int, use_dask: bool, name: str) -> float:
    import shutil

    from RegistrationSuiteLib.cohort.batch import BatchOptions, run_batch
    from RegistrationSuiteLib.cohort.pairs import read_pairs

    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    opts = BatchOptions(command=COMMAND, workers=workers, use_dask=use_dask, previews=False, progress=False)
    t0 = time.perf_counter()
    outcome = run_batch(read_pairs(OUT / "cohort.csv"), opts, out, log=lambda *a, **k: None)
    wall = time.perf_counter() - t0
    bad = [r["id"] for r in outcome["records"] if r["status"] != "done"]
    if bad:
        sys.exit(f"{name}: pairs failed: {bad}")
    recs = outcome["records"]
    return {"wall": wall, "cpu_pairs": sum(r["cpu_s"] for r in recs),
            "peak_mb": max(r["peak_memory_mb"] for r in recs),
            "worker_peak_mb": max(r["worker_peak_memory_mb"] for r in recs),
            "limit_mb": recs[0]["memory_limit_mb"], "load": os.getloadavg()[0]}


def cached(key: str, compute, fresh: bool):
    """Run ``compute()`` once per phase: results are kept in ``output/cohort/phases.json`` so an interrupted
    benchmark resumes where it stopped (the cohort is rebuilt identically from its seed)."""
    path = OUT / "phases.json"
    phases = json.loads(path.read_text()) if path.exists() and not fresh else {}
    if key not in phases:
        before = os.getloadavg()[0]
        phases[key] = compute()
        phases.setdefault("load", {})[key] = [before, os.getloadavg()[0]]
        path.write_text(json.dumps(phases, indent=1))
    print(key, phases[key], flush=True)
    return phases[key]


def resume_seconds(name: str) -> tuple:
    out = OUT / name
    t0 = time.perf_counter()
    proc = subprocess.run(CLI + ["batch", "--pairs", str(OUT / "cohort.csv"), "--output-dir", str(out), "--resume",
                                 "--no-report", "--json", "--quiet", "--options=" + " ".join(COMMAND[1:])], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def fault_test(truths: dict) -> dict:
    import shutil

    out = OUT / "fault"
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.Popen(CLI + ["batch", "--pairs", str(OUT / "cohort.csv"), "--output-dir", str(out), "--workers", "2",
                                   "--retries", "1", "--options=" + " ".join(COMMAND[1:]), "--json", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log, victim = out / ".batch" / "attempts.jsonl", None
    while victim is None and proc.poll() is None:
        starts = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        starts = [a for a in starts if a["event"] == "start"]
        if len(starts) >= 3:  # the third pair: the batch is under way on both workers
            victim = starts[-1]
            time.sleep(2.0)  # mid-pair
            os.kill(victim["pid"], signal.SIGKILL)
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    attempts = [json.loads(x) for x in log.read_text().splitlines()]
    done_s = {p: sum(a["id"] == p and a["event"] == "done" for a in attempts) for p in truths}
    errors = {p: corner_error(truths[p][0], out / p / "transform.h5", truths[p][1]) for p in truths if done_s[p]}
    ids = [p.id for p in cohort_pairs()]
    done = {p: sum(a["id"] == p and a["event"] == "done" for a in attempts) for p in ids}
    return {"exit": proc.returncode, "victim": victim["id"] if victim else None,
            "starts_of_victim": sum(a["id"] == (victim or {}).get("id") and a["event"] == "start" for a in attempts),
            "completed_once": all(v == 1 for v in done.values()), "max_error": max(errors.values()) if errors else None,
            "report": (out / "report.html").is_file(), "report_pairs_with_images": _pairs_with_images(out / "report.html")}


def _pairs_with_images(report: Path) -> int:
    """Pairs whose section of the review page holds at least one embedded image."""
    if not report.is_file():
        return 0
    sections = report.read_text().split('<div class="pair" id="pair-')[1:]
    return sum('src="data:image/png;base64,' in sec for sec in sections)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--write", action="store_true", help="write the BENCHMARKS.md section")
    ap.add_argument("--fresh", action="store_true", help="measure every phase again (default: resume)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    truths = make_cohort()
    pairs = cohort_pairs()
    n, n_organ = len(pairs), sum(p.method == "organ-points" for p in pairs)
    if args.fresh and (OUT / "phases.json").exists():
        (OUT / "phases.json").unlink()
    inter = cached("interleaved", run_interleaved, False)
    per_direct = [inter[p.id][0] for p in pairs]
    per_machinery = [inter[p.id][2] for p in pairs]
    direct, direct_cpu = sum(per_direct), sum(inter[p.id][1] for p in pairs)
    runs = {"CLI directly, pair after pair": {"wall": direct, "cpu_pairs": direct_cpu},
            "batch machinery without Dask (interleaved with direct)": {"wall": sum(per_machinery),
                                                                      "cpu_pairs": sum(inter[p.id][3] for p in pairs)}}
    workers = [int(x) for x in args.workers.split(",")]
    for w in workers:
        runs[f"Dask local, {w} worker(s)"] = cached(f"dask{w}", lambda: run_api(w, True, f"dask{w}"), False)
    first = f"dask{workers[0]}"
    errors = [corner_error(truths[p][0], OUT / first / p / "transform.h5", truths[p][1]) for p in truths]
    dice = {p.id: organ_dice(p, OUT / first / p.id / "transform.h5") for p in pairs if p.method == "organ-points"}
    resume_wall, resume_out = cached("resume", lambda: resume_seconds(first), False)
    fault = cached("fault", lambda: fault_test(truths), False)
    loads = [v for pair in (json.loads((OUT / "phases.json").read_text()).get("load") or {}).values() for v in pair]
    load_text = (f"1-min load average {min(loads):.1f}–{max(loads):.1f} at the start and end of the measured phases"
                 if loads else "load average of the measured phases not recorded")
    # a load at or below the core count is the batch's own processes: then no other job shared the cores
    quiet = bool(loads) and max(loads) <= (os.cpu_count() or 1)
    rel = [(m - d) / d for m, d in zip(per_machinery, per_direct)]
    base = runs.get("Dask local, 1 worker(s)", runs["CLI directly, pair after pair"])["wall"]
    rows = []
    for name, r in runs.items():
        overhead = (r["wall"] - direct) / n
        rows.append([name, f"{r['wall']:.1f}", f"{r['cpu_pairs']:.1f}", f"{r['wall'] / n:.1f}",
                     f"{overhead:+.2f} s ({100 * overhead / (direct / n):+.1f} %)", f"{base / r['wall']:.2f}×"])
    dask_runs = {w: runs[f"Dask local, {w} worker(s)"] for w in workers}
    mem_lines = [f"{w} worker(s): largest worker + pair process {r['worker_peak_mb']:.0f} MiB, largest pair process "
                 f"{r['peak_mb']:.0f} MiB, limit {r['limit_mb']:.0f} MiB per worker — "
                 f"{'within' if r['worker_peak_mb'] <= r['limit_mb'] else 'OVER'} the limit"
                 for w, r in dask_runs.items()]
    speed = ", ".join(f"{w} worker(s) {base / r['wall']:.2f}×" for w, r in dask_runs.items())
    body = "\n".join([
        "## Cohort batches (`bench_cohort.py`)",
        f"Command: `python Testing/Benchmarks/bench_cohort.py --workers {args.workers} --fresh --write`. "
        f"Cohort: {n} pairs. {n - n_organ} 2D image pairs: every ordered pair of the stroke T1/T2/FLAIR on one axial "
        "slice, each moving image under a known rigid transform (±15–30°, ±15 mm) on its own 1.25 mm grid, `"
        + " ".join(COMMAND) + f"` per pair. {n_organ} abdomen organ pairs: the TotalSegmentator label maps of subjects A "
        "and B, both ways, `organ-points " + " ".join(ORGAN_OPTIONS) + "` (the cohort CSV's method/options columns). "
        "One interpreter per pair, as a user's loop would; one compute thread per pair in every run; previews and "
        "report off in the timed runs. The Dask rows include starting and closing the local cluster (scheduler and "
        "worker processes importing Dask and the library), a fixed cost per batch, not per pair. CPU s = user + "
        "system time of the pairs' processes (the same work in every row: wall time above it is waiting). Machine: "
        + (f"{os.cpu_count()} cores, no other jobs during the measured phases ({load_text}, the batch's own "
           "processes)." if quiet else
           f"{os.cpu_count()} cores shared with other jobs ({load_text}): wall times are upper bounds."),
        "",
        markdown_table(["run", "wall s", "CPU s (pairs)", "s / pair", "difference per pair vs direct",
                        "speed-up vs Dask 1 worker"], rows),
        "",
        f"- Speed-up over 1 worker: {speed}. This machine has {os.cpu_count()} cores, so no run can be faster than "
        f"about {os.cpu_count()}× and more workers than cores only share the same cores"
        + ("." if quiet else "; other jobs on the machine used those cores too during the runs (load averages "
           "above), so these figures say what this shared machine gave, not what an idle one would.") + (
            f" Here {max(workers)} workers finished before {sorted(workers)[-2]} although there are only "
            f"{os.cpu_count()} cores: most likely because, with other jobs competing for the cores, more processes "
            "get a larger share of them (an effect of the shared machine, not of the batch)."
            if len(workers) > 2 and dask_runs[max(workers)]["wall"] < dask_runs[sorted(workers)[-2]]["wall"] else ""),
        f"- Per-pair overhead of the batch machinery (child wrapper, memory polling, atomic pair folder, records), "
        f"each pair run directly and through the machinery back to back: median "
        f"{100 * np.median(rel):+.1f} %, range {100 * min(rel):+.1f} to {100 * max(rel):+.1f} % (target ≤ 10 %); the "
        f"pairs' CPU time the same way: {runs['CLI directly, pair after pair']['cpu_pairs']:.1f} s directly, "
        f"{runs['batch machinery without Dask (interleaved with direct)']['cpu_pairs']:.1f} s through the machinery "
        "(its own polling and bookkeeping in the calling process not counted)." + (
            "" if quiet else " Under this load the wall-time spread between two runs of the same pair exceeds the "
            "overhead being measured."),
        "- Memory per worker (a worker process plus the pair process it runs, resident memory polled every 0.25 s; "
        "the limit is enforced on that sum): " + "; ".join(mem_lines) + ".",
        f"- Accuracy (Dask {workers[0]} worker run): stroke pairs mean corner error {np.mean(errors):.2f} mm, max "
        f"{np.max(errors):.2f} mm over {len(errors)} pairs; abdomen organ pairs mean Dice of the warped organs "
        + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()) + ".",
        f"- `--resume` of the finished batch ({resume_out['reused']} of {resume_out['pairs']} pairs reused, "
        f"{resume_out['ran']} run): {resume_wall:.2f} s for the whole command (target ≤ 5 s).",
        f"- Fault test (2 workers, one worker process killed with SIGKILL 2 s into pair `{fault['victim']}`): exit code "
        f"{fault['exit']}, that pair started {fault['starts_of_victim']} times, every pair (all {n}) completed exactly "
        f"once: {'yes' if fault['completed_once'] else 'NO'}, max corner error of the stroke pairs "
        f"{fault['max_error']:.2f} mm, report written: {'yes' if fault['report'] else 'no'}, with images for {fault.get('report_pairs_with_images')} of "
        f"{n} pairs.",
    ])
    print(body)
    (OUT / "bench_cohort.json").write_text(json.dumps({"runs": runs, "interleaved": inter, "errors": errors, "dice": dice,
                                                         "resume_s": resume_wall, "fault": fault}, indent=1))
    if args.write:
        update_benchmarks_md("cohort", body)


if __name__ == "__main__":
    main()

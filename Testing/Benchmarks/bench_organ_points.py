"""Benchmark of multi-organ point cloud registration (MO-BCPD) against label-blind BCPD and per-organ baselines.

Every row is scored on the displacement field the method delivers: for MO-BCPD the ``.h5`` that
``registration-suite organ-points`` writes (run as a user would, in a child process, from point files or
label images), for the baselines their thin-plate-spline grid (``organ_baselines.py``).

Synthetic accuracy: multi-organ deformations of the TotalSegmentator organs of
``../shared/data/abdomen/subjectA_seg_totalsegmentator.nii.gz`` (see ``organ_cases.py``): spleen 1, kidney
right 2, kidney left 3, liver 5, stomach 6, pancreas 7; categories "clean" and "hard" (5 % contact labels
wrong). Real inter-subject check: the organs of subject A and subject B registered both ways, the moving labels
warped with the delivered field, per-organ Dice and mean surface distance. Scale: time and peak memory of the
library call at several sizes.

Usage::

    nice -n 10 python Testing/Benchmarks/bench_organ_points.py --cases 4 [--write]

Whole-command timing on a quiet machine (its own section, ``organ_points-timing``)::

    python Testing/Benchmarks/bench_organ_points.py --timing-only 5 --timing-pause 20 --write
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_USER_OMP = os.environ.get("OMP_NUM_THREADS")  # the timing mode runs the CLI in the user's environment
os.environ.setdefault("OMP_NUM_THREADS", "1")  # before NumPy loads its BLAS: 2 shared cores, one thread each
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCHMARKS_MD, busy_cpu_seconds, markdown_table, peak_rss_mb, require_shared_data,  # noqa: E402
                    update_benchmarks_md)

ORGANS = (1, 2, 3, 5, 6, 7)
ORGAN_NAMES = {1: "spleen", 2: "kidney R", 3: "kidney L", 5: "liver", 6: "stomach", 7: "pancreas"}
OURS = "MO-BCPD (CLI defaults)"
PAPER = ("MO-BCPD as in the paper (CLI --organ-prealign none --lambda-mm 10 --beta-mm 30 --omega 0 --common-fov off "
         "--sampling random)")
RANDOM = "MO-BCPD with random point draws (CLI --sampling random)"
BLIND = "BCPD label-blind (CLI --coherence global --lambda-mm 10 --beta-mm 30)"
RIGID = "per-organ rigid CPD + TPS"
RIGID_DEF = "per-organ rigid + deformable CPD + TPS"
PYCPD = "pycpd label-blind rigid + deformable CPD + TPS (1000 points per set)"
BLIND_ARGS = ("--coherence", "global", "--lambda-mm", "10", "--beta-mm", "30")
PAPER_ARGS = ("--organ-prealign", "none", "--lambda-mm", "10", "--beta-mm", "30", "--omega", "0", "--common-fov", "off",
              "--sampling", "random")
RANDOM_ARGS = ("--sampling", "random")
REAL_SEEDS = (0, 1, 2, 3, 4)  # MO-BCPD on the real pair: surface sampling, EM subsets and eigensolver seeds
SEEDED = (OURS, RANDOM)  # the rows run with every seed of REAL_SEEDS on the real pair


def organ_surfaces(n_dense: int = 6000, seed: int = 0) -> dict:
    """Dense surface samples per organ of the shared segmentation (moving space, LPS mm)."""
    import SimpleITK as sitk

    from RegistrationSuiteLib.surfaces import labels_to_points

    seg = sitk.ReadImage(str(require_shared_data("abdomen", "subjectA_seg_totalsegmentator.nii.gz")))
    pts = labels_to_points(seg, list(ORGANS), n_dense, seed=seed)
    return {l: pts.points[pts.labels == l] for l in ORGANS}


# ------------------------------------------------------------------------------------------- methods
def run_cli(fixed, moving, workdir, extra=(), stages=None):
    """``registration-suite organ-points`` in a child process; returns (delivered transform, (wall, CPU seconds)).
    ``stages`` (a dict), if given, receives the registration's own wall time (``--json`` "timings": load,
    kernel, em, interpolate, total); the rest of the process wall time is start-up (Python, imports),
    reading and writing the ``.h5``."""
    import json

    import SimpleITK as sitk

    out = Path(workdir) / "field.h5"
    cmd = [sys.executable, "-m", "RegistrationSuiteLib", "organ-points", "--fixed", str(fixed), "--moving",
           str(moving), "--output", str(out), "--json", *extra]
    t0, c0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode != 0:
        raise RuntimeError(f"CLI exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    if stages is not None:
        stages.update(json.loads(proc.stdout.strip().splitlines()[-1])["timings"])
    return sitk.ReadTransform(str(out)), (seconds, cpu)


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes (robust to other work on the machine)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _write_case_points(case, workdir):
    from RegistrationSuiteLib.io.points import LabeledPoints, write_points

    f, m = Path(workdir) / "fixed.csv", Path(workdir) / "moving.csv"
    write_points(LabeledPoints(case.fixed_points, case.fixed_labels), f)
    write_points(LabeledPoints(case.moving_points, case.moving_labels), m)
    return f, m


def _cli_method(extra):
    def run(case, stages=None):
        with tempfile.TemporaryDirectory() as tmp:
            fixed, moving = _write_case_points(case, tmp)
            return run_cli(fixed, moving, tmp, extra, stages)

    return run


def _baseline_method(deformable):
    def run(case, stages=None):
        from organ_baselines import per_organ_cpd, tps_field

        from RegistrationSuiteLib.methods.organ_point_cloud.field import field_grid

        t0, c0 = time.perf_counter(), time.process_time()
        moved = per_organ_cpd(case.fixed_points, case.fixed_labels, case.moving_points, case.moving_labels,
                              deformable=deformable)
        grid = field_grid(case.fixed_points, 3.0, 10.0)
        transform = tps_field(case.fixed_points, moved, case.fixed_labels, grid)
        return transform, (time.perf_counter() - t0, time.process_time() - c0)

    return run


def _pycpd_global(case, stages=None):
    from organ_baselines import global_cpd, tps_field

    from RegistrationSuiteLib.methods.organ_point_cloud.field import field_grid

    t0, c0 = time.perf_counter(), time.process_time()
    idx, moved = global_cpd(case.fixed_points, case.moving_points)
    grid = field_grid(case.fixed_points, 3.0, 10.0)
    transform = tps_field(case.fixed_points[idx], moved, case.fixed_labels[idx], grid)
    return transform, (time.perf_counter() - t0, time.process_time() - c0)


METHODS = {
    OURS: _cli_method(()),
    RANDOM: _cli_method(RANDOM_ARGS),
    PAPER: _cli_method(PAPER_ARGS),
    BLIND: _cli_method(BLIND_ARGS),
    RIGID: _baseline_method(False),
    RIGID_DEF: _baseline_method(True),
    PYCPD: _pycpd_global,
}


def probreg_status() -> str:
    """Why probreg's BCPD (a peer the issue's paper compares with) has no row, or '' if it could run."""
    try:
        import probreg.bcpd  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - e.g. ModuleNotFoundError, or OSError from open3d's system libraries
        return f"`import probreg.bcpd` fails here ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    return ""


# ---------------------------------------------------------------------------------------- synthetic
CACHE = Path(__file__).resolve().parent / "output" / "organ_points_cases.json"


def _cache_key(*parts) -> str:
    """Results are reused only for the same code (commit, no uncommitted change under methods/ or here)."""
    root = Path(__file__).resolve().parents[2]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    diff = subprocess.run(["git", "-C", str(root), "diff", "HEAD", "--", "RegistrationSuite", "Testing/Benchmarks"],
                          capture_output=True, text=True).stdout
    return "|".join([head, hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else "clean", *map(str, parts)])


def _cached(key):
    import json

    return json.loads(CACHE.read_text()).get(key) if CACHE.exists() else None


def _store(key, value):
    import json

    data = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    data[key] = value
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    CACHE.write_text(json.dumps(data))


def accuracy_worker(name, category, cases, n_per_organ, seed, queue):
    import torch

    from organ_cases import CATEGORIES, errors, field_mapping, make_case

    torch.set_num_threads(1)
    surfaces = organ_surfaces()
    rows = []
    for c in range(cases):
        key = _cache_key(name, category, c, n_per_organ, seed)
        if _cached(key) is not None:  # resumable: a finished case of this code is not run again
            rows.append(_cached(key))
            continue
        case = make_case(surfaces, np.random.default_rng([seed, c]), n_per_organ=n_per_organ, **CATEGORIES[category])
        stages = {}
        try:
            transform, (seconds, cpu) = METHODS[name](case, stages)
            e = errors(case, field_mapping(transform))
        except Exception as exc:  # noqa: BLE001 - a failing method is a failed case, reported as such
            print(f"  {name} case {c}: {type(exc).__name__}: {exc}", file=sys.stderr)
            e, seconds, cpu = {"landmark_tre_mm": np.inf, "surface_tre_mm": np.inf, "landmark_tre_max_mm": np.inf}, np.nan, np.nan
        e["seconds"], e["cpu"], e["stages"] = seconds, cpu, stages
        e["before_mm"] = errors(case, lambda p, labels: p)["landmark_tre_mm"]
        if np.isfinite(e["landmark_tre_mm"]):
            _store(key, e)
        rows.append(e)
        print(f"  {name:52s} {category} case {c}: landmark TRE {e['landmark_tre_mm']:6.2f} mm, "
              f"surface {e['surface_tre_mm']:6.2f} mm, {seconds:5.1f} s ({cpu:5.1f} s CPU)", file=sys.stderr)
    queue.put(rows)


def in_process(target, *args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def synthetic_table(names, args):
    """Rows of the accuracy table and ``{(category, method): mean landmark TRE}``."""
    from organ_cases import CATEGORIES

    rows, means, stage_rows = [], {}, []
    for category in CATEGORIES:
        for name in names:
            res = in_process(accuracy_worker, name, category, args.cases, args.points_per_organ, args.seed)
            lm = np.array([r["landmark_tre_mm"] for r in res])
            means[(category, name)] = float(np.mean(lm))
            secs, cpu = np.array([r["seconds"] for r in res]), np.array([r["cpu"] for r in res])
            rows.append([category, name, f"{np.mean([r['before_mm'] for r in res]):.1f}", f"{np.mean(lm):.2f}",
                         f"{np.mean([r['surface_tre_mm'] for r in res]):.2f}",
                         f"{np.mean([r['landmark_tre_max_mm'] for r in res]):.1f}",
                         f"{np.median(secs):.1f}", f"{np.median(cpu):.1f}", f"{np.max(cpu):.1f}"])
            means[(category, name, "cpu_max")] = float(np.max(cpu))
            if name == OURS:
                stage_rows.append(_stage_row(category, res))
    return rows, means, stage_rows


def _stage_row(category, res):
    """Medians over the cases of where MO-BCPD's CLI run spends its wall time."""
    def med(key):
        vals = [r["stages"].get(key, np.nan) for r in res if r.get("stages")]
        return f"{np.median(vals):.2f}" if vals else "n/a"

    outside = [r["seconds"] - r["stages"]["total"] for r in res if r.get("stages")]
    return [category, f"{np.median([r['seconds'] for r in res]):.2f}", f"{np.median([r['cpu'] for r in res]):.2f}",
            f"{np.median(outside):.2f}" if outside else "n/a", med("load"), med("kernel"), med("em"),
            med("interpolate"), med("total")]


# ---------------------------------------------------------------------------------------- real pair
def overlap_scores(fixed_seg, moving_seg, warped, inside, labels):
    """Per organ present in both label images: ``(Dice, mean symmetric surface distance mm)`` on the fixed
    grid, within ``inside`` (the fixed voxels the delivered field maps into the moving image's field of view)."""
    import SimpleITK as sitk

    fa, wa, ma = (sitk.GetArrayFromImage(i) for i in (fixed_seg, warped, inside))
    moving_labels = set(np.unique(sitk.GetArrayViewFromImage(moving_seg)).tolist())
    out = {}
    for lab in labels:
        a, b = (fa == lab) & (ma > 0), (wa == lab) & (ma > 0)
        if lab not in moving_labels or not (fa == lab).any():
            continue
        dice = 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)
        out[lab] = (float(dice), _surface_distance(a, b, fixed_seg))
    return out


def _surface_distance(a, b, reference):
    import SimpleITK as sitk

    if a.sum() == 0 or b.sum() == 0:
        return float("inf")
    dist, contour = [], []
    for mask in (a, b):
        img = sitk.GetImageFromArray(mask.astype(np.uint8))
        img.CopyInformation(reference)
        dist.append(sitk.GetArrayFromImage(sitk.Abs(sitk.SignedMaurerDistanceMap(img, squaredDistance=False,
                                                                                 useImageSpacing=True))))
        contour.append(sitk.GetArrayFromImage(sitk.LabelContour(img)) > 0)
    return float(np.r_[dist[1][contour[0]], dist[0][contour[1]]].mean())


def real_pair_worker(name, seed, fixed_path, moving_path, queue):
    import SimpleITK as sitk

    fixed_seg, moving_seg = sitk.ReadImage(str(fixed_path)), sitk.ReadImage(str(moving_path))
    organs = ",".join(str(l) for l in ORGANS)
    with tempfile.TemporaryDirectory() as tmp:
        if name in (OURS, RANDOM, PAPER, BLIND):
            extra = {OURS: (), RANDOM: RANDOM_ARGS, PAPER: PAPER_ARGS, BLIND: BLIND_ARGS}[name]
            transform, (seconds, cpu) = run_cli(fixed_path, moving_path, tmp,
                                                ("--labels", organs, "--seed", str(seed), *extra))
        else:
            transform, (seconds, cpu) = _real_baseline(fixed_seg, moving_seg, deformable=name == RIGID_DEF)
    warped = sitk.Resample(moving_seg, fixed_seg, transform, sitk.sitkNearestNeighbor, 0, moving_seg.GetPixelID())
    ones = sitk.Image(moving_seg.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving_seg)
    inside = sitk.Resample(ones, fixed_seg, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    queue.put((overlap_scores(fixed_seg, moving_seg, warped, inside, ORGANS), seconds, cpu))


def _real_baseline(fixed_seg, moving_seg, deformable):
    """The per-organ baselines on label images: surface points sampled as the CLI samples them (1500/organ)."""
    from organ_baselines import per_organ_cpd, tps_field

    from RegistrationSuiteLib.methods.organ_point_cloud.field import field_grid
    from RegistrationSuiteLib.surfaces import image_labels, labels_to_points

    t0, c0 = time.perf_counter(), time.process_time()
    common = sorted(set(image_labels(fixed_seg).tolist()) & set(image_labels(moving_seg).tolist()) & set(ORGANS))
    f = labels_to_points(fixed_seg, common, 1500, 0)
    m = labels_to_points(moving_seg, common, 1500, 7919)
    moved = per_organ_cpd(f.points, f.labels, m.points, m.labels, deformable=deformable)
    transform = tps_field(f.points, moved, f.labels, field_grid(f.points, 3.0, 10.0))
    return transform, (time.perf_counter() - t0, time.process_time() - c0)


REAL_METHODS = (OURS, RANDOM, PAPER, BLIND, RIGID)  # the rigid + deformable baseline is left to the synthetic table


def real_pair_table(names):
    a = require_shared_data("abdomen", "subjectA_seg_totalsegmentator.nii.gz")
    b = require_shared_data("abdomen", "subjectB_seg_totalsegmentator.nii.gz")
    rows, summary = [], {}
    for label_f, fixed, label_m, moving in (("A", a, "B", b), ("B", b, "A", a)):
        for name, seed in [(n, s) for n in names if n in REAL_METHODS for s in (REAL_SEEDS if n in SEEDED else (0,))]:
            scores, seconds, cpu = in_process(real_pair_worker, name, seed, fixed, moving)
            dice = [scores[l][0] for l in sorted(scores)]
            summary[(label_f, name, seed)] = (float(np.mean(dice)), float(np.min(dice)), scores.get(7, (np.nan,))[0])
            rows.append([f"{label_f} ← {label_m}", name, str(seed), f"{np.mean(dice):.3f}", f"{np.min(dice):.3f}",
                         ", ".join(f"{ORGAN_NAMES[l]} {scores[l][0]:.2f} / {scores[l][1]:.1f}" for l in sorted(scores)),
                         f"{seconds:.1f}", f"{cpu:.1f}"])
            print(f"  real {label_f}<-{label_m} {name}: {rows[-1][2:]}", file=sys.stderr)
    return rows, summary


# ---------------------------------------------------------------------------------------- scale
def scale_worker(coherence, n_points, seed, queue):
    import torch

    from organ_cases import make_case

    from RegistrationSuiteLib.io.points import LabeledPoints
    from RegistrationSuiteLib.methods.organ_point_cloud import OrganPointCloudConfig, register_organ_point_cloud

    torch.set_num_threads(2)
    surfaces = organ_surfaces(n_dense=max(6000, n_points // len(ORGANS) + 1000))
    case = make_case(surfaces, np.random.default_rng(seed), n_per_organ=n_points // len(ORGANS))
    t0 = time.perf_counter()
    register_organ_point_cloud(LabeledPoints(case.fixed_points, case.fixed_labels),
                               LabeledPoints(case.moving_points, case.moving_labels),
                               OrganPointCloudConfig(device="cpu", coherence=coherence))
    queue.put((len(case.fixed_points), time.perf_counter() - t0, peak_rss_mb()))


# ------------------------------------------------------------------------ whole-command timing (quiet machine)
TIMING_CASES = (("clean", 0), ("hard", 0))  # (category, case) of the synthetic table: its own first cases
TIMING_SECTION = "organ_points-timing"


def _user_env() -> dict:
    """The environment a user's shell would give the CLI: this script's one-thread BLAS setting undone."""
    env = dict(os.environ)
    if _USER_OMP is None:
        env.pop("OMP_NUM_THREADS", None)
    else:
        env["OMP_NUM_THREADS"] = _USER_OMP
    return env


def timing_run(args) -> dict:
    """``--timing-only N``: ``registration-suite organ-points`` with its defaults, N times in fresh processes,
    on the first clean and the first hard case of the synthetic table (same seed and points per organ):
    wall time, CPU time (user + system of the process), peak memory, the landmark TRE of the ``.h5`` it
    wrote (a check that the timed run did the work), the 1-minute load average read just before each run
    and the CPU time the rest of the machine used during it."""
    import json

    import SimpleITK as sitk
    from bench_deformable import run_measured
    from organ_cases import CATEGORIES, errors, field_mapping, make_case

    surfaces = organ_surfaces()
    runs = []
    for category, c in TIMING_CASES:
        case = make_case(surfaces, np.random.default_rng([args.seed, c]), n_per_organ=args.points_per_organ,
                         **CATEGORIES[category])
        with tempfile.TemporaryDirectory() as tmp:
            fixed, moving = _write_case_points(case, tmp)
            out = Path(tmp) / "field.h5"
            cmd = [sys.executable, "-m", "RegistrationSuiteLib", "organ-points", "--fixed", str(fixed), "--moving",
                   str(moving), "--output", str(out), "--json"]
            for rep in range(args.timing_only):
                time.sleep(args.timing_pause)  # this script's previous run leaves the load average
                load, busy = os.getloadavg()[0], busy_cpu_seconds()
                env_before = os.environ.copy()
                os.environ.clear()
                os.environ.update(_user_env())
                try:
                    res = run_measured(cmd, tmp)
                finally:
                    os.environ.clear()
                    os.environ.update(env_before)
                other = max(0.0, busy_cpu_seconds() - busy - res["cpu_s"])
                rec = {"category": category, "case": c, "repeat": rep, "load_before": load, "other_cpu_s": other,
                       "seconds": res["seconds"], "cpu_s": res["cpu_s"], "peak_mb": res["peak_mb"], "rc": res["rc"]}
                if res["rc"] == 0 and out.exists():
                    rec["landmark_tre_mm"] = errors(case, field_mapping(sitk.ReadTransform(str(out))))["landmark_tre_mm"]
                    rec["registration_s"] = json.loads(res["stdout"].strip().splitlines()[-1])["timings"]["total"]
                    out.unlink()
                else:
                    rec["error"] = (res["stderr"].strip().splitlines() or ["?"])[-1][:200]
                runs.append(rec)
                print(json.dumps(rec), flush=True)
    import platform

    import torch

    return {"runs": runs, "cores": os.cpu_count(), "machine": f"{platform.machine()}, torch {torch.__version__}",
            "repeats": args.timing_only, "pause": args.timing_pause,
            "points_per_organ": args.points_per_organ, "seed": args.seed,
            "omp": _USER_OMP if _USER_OMP is not None else "unset"}


def summarise_timing(result: dict, argv) -> str:
    """The ``organ_points-timing`` section from a :func:`timing_run` result."""
    intro = (
        f"`registration-suite organ-points` with its default settings (one torch thread) in a fresh process, "
        f"{result['repeats']} time(s) per case, on the first 'clean' and the first 'hard' case of the synthetic "
        f"table's generator (seed {result['seed']}, {result['points_per_organ']} points per organ, six organs; "
        f"point files in, `.h5` out). Wall = the whole command, Python start-up, imports, reading and writing "
        f"included; CPU = user + system time of the process; registration = the wall time the command reports "
        f"for the registration itself (`--json` timings); other CPU = the CPU time the rest of the machine used "
        f"while the command ran (from /proc/stat; near 0 on a quiet machine, otherwise other work shared the "
        f"cores and that run's wall time is an upper bound); load = the 1-minute load average read just before "
        f"each run, {result.get('pause', 0):g} s after the previous one (it still carries part of this script's "
        f"own previous run). The landmark TRE of the written field shows each timed run did the full work. "
        f"OMP_NUM_THREADS as the caller's shell had it ({result.get('omp', 'unset')}). Machine: {result['cores']} "
        f"CPU cores, {result.get('machine', '?')}. Command: `python "
        f"Testing/Benchmarks/bench_organ_points.py {' '.join(argv)}`."
    )
    lines = ["### Whole command on a quiet machine (`bench_organ_points.py --timing-only`)", "", intro, ""]
    runs = result["runs"]
    header = ["case", "runs", "wall s median (min–max)", "CPU s median", "registration s median",
              "other CPU s mean (max)", "load before mean (max)", "landmark TRE (mm)", "peak MB"]
    rows, medians = [], {}
    for category, c in TIMING_CASES:
        rs = [r for r in runs if r["category"] == category and r["case"] == c]
        ok = [r for r in rs if r["rc"] == 0 and "landmark_tre_mm" in r]
        if not ok:
            rows.append([f"{category} {c}", f"0/{len(rs)}", "failed: " + (rs[0].get("error", "?") if rs else "not run"),
                         "", "", "", "", "", ""])
            continue
        wall = [r["seconds"] for r in ok]
        medians[category] = float(np.median(wall))
        rows.append([f"{category} {c}", f"{len(ok)}/{len(rs)}", f"{np.median(wall):.2f} ({min(wall):.2f}–{max(wall):.2f})",
                     f"{np.median([r['cpu_s'] for r in ok]):.2f}", f"{np.median([r['registration_s'] for r in ok]):.2f}",
                     f"{np.mean([r['other_cpu_s'] for r in ok]):.1f} ({max(r['other_cpu_s'] for r in ok):.1f})",
                     f"{np.mean([r['load_before'] for r in ok]):.2f} ({max(r['load_before'] for r in ok):.2f})",
                     f"{np.mean([r['landmark_tre_mm'] for r in ok]):.2f}", f"{max(r['peak_mb'] for r in ok):.0f}"])
    lines.append(markdown_table(header, rows))
    if medians:
        worst = max(medians.values())
        other = max(r["other_cpu_s"] for r in runs if r["rc"] == 0)
        lines += ["", f"- whole CLI ≤ 5 s per case for {result['points_per_organ']} points per organ on "
                      f"{result['cores']} cores (median wall of the slower case): {worst:.2f} s — "
                      f"{_verdict(worst <= 5.0)} (other work on the machine during these runs: up to {other:.1f} CPU "
                      f"s per run)."]
    return "\n".join(lines)


def write_timing_section(text: str) -> None:
    """The timing section sits right after the main organ_points section (created there the first time)."""
    begin, end = f"<!-- BEGIN {TIMING_SECTION} -->", "<!-- END organ_points -->"
    current = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else ""
    if begin not in current and end in current:
        BENCHMARKS_MD.write_text(current.replace(end, f"{end}\n\n{begin}\n<!-- END {TIMING_SECTION} -->", 1))
    update_benchmarks_md(TIMING_SECTION, text)


# ---------------------------------------------------------------------------------------- report
def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def targets_text(means, real, names, cases) -> list:
    from organ_cases import CATEGORIES

    lines = []
    for category in CATEGORIES:
        ours = means.get((category, OURS))
        if ours is None:
            continue
        if RIGID in names:
            rigid = means[(category, RIGID)]
            lines.append(f"- {category}: MO-BCPD {ours:.2f} mm against the per-organ rigid baseline {rigid:.2f} mm "
                         f"(target: at or below) — {_verdict(ours <= rigid)}.")
        cpu = means[(category, OURS, "cpu_max")]
        lines.append(f"- {category}: MO-BCPD's whole CLI run took at most {cpu:.1f} s of CPU time per case (target "
                     f"≤ 5 s) — {_verdict(cpu <= 5.0)}; its wall time is in the table (inflated by the machine's load; "
                     "the quiet-machine wall time is measured by `--timing-only`, in its own section).")
        if BLIND in names:
            blind = means[(category, BLIND)]
            lines.append(f"- {category}: MO-BCPD / label-blind BCPD = {ours / blind:.2f} (target ≤ 0.6) — "
                         f"{_verdict(ours / blind <= 0.6)}.")
    for fixed in ("A", "B"):
        for seed in REAL_SEEDS:
            if (fixed, OURS, seed) in real:
                mean, low, _ = real[(fixed, OURS, seed)]
                lines.append(f"- real pair, fixed {fixed}, seed {seed}: MO-BCPD mean Dice {mean:.3f} (target ≥ 0.80), "
                             f"lowest organ {low:.3f} (target ≥ 0.5) — {_verdict(mean >= 0.8 and low >= 0.5)}.")
    for fixed in ("A", "B"):
        for name in SEEDED:
            got = [real[(fixed, name, s)] for s in REAL_SEEDS if (fixed, name, s) in real]
            if len(got) > 1:
                means_, pancreas = [g[0] for g in got], [g[2] for g in got]
                lines.append(f"- real pair, fixed {fixed}, {name}, seeds {REAL_SEEDS[0]}–{REAL_SEEDS[-1]}: mean Dice "
                             f"{min(means_):.3f}–{max(means_):.3f}, pancreas {np.nanmin(pancreas):.2f}–"
                             f"{np.nanmax(pancreas):.2f} (how much the seed alone moves the result).")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4, help="synthetic cases per category")
    ap.add_argument("--points-per-organ", type=int, default=600)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--sizes", default="20000", help="points per side for the scale table ('' = none)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--no-real", action="store_true", help="skip the real inter-subject pair")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--timing-only", type=int, default=0, metavar="N",
                    help="only time the whole CLI N times on the first clean and hard case (run it on a quiet "
                         "machine); --write writes its own section, organ_points-timing")
    ap.add_argument("--timing-pause", type=float, default=20.0,
                    help="seconds to wait before each --timing-only run (default 20)")
    ap.add_argument("--from-json", help="with --timing-only: re-summarise a saved timing result instead of running")
    args = ap.parse_args(argv)
    names = [n for n in args.methods.split(",") if n in METHODS]
    if args.timing_only:
        import json

        argv_used = list(sys.argv[1:] if argv is None else argv)
        saved = CACHE.parent / "bench_organ_points_timing.json"
        if args.from_json:
            timing = json.loads(Path(args.from_json).read_text())
        else:
            timing = timing_run(args)
            timing["argv"] = argv_used
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(timing, indent=1))
        text = summarise_timing(timing, timing.get("argv", argv_used))
        print(text)
        if args.write:
            write_timing_section(text)
        return 0

    acc_rows, means, stage_rows = synthetic_table(names, args)
    real_rows, real = ([], {}) if args.no_real else real_pair_table(names)
    scale_rows = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        for label, coherence in (("MO-BCPD (S = I)", "independent"), ("BCPD label-blind (S = 1)", "global")):
            npts, secs, peak = in_process(scale_worker, coherence, n, args.seed)
            scale_rows.append([f"{npts:,}", label, f"{secs:.2f}", f"{peak:.0f}"])

    command = (f"nice -n 10 python Testing/Benchmarks/bench_organ_points.py --cases {args.cases} --points-per-organ "
               f"{args.points_per_organ} --seed {args.seed} --sizes '{args.sizes}'" + (" --no-real" if args.no_real else "")
               + " --write")
    text = [
        "## Multi-organ point cloud registration (MO-BCPD)",
        "",
        f"Command: `{command}` (section written by the script). Every figure is scored on the displacement field "
        "a method delivers, never on an exact per-label mapping: MO-BCPD and label-blind BCPD are run as a user "
        "would run them (`registration-suite organ-points` in a child process, point files in, `.h5` out; the "
        "time is the whole command, start-up included), and the landmarks are mapped through the `.h5` it "
        "wrote; CPU time = user + system time of that process (one thread; the wall time of a run on an "
        "otherwise idle machine, which this one was not: the CPU time is the figure to compare with the ≤ 5 s "
        "target). The per-organ baselines register each organ with pycpd (rigid = rotation + scale + translation; "
        "'+ deformable' adds pycpd's DeformableRegistration, β = 30 mm, α = 2) and interpolate the moved points "
        "(200 per organ) with a thin-plate spline onto the same kind of 3 mm grid; the pycpd label-blind row "
        "runs the same rigid + deformable CPD once on the whole sets (seeded random 1000 points per set: its "
        "dense E-step is too slow on the full sets here) with the same spline. The label-blind mode and the "
        "paper pipeline run with the paper's Λ = 10 mm, B = 30 mm (the new defaults Λ = 3 mm, B = 50 mm are "
        "tuned for the per-organ pre-alignment and would weaken them); the paper pipeline also with ω = 0, "
        "without the common field of view and with uniformly random point draws (the defaults are not in the "
        "paper), while the label-blind mode keeps those defaults (ω = 0.05; farthest-point draws; the common "
        "field of view only acts on label images). The 'random point draws' row is MO-BCPD's defaults with "
        "`--sampling random` (on point files only the pre-alignment subsets differ). "
        + (f"probreg's BCPD is not run: {probreg_status()}. " if probreg_status() else "")
        + "All rows run on the same cases in this "
        "run; each method in its own process with one BLAS/torch thread, on 2 CPU cores shared with other work "
        f"(load average {os.getloadavg()[0]:.1f} at the end of the run).",
        "",
        f"Synthetic cases: {args.cases} per category, {args.points_per_organ} points per organ, seed {args.seed}; "
        "six organs of subject A's TotalSegmentator segmentation (spleen, kidneys, liver, stomach, pancreas); "
        "ground truth = global similarity (≤ 15°, scale 0.9–1.1, ≤ 20 mm) ∘ per-organ rigid (≤ 10°, ≤ 15 mm) ∘ "
        "smooth elastic field (≤ 5 mm, 30 mm correlation); fixed = another subsample + 1 mm noise. Category "
        "'clean': every fixed point has its organ's label; 'hard': 5 % of the fixed points, near organ "
        "contacts, have the neighbouring organ's label. TRE = mean over landmarks (centroid, top, bottom of "
        "each organ); 'before' = TRE of the identity.",
        "",
        markdown_table(["category", "method", "TRE before (mm)", "landmark TRE (mm)", "surface TRE (mm)",
                        "max landmark TRE (mm)", "median wall time (s)", "median CPU time (s)", "max CPU time (s)"],
                       acc_rows),
    ]
    if stage_rows:
        text += [
            "",
            "Where MO-BCPD's CLI run spends its time (medians over the cases above, seconds; the registration's own "
            "stages are the wall times the CLI reports with `--json`; 'outside the registration' = the process's "
            "wall time minus the registration's: Python start-up, imports (torch, SimpleITK, SciPy), reading the "
            "point files and writing the `.h5`):",
            "",
            markdown_table(["category", "process wall", "process CPU", "outside the registration (wall)",
                            "load", "kernel G", "EM", "field (GP + grid)", "registration total"], stage_rows),
        ]
    if real_rows:
        text += [
            "",
            "Real inter-subject pair: TotalSegmentator organs of subject A (CT, 3 mm, 90 mm slab) and subject B "
            "(CT, 1 × 1 × 2 mm, 40 mm slab), both ways, from the label images (`--labels 1,2,3,5,6,7`; the "
            "kidneys are not in subject B's slab, so four organs are registered; B's pancreas is 2.5 ml in its "
            "lowest 4 slices). Scoring, the usual label-warp protocol: the moving labels are resampled onto the "
            "fixed label image's own grid through the delivered field with nearest-neighbour interpolation "
            "(`sitk.Resample(moving, fixed, transform)`, what a user does); Dice and mean symmetric surface "
            "distance (SimpleITK Maurer distance maps, mm) are computed per organ within the fixed voxels that "
            "the field maps into the moving image's field of view (the slabs cover different lengths of the "
            "organs). MO-BCPD runs with seeds "
            + ", ".join(map(str, REAL_SEEDS)) + " (the seed draws the surface points, the EM subsets and the "
            "eigensolver's start), with its default farthest-point draws and, as an ablation, with uniformly "
            "random draws (`--sampling random`, the draws before issue 14's seed fix); the other rows with seed 0; "
            "the pycpd label-blind and per-organ rigid + deformable baselines are left to the synthetic table "
            "(minutes per run here). The common-field-of-view step (and its damped rounds), ω = 0.05 and the "
            "farthest-point draws were found on this pair (ω was then checked on held-out synthetic cases; see "
            "`OrganPointCloudConfig`), so this pair is not an independent test of them.",
            "",
            markdown_table(["fixed ← moving", "method", "seed", "mean Dice", "lowest Dice", "Dice / surface distance "
                            "(mm) per organ", "wall time (s)", "CPU time (s)"], real_rows),
        ]
    text += ["", "Targets of issue 14 (measured above):", ""] + targets_text(means, real, names, args.cases)
    if scale_rows:
        text += ["", "Scale (library call, one synthetic case per size, points per side, default settings):", "",
                 markdown_table(["points per side", "method", "time (s)", "peak memory (MB)"], scale_rows)]
    body = "\n".join(text)
    print(body)
    if args.write:
        update_benchmarks_md("organ_points", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

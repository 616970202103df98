"""Benchmark of deformable registration with RegNet's synthetic-field protocol, peers side by side.

Protocol (issue "Deformable registration", Benchmark; Sokooti et al. 2017 §2.2): the held-out subject is
``../shared/data/brain/stroke`` (T1, T2, FLAIR on one grid; never used in training), resampled to 1.5 mm.
For each RegNet class (σ, P, θ) and case, a synthetic field ``d`` is drawn with its points on edges inside
the brain mask (:func:`RegistrationSuiteLib.methods.deformable.synthetic_field`); the fixed image is the T1
seen through ``x → x + d(x)`` (so the true fixed → moving map is known exactly) plus Gaussian noise (1 % of
the intensity range), the moving image is the T1 (same contrast), T2 or FLAIR (cross contrast), also with
noise. Reported inside the fixed image's brain mask (the T1 mask carried through the field, so the region
where the fixed image shows brain; the undeformed mask's mean is kept for comparison): mean and 95th percentile of |T(x) − (x + d(x))|
(mm), the fraction of voxels with det J ≤ 0 of the estimated map (dense field on the fixed grid), the wall
time of the whole command in a fresh process, and that process's peak resident memory.

Rows: identity; ``deformable --model none`` (optimisation only); with ``--model``: network only
(``--io-steps 0``) and network + optimisation; elastix B-spline (itk-elastix, its default ``bspline`` map,
from the identity); ANTs SyN (antspyx, ``type_of_transform='SyN'``) when antspyx is installed.

Usage::

    python Testing/Benchmarks/bench_deformable.py --cases 3 --pairs T1,T2,FLAIR [--model NAME ...] \
        [--peers elastix,ants] [--peer-cases 1] [--abdomen] [--memory] [--threads 1] [--write]

Whole-command timing on a quiet machine (its own section, ``deformable-timing``)::

    python Testing/Benchmarks/bench_deformable.py --timing-only 3 --write

Long runs save after every command; ``--resume`` goes on from the saved result, and runs made in parallel in
other ``--output-dir`` folders (e.g. ``--peers-only``, ``--models-only``) are combined into one section with
``--from-json MAIN.json --merge OTHER.json ... --write``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import busy_cpu_seconds, markdown_table, require_shared_data, update_benchmarks_md  # noqa: E402

SPACING = 1.5
CLI = [sys.executable, "-m", "RegistrationSuiteLib"]


def resample_iso(image: sitk.Image, spacing: float) -> sitk.Image:
    size = [int(round((n - 1) * s / spacing)) + 1 for n, s in zip(image.GetSize(), image.GetSpacing())]
    sig = [max(1e-3, np.sqrt(max(0.0, (spacing / 2) ** 2 - (s / 2) ** 2))) for s in image.GetSpacing()]
    smooth = sitk.SmoothingRecursiveGaussian(image, sig)
    return sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), [spacing] * 3,
                         image.GetDirection(), 0.0, sitk.sitkFloat32)


def make_case(images: dict, mask: np.ndarray, cls, moving_name: str, rng: np.random.Generator):
    """``(fixed, moving, truth_field_image)``; ``truth`` LPS mm on the fixed grid, fixed → moving."""
    from RegistrationSuiteLib.methods.deformable.synthetic import edge_map, synthetic_field

    t1 = images["T1"]
    arr = sitk.GetArrayFromImage(t1)
    sigma, points, theta = cls
    d_idx = synthetic_field(arr.shape, SPACING, sigma, points, theta, rng, mask=mask, edges=edge_map(arr, mask))
    direction = np.asarray(t1.GetDirection()).reshape(3, 3)
    d_phys = np.einsum("ij,j...->i...", direction, d_idx.astype(np.float64))
    truth = sitk.GetImageFromArray(np.moveaxis(d_phys, 0, -1), isVector=True)
    truth.CopyInformation(t1)
    tx = sitk.DisplacementFieldTransform(sitk.Image(truth))
    fixed = sitk.Resample(t1, t1, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    moving = images[moving_name]

    def noisy(img):
        a = sitk.GetArrayFromImage(img)
        a = a + rng.normal(0, 0.01 * float(np.percentile(a, 99.5)), a.shape).astype(np.float32)
        out = sitk.GetImageFromArray(a.astype(np.float32))
        out.CopyInformation(img)
        return out

    return noisy(fixed), noisy(moving), truth


def run_measured(cmd, cwd, env=None) -> dict:
    """Run ``cmd`` in a fresh process (environment ``env``, default this one's): return code, stdout, stderr,
    wall time (s), CPU time (user + system of the process and the children it waited for, s) and its peak
    RSS (MB)."""
    out_path, err_path = Path(cwd) / "stdout.txt", Path(cwd) / "stderr.txt"
    with open(out_path, "w") as fo, open(err_path, "w") as fe:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=fo, stderr=fe, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage: its peak memory
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "stdout": out_path.read_text(), "stderr": err_path.read_text(),
            "seconds": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024.0}


def fixed_brain_mask(mask: np.ndarray, truth: sitk.Image) -> np.ndarray:
    """The brain mask of the fixed image: the T1's mask carried through the synthetic field (nearest
    neighbour), i.e. the voxels x whose true map x + d(x) lands in the T1's brain, where the fixed image shows
    brain. (The undeformed mask also holds a shell of the fixed image's background, several mm thick where the
    field points outward, in which no image information constrains any method's map.)"""
    m = sitk.GetImageFromArray(mask.astype(np.uint8))
    m.CopyInformation(truth)
    tx = sitk.DisplacementFieldTransform(sitk.Cast(truth, sitk.sitkVectorFloat64))
    return sitk.GetArrayFromImage(sitk.Resample(m, truth, tx, sitk.sitkNearestNeighbor, 0)) > 0


def evaluate(field_image: sitk.Image, truth: sitk.Image, mask: np.ndarray, undeformed_mask=None) -> dict:
    """Field error (mm) inside ``mask`` (the fixed image's brain: :func:`fixed_brain_mask`) and folding
    fraction of the estimated dense field (fixed grid) there; with ``undeformed_mask``, also the mean error
    inside it (``mean_undeformed``: the mask this benchmark used before, kept for comparison)."""
    est = sitk.GetArrayFromImage(field_image)
    err_all = np.linalg.norm(est - sitk.GetArrayFromImage(truth), axis=-1)
    err = err_all[mask]
    det = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field_image))[mask]
    out = {"mean": float(err.mean()), "p95": float(np.percentile(err, 95)), "folding": float((det <= 0).mean())}
    if undeformed_mask is not None:
        out["mean_undeformed"] = float(err_all[undeformed_mask].mean())
    return out


def dense(transform: sitk.Transform, reference: sitk.Image) -> sitk.Image:
    return sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, reference.GetSize(),
                                             reference.GetOrigin(), reference.GetSpacing(), reference.GetDirection())


# ------------------------------------------------------------------------------------------- peer workers


def worker_elastix(fixed_path, moving_path, out_path) -> None:
    """elastix with its default B-spline parameter map from the identity; writes the fixed → moving field."""
    import itk

    fixed = itk.imread(fixed_path, itk.F)
    moving = itk.imread(moving_path, itk.F)
    params = itk.ParameterObject.New()
    params.AddParameterMap(params.GetDefaultParameterMap("bspline"))
    _, result = itk.elastix_registration_method(fixed, moving, parameter_object=params, log_to_console=False)
    field = itk.transformix_deformation_field(moving, result)
    itk.imwrite(field, out_path)


def worker_ants(fixed_path, moving_path, out_path) -> None:
    """ANTs SyN (antspyx defaults); the fixed → moving map is read off by warping images of the moving
    grid's physical coordinates with the forward transforms (exact for any composition order)."""
    import ants

    fixed, moving = ants.image_read(fixed_path), ants.image_read(moving_path)
    reg = ants.registration(fixed, moving, type_of_transform="SyN")
    m = sitk.ReadImage(moving_path)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in m.GetSize()], indexing="ij"), -1).reshape(-1, 3)
    pts = idx @ (np.asarray(m.GetDirection()).reshape(3, 3) @ np.diag(m.GetSpacing())).T + np.asarray(m.GetOrigin())
    comps = []
    for c in range(3):
        coord = sitk.GetImageFromArray(np.ascontiguousarray(pts[:, c].reshape(*m.GetSize()).transpose(2, 1, 0)))
        coord.CopyInformation(m)
        with tempfile.TemporaryDirectory() as tmp:
            sitk.WriteImage(sitk.Cast(coord, sitk.sitkFloat32), str(Path(tmp) / "c.nii.gz"))
            warped = ants.apply_transforms(fixed, ants.image_read(str(Path(tmp) / "c.nii.gz")), reg["fwdtransforms"],
                                           interpolator="linear")
            comps.append(warped.numpy().transpose(2, 1, 0))  # ants arrays are (x, y, z)
    f = sitk.ReadImage(fixed_path)
    fidx = np.stack(np.meshgrid(*[np.arange(n) for n in f.GetSize()], indexing="ij"), -1).reshape(-1, 3)
    fpts = fidx @ (np.asarray(f.GetDirection()).reshape(3, 3) @ np.diag(f.GetSpacing())).T + np.asarray(f.GetOrigin())
    fpts = fpts.reshape(*f.GetSize(), 3).transpose(2, 1, 0, 3)
    disp = np.stack(comps, -1) - fpts
    out = sitk.GetImageFromArray(disp.astype(np.float64), isVector=True)
    out.CopyInformation(f)
    sitk.WriteImage(out, out_path)


# ------------------------------------------------------------------------------------------------- driver


PEERS = ("elastix B-spline", "ANTs SyN")
PAIR_INDEX = ("T1", "T2", "FLAIR")  # a pair type's case generator does not depend on which others run


def model_label(model: str) -> str:
    return Path(model).name[:-3] if str(model).endswith(".pt") else str(model)


def method_commands(args) -> dict:
    """Name → command builder ``(fixed, moving, out) -> argv`` of every row that runs a process."""
    base = ["deformable", "--json", "--quiet", "--device", "cpu", "--threads", str(args.threads)]

    def ours(*extra):
        return lambda f, m, o: CLI + base + ["--fixed", f, "--moving", m, "--output", o, *extra]

    rows = {} if args.peers_only or args.models_only else {"optimisation only (--model none)": ours("--model", "none")}
    for model in [] if args.peers_only else args.model:
        name = model_label(model)
        rows[f"network only ({name}, --io-steps 0)"] = ours("--model", model, "--io-steps", "0")
        rows[f"network + optimisation ({name})"] = ours("--model", model)
    me = str(Path(__file__).resolve())
    if "elastix" in args.peers:
        rows["elastix B-spline"] = lambda f, m, o: [sys.executable, me, "--worker", "elastix", f, m, o]
    if "ants" in args.peers:
        rows["ANTs SyN"] = lambda f, m, o: [sys.executable, me, "--worker", "ants", f, m, o]
    return rows


def peer_env(args):
    """The peers' environment: with ``--threads N`` (N > 0) their ITK and OpenMP thread pools get N threads
    too, so every row of the table runs on the same number of threads."""
    if not args.threads:
        return None
    env = dict(os.environ)
    for key in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(args.threads)
    return env


def read_field(path: Path, reference: sitk.Image) -> sitk.Image:
    if str(path).endswith(".h5"):
        return dense(sitk.ReadTransform(str(path)), reference)
    img = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64)
    return img if img.GetSize() == reference.GetSize() else dense(sitk.DisplacementFieldTransform(img), reference)


def _save(out_dir: Path, records, args, extra=None) -> None:
    """Saved after every run: an interrupted benchmark keeps what it measured (and ``--resume`` goes on)."""
    payload = {"records": records, "config": _config(args)}
    payload.update(extra or {})
    (out_dir / "bench_deformable.partial.json").write_text(json.dumps(payload, indent=1, default=str))


def _config(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("worker",)}


def run_benchmark(args, previous=None) -> dict:
    """Synthetic-field cases, case index outermost (an interrupted run still covers every pair and class)."""
    from RegistrationSuiteLib.methods.deformable.synthetic import REGNET_CLASSES

    root = require_shared_data("brain", "stroke")
    names = ["T1", *[p for p in args.pairs if p != "T1"]]
    images = {n: resample_iso(sitk.ReadImage(str(root / f"{n}.nii.gz"), sitk.sitkFloat32), SPACING) for n in names}
    t1 = sitk.GetArrayFromImage(images["T1"])
    mask = t1 > 0.05 * float(np.percentile(t1, 99.5))  # the T1 is skull-stripped: non-background = brain
    rows = method_commands(args)
    records = list((previous or {}).get("records", []))
    done = {(r["pair"], r["class"], r["case"], r["method"]) for r in records}
    out_dir = Path(args.output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = args.classes or list(range(len(REGNET_CLASSES)))
    for case in range(args.case_start, args.cases):
        for pair in args.pairs:
            pi = PAIR_INDEX.index(pair) if pair in PAIR_INDEX else len(PAIR_INDEX) + args.pairs.index(pair)
            for k in classes:
                label = f"T1→{pair}"
                wanted = ["identity"] + [n for n in rows if n not in PEERS or case < args.peer_cases]
                if all((label, k, case, n) in done for n in wanted):
                    continue
                # one generator per case: the same case whatever ran before (and after a resume)
                rng = np.random.default_rng([args.seed, pi, k, case])
                fixed, moving, truth = make_case(images, mask, REGNET_CLASSES[k], pair, rng)
                fmask = fixed_brain_mask(mask, truth)
                with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
                    f, m = str(Path(tmp) / "fixed.nii.gz"), str(Path(tmp) / "moving.nii.gz")
                    sitk.WriteImage(fixed, f)
                    sitk.WriteImage(moving, m)
                    if (label, k, case, "identity") not in done:
                        ident = evaluate(dense(sitk.Transform(3, sitk.sitkIdentity), fixed), truth, fmask, mask)
                        records.append({"pair": label, "class": k, "case": case, "method": "identity", **ident,
                                        "seconds": 0.0, "cpu_s": 0.0, "peak_mb": 0.0})
                        print(json.dumps(records[-1]), flush=True)
                    for name, build in rows.items():
                        if name not in wanted or (label, k, case, name) in done:
                            continue
                        o = str(Path(tmp) / ("field.nii.gz" if name in PEERS else "t.h5"))
                        res = run_measured(build(f, m, o), tmp, peer_env(args) if name in PEERS else None)
                        rec = {"pair": label, "class": k, "case": case, "method": name, "seconds": res["seconds"],
                               "cpu_s": res["cpu_s"], "peak_mb": res["peak_mb"], "rc": res["rc"],
                               "threads": args.threads}
                        if res["rc"] == 0 and Path(o).exists():
                            rec.update(evaluate(read_field(Path(o), fixed), truth, fmask, mask))
                        else:
                            rec["error"] = (res["stderr"].strip().splitlines() or ["?"])[-1][:200]
                        records.append(rec)
                        print(json.dumps(rec), flush=True)
                        _save(out_dir, records, args, previous and {k2: v for k2, v in previous.items()
                                                                     if k2 not in ("records", "config")})
    return {"records": records}


# ------------------------------------------------------------------------ whole-command timing (quiet machine)

TIMING_CASES = (("T1", 2, 0), ("T2", 2, 0))  # (moving contrast, RegNet class, case): one same-, one cross-contrast
TIMING_THREADS = (0, 1)  # our --threads: 0 = torch's default (every core), 1 = one thread


def timing_run(args, out_dir: Path) -> dict:
    """``--timing-only N``: the delivered command (``registration-suite deformable`` with its defaults; with
    ``--model``, also with each model) run N times in fresh processes on one T1→T1 and one T1→T2 case of the
    benchmark's generator, with ``--threads 0`` (torch's default: all cores) and ``--threads 1``; wall time,
    CPU time (user + system of the process), peak memory, field error, and the 1-minute load average read
    just before each run and the CPU time the rest of the machine used during it (other work makes wall
    times upper bounds)."""
    from RegistrationSuiteLib.methods.deformable.synthetic import REGNET_CLASSES

    root = require_shared_data("brain", "stroke")
    names = sorted({"T1", *[c[0] for c in TIMING_CASES]})
    images = {n: resample_iso(sitk.ReadImage(str(root / f"{n}.nii.gz"), sitk.sitkFloat32), SPACING) for n in names}
    t1 = sitk.GetArrayFromImage(images["T1"])
    mask = t1 > 0.05 * float(np.percentile(t1, 99.5))
    commands = {"default (optimisation only)": []}
    for model in args.model:
        commands[f"network + optimisation ({model_label(model)})"] = ["--model", model]
    runs = []
    for pair, k, case in TIMING_CASES:
        rng = np.random.default_rng([args.seed, PAIR_INDEX.index(pair), k, case])  # the benchmark's own case
        fixed, moving, truth = make_case(images, mask, REGNET_CLASSES[k], pair, rng)
        fmask = fixed_brain_mask(mask, truth)
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            f, m, o = str(Path(tmp) / "fixed.nii.gz"), str(Path(tmp) / "moving.nii.gz"), str(Path(tmp) / "t.h5")
            sitk.WriteImage(fixed, f)
            sitk.WriteImage(moving, m)
            for rep in range(args.timing_only):
                for name, extra in commands.items():
                    for threads in TIMING_THREADS:
                        cmd = CLI + ["deformable", "--json", "--quiet", "--device", "cpu", "--threads", str(threads),
                                     "--fixed", f, "--moving", m, "--output", o, *extra]
                        time.sleep(args.timing_pause)  # this script's previous run leaves the load average
                        load, busy = os.getloadavg()[0], busy_cpu_seconds()
                        res = run_measured(cmd, tmp)
                        # CPU time the rest of the machine used while our command ran (0 on a quiet machine)
                        other = max(0.0, busy_cpu_seconds() - busy - res["cpu_s"])
                        rec = {"pair": f"T1→{pair}", "class": k, "case": case, "command": name, "threads": threads,
                               "repeat": rep, "load_before": load, "other_cpu_s": other, "seconds": res["seconds"],
                               "cpu_s": res["cpu_s"], "peak_mb": res["peak_mb"], "rc": res["rc"]}
                        if res["rc"] == 0 and Path(o).exists():
                            rec.update(evaluate(read_field(Path(o), fixed), truth, fmask, mask))
                            Path(o).unlink()
                        else:
                            rec["error"] = (res["stderr"].strip().splitlines() or ["?"])[-1][:200]
                        runs.append(rec)
                        print(json.dumps(rec), flush=True)
    return {"runs": runs, "cores": os.cpu_count(), "repeats": args.timing_only, "pause": args.timing_pause}


def summarise_timing(result: dict, argv) -> str:
    import platform

    import torch

    runs = result["runs"]
    lines = [
        "### Whole command on a quiet machine (`bench_deformable.py --timing-only`)",
        "",
        f"The delivered command (`registration-suite deformable`, default settings, `--device cpu`) in a fresh "
        f"process, {result['repeats']} time(s) per row, on one T1→T1 and one T1→T2 case of the protocol above "
        f"(class {TIMING_CASES[0][1]}, case {TIMING_CASES[0][2]}: the same cases as the table's), with `--threads 0` "
        f"(torch's default: all {result['cores']} cores) and `--threads 1`. Wall = the whole command, start-up, "
        f"image reading and writing included; CPU = user + system time of the process; other CPU = the CPU "
        f"time the rest of the machine used while the command ran (from /proc/stat; near 0 on a quiet machine, "
        f"otherwise other work shared the cores and that run's wall time is an upper bound); load = the 1-minute "
        f"load average read just before each run, {result.get('pause', 0):g} s after the previous one (it "
        f"still carries part of this script's own previous run). Machine: {result['cores']} CPU cores, "
        f"{platform.machine()}, "
        f"torch {torch.__version__}. Command: `python Testing/Benchmarks/bench_deformable.py "
        f"{' '.join(argv)}`.",
        "",
    ]
    header = ["pair", "command", "--threads", "runs", "wall s median (min–max)", "CPU s median",
              "other CPU s mean (max)", "load before (max)",
              "error mean (mm)", "folding %", "peak MB"]
    rows = []
    groups = {}
    for r in runs:
        groups.setdefault((r["pair"], r["command"], r["threads"]), []).append(r)
    for (pair, command, threads), rs in groups.items():
        ok = [r for r in rs if r["rc"] == 0 and "mean" in r]
        if not ok:
            rows.append([pair, command, str(threads), f"0/{len(rs)}", "failed: " + rs[0].get("error", "?"), "", "",
                         "", "", "", ""])
            continue
        wall = [r["seconds"] for r in ok]
        rows.append([pair, command, str(threads), f"{len(ok)}/{len(rs)}",
                     f"{np.median(wall):.1f} ({min(wall):.1f}–{max(wall):.1f})",
                     f"{np.median([r['cpu_s'] for r in ok]):.1f}",
                     f"{np.mean([r['other_cpu_s'] for r in ok]):.1f} ({max(r['other_cpu_s'] for r in ok):.1f})",
                     f"{np.mean([r['load_before'] for r in ok]):.2f} ({max(r['load_before'] for r in ok):.2f})",
                     f"{np.mean([r['mean'] for r in ok]):.2f}", f"{100 * max(r['folding'] for r in ok):.4f}",
                     f"{max(r['peak_mb'] for r in ok):.0f}"])
    lines.append(markdown_table(header, rows))
    lines.append("")
    default = [r for r in runs if r["command"].startswith("default") and r["threads"] == 0 and r["rc"] == 0]
    if default:
        worst = max(np.median([r["seconds"] for r in default if r["pair"] == p]) for p in {r["pair"] for r in default})
        other = max(r["other_cpu_s"] for r in default)
        lines.append(f"- whole command ≤ 20 s per pair on {result['cores']} cores (default threads, median wall of "
                     f"the slower pair): {worst:.1f} s: {'met' if worst <= 20 else '**not met**'} (other work on the "
                     f"machine during these runs: up to {other:.1f} CPU s per run)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- real pair: abdomen CT

ORGANS = {1: "spleen", 2: "kidney R", 3: "kidney L", 5: "liver", 6: "stomach", 7: "pancreas"}


def _dice_table(fixed_seg: sitk.Image, moving_seg: sitk.Image, transform: sitk.Transform, labels) -> dict:
    """Per-organ Dice of the moving labels warped onto the fixed grid (nearest neighbour), counted only where
    the map lands inside the moving image's field of view (the two scans cover different lengths)."""
    warped = sitk.GetArrayFromImage(sitk.Resample(moving_seg, fixed_seg, transform, sitk.sitkNearestNeighbor, 0))
    ones = sitk.Image(moving_seg.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving_seg)
    inside = sitk.GetArrayFromImage(sitk.Resample(ones, fixed_seg, transform, sitk.sitkNearestNeighbor, 0)) > 0
    fixed = sitk.GetArrayFromImage(fixed_seg)
    out = {}
    for lab in labels:
        a, b = (fixed == lab) & inside, (warped == lab) & inside
        out[ORGANS[lab]] = float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))
    return out


def abdomen_check(args, out_dir: Path) -> dict:
    """Subject A CT (moving) → subject B CT (fixed): the project's global rigid search first (`rigid-search`,
    the only initialisation the project has for two CTs), then each deformable method from that start."""
    from RegistrationSuiteLib.io import read_image

    ab = require_shared_data("abdomen")
    work = out_dir / "abdomen"
    work.mkdir(parents=True, exist_ok=True)
    fixed_path, moving_path = work / "subjectB_ct.nii.gz", str(ab / "subjectA_ct_3mm.nii.gz")
    fixed_img = read_image(str(ab / "subjectB_ct_dicom"), "fixed").image
    sitk.WriteImage(sitk.Cast(fixed_img, sitk.sitkFloat32), str(fixed_path))
    fixed_seg = sitk.ReadImage(str(ab / "subjectB_seg_totalsegmentator.nii.gz"))
    moving_seg = sitk.ReadImage(str(ab / "subjectA_seg_totalsegmentator.nii.gz"))
    fa, ma = sitk.GetArrayFromImage(fixed_seg), sitk.GetArrayFromImage(moving_seg)
    labels = [lab for lab in ORGANS if (fa == lab).sum() >= 200 and (ma == lab).sum() >= 20]
    rows = []
    init = work / "init.h5"
    if args.abdomen_init:  # the same rigid-search command, run earlier (its time is then not in the table)
        sitk.WriteTransform(sitk.ReadTransform(args.abdomen_init), str(init))
        res = {"seconds": float("nan"), "cpu_s": float("nan"), "peak_mb": float("nan")}
    else:
        res = run_measured(CLI + ["rigid-search", "--fixed", str(fixed_path), "--moving", moving_path, "--output",
                                  str(init), "--device", "cpu", "--quiet", "--min-overlap", "0.3"], work)
        if res["rc"] != 0:
            return {"labels": labels, "rows": [], "error": "rigid-search failed: " + res["stderr"].strip()[-200:]}
    t0 = sitk.ReadTransform(str(init))
    rows.append({"method": "rigid-search only (the initialisation)", "seconds": res["seconds"],
                 "cpu_s": res["cpu_s"], "peak_mb": res["peak_mb"], "dice": _dice_table(fixed_seg, moving_seg, t0, labels)})
    # peers start from the same initialisation: the moving CT resampled through it onto the fixed grid
    pre = work / "moving_prealigned.nii.gz"
    sitk.WriteImage(sitk.Resample(sitk.ReadImage(moving_path, sitk.sitkFloat32), fixed_img, t0, sitk.sitkLinear,
                                  -1024.0, sitk.sitkFloat32), str(pre))
    ours = method_commands(args)
    for name, build in ours.items():
        is_peer = name in PEERS
        out = work / ("field.nii.gz" if is_peer else "t.h5")
        if out.exists():
            out.unlink()
        cmd = build(str(fixed_path), str(pre), str(out)) if is_peer else \
            build(str(fixed_path), moving_path, str(out)) + ["--initial-transform", str(init)]
        res = run_measured(cmd, work)
        row = {"method": name, "seconds": res["seconds"], "cpu_s": res["cpu_s"], "peak_mb": res["peak_mb"]}
        if res["rc"] != 0 or not out.exists():
            row["error"] = (res["stderr"].strip().splitlines() or ["?"])[-1][:200]
        else:
            if is_peer:
                tx = sitk.CompositeTransform(t0)  # the field is applied first, then the initialisation
                tx.AddTransform(sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(out)),
                                                                          sitk.sitkVectorFloat64)))
            else:
                tx = sitk.ReadTransform(str(out))
            row["dice"] = _dice_table(fixed_seg, moving_seg, tx, labels)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"labels": labels, "rows": rows}


# ----------------------------------------------------------------------------------- 256³ memory check


def memory_check(args, out_dir: Path) -> dict:
    """A 256³ 1 mm pair (the stroke T1 and T2 resampled onto a 256³ 1 mm grid around the T1's centre, the
    T2 shifted by 3 mm): the default command's peak memory and times, and the refusal of a working grid
    whose memory estimate exceeds the limit."""
    root = require_shared_data("brain", "stroke")
    work = out_dir / "memory256"
    work.mkdir(parents=True, exist_ok=True)
    t1 = sitk.ReadImage(str(root / "T1.nii.gz"), sitk.sitkFloat32)
    centre = t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in t1.GetSize()])
    origin = [c - 127.5 for c in centre]
    paths = {}
    for name, shift in (("T1", (0.0, 0.0, 0.0)), ("T2", (3.0, 0.0, 0.0))):
        img = sitk.ReadImage(str(root / f"{name}.nii.gz"), sitk.sitkFloat32)
        out = sitk.Resample(img, [256] * 3, sitk.TranslationTransform(3, shift), sitk.sitkLinear, origin, [1.0] * 3,
                            [1, 0, 0, 0, 1, 0, 0, 0, 1], 0.0, sitk.sitkFloat32)
        paths[name] = str(work / f"{name}_256.nii.gz")
        sitk.WriteImage(out, paths[name])
    result = {"runs": []}
    runs = [("default (--model none)", ["--model", "none"])]
    runs += [(f"default with {model_label(m)}", ["--model", m]) for m in args.model]
    runs += [("--spacing 1 (refused by the memory estimate)", ["--model", "none", "--spacing", "1"])]
    for label, extra in runs:
        res = run_measured(CLI + ["deformable", "--fixed", paths["T1"], "--moving", paths["T2"], "--output",
                                  str(work / "t.h5"), "--device", "cpu", "--json", "--quiet", *extra], work)
        result["runs"].append({"run": label, "rc": res["rc"], "seconds": res["seconds"], "cpu_s": res["cpu_s"],
                               "peak_mb": res["peak_mb"],
                               "message": "" if res["rc"] == 0 else (res["stderr"].strip().splitlines() or ["?"])[-1][:200]})
        print(json.dumps(result["runs"][-1]), flush=True)
    return result


# ------------------------------------------------------------------------------------------------ summary


def _fmt_mean(values, digits=2):
    return f"{np.mean(values):.{digits}f}" if values else ""


def _coverage(peer_recs, all_cases) -> str:
    """Which cases the peers ran on, per peer, from the records (e.g. "elastix B-spline: 18 of 27 cases,
    cases 0-1 of every pair type and class")."""
    if not peer_recs:
        return "on none of those cases"
    parts = []
    for method in dict.fromkeys(r["method"] for r in peer_recs):
        keys = {(r["pair"], r["class"], r["case"]) for r in peer_recs if r["method"] == method}
        per = {}
        for pair, k, case in keys:
            per.setdefault((pair, k), set()).add(case)
        counts = sorted({len(v) for v in per.values()})
        groups = {(p, k) for p, k, _ in all_cases}
        parts.append(f"{method}: {len(keys)} of those {len(all_cases)} cases ("
                     + (f"{counts[0]} case(s) in each of the {len(groups)} pair-type × class groups"
                        if len(counts) == 1 and len(per) == len(groups)
                        else f"{len(per)} of {len(groups)} pair-type × class groups, {min(counts)}–{max(counts)} cases each")
                     + ")")
    return "; ".join(parts) + (" (fewer cases than ours: the shared 2-core machine had no CPU time for more)"
                               if any(len({(r['pair'], r['class'], r['case']) for r in peer_recs if r['method'] == m})
                                      < len(all_cases) for m in dict.fromkeys(r['method'] for r in peer_recs)) else "")


def summarise(result: dict) -> str:
    from RegistrationSuiteLib.methods.deformable.synthetic import REGNET_CLASSES

    recs = result["records"]
    cfg = result["config"]
    header = ["pair", "method", "cases", "mean error (mm)", "worst case mean (mm)", "p95 error (mm)",
              "mean, undeformed mask (mm)", "folding % mean (max)", "wall s", "CPU s", "peak MB"]
    rows = []
    for pair in dict.fromkeys(r["pair"] for r in recs):
        for method in dict.fromkeys(r["method"] for r in recs):
            sel = [r for r in recs if r["pair"] == pair and r["method"] == method]
            ok = [r for r in sel if "mean" in r]
            if not sel:
                continue
            if not ok:
                rows.append([pair, method, f"0/{len(sel)}", "failed", "", "", "", "", "", "", ""])
                continue
            timed = method != "identity"
            rows.append([pair, method, f"{len(ok)}/{len(sel)}", _fmt_mean([r["mean"] for r in ok]),
                         f"{max(r['mean'] for r in ok):.2f}", _fmt_mean([r["p95"] for r in ok]),
                         _fmt_mean([r["mean_undeformed"] for r in ok]) if all("mean_undeformed" in r for r in ok) else "",
                         f"{100 * np.mean([r['folding'] for r in ok]):.3f} ({100 * max(r['folding'] for r in ok):.3f})",
                         _fmt_mean([r["seconds"] for r in ok], 1) if timed else "",
                         _fmt_mean([r.get("cpu_s", float("nan")) for r in ok], 1) if timed else "",
                         f"{max(r['peak_mb'] for r in ok):.0f}" if timed else ""])
    # per class, means of every method (same cases)
    class_header = ["pair", "class (σ, P, θ)"] + [m for m in dict.fromkeys(r["method"] for r in recs)]
    class_rows = []
    for pair in dict.fromkeys(r["pair"] for r in recs):
        for k in sorted({r["class"] for r in recs}):
            cells = []
            for method in class_header[2:]:
                vals = [r["mean"] for r in recs if r["pair"] == pair and r["class"] == k and r["method"] == method
                        and "mean" in r]
                cells.append(f"{np.mean(vals):.2f} ({len(vals)})" if vals else "")
            class_rows.append([pair, f"{k}: {REGNET_CLASSES[k]}", *cells])
    n_cases = {(r["pair"], r["class"], r["case"]) for r in recs}
    peer_recs = [r for r in recs if r["method"] in PEERS]
    models = list(dict.fromkeys(r["method"][len("network only ("):].split(",")[0] for r in recs
                                if r["method"].startswith("network only (")))
    lines = [
        "## Deformable registration — RegNet synthetic-field protocol (`bench_deformable.py`)",
        "",
        f"Held-out subject `brain/stroke` at {SPACING} mm (never used in training); for each pair type and "
        "RegNet class (σ, P, θ) ∈ {(35, 80, 8), (25, 100, 8), (20, 100, 8)} mm, cases drawn with seed "
        f"{cfg['seed']} (one generator per pair, class and case); fixed = T1 through the synthetic field + 1 % noise, "
        "moving = T1/T2/FLAIR + 1 % noise. Error = |estimated − true fixed→moving map| inside the fixed image's "
        "brain mask (the T1's brain mask carried through the synthetic field: where the fixed image shows brain). "
        "Until this version the error was taken inside the undeformed T1 mask, which on the fixed grid also holds a "
        "shell of the fixed image's background (about 9 % of its voxels on a class-2 tuning case), where no image "
        "information constrains any method's map; that mean is kept in the column 'mean, undeformed mask' for "
        "comparison with earlier tables. "
        "folding = det J ≤ 0 of the estimated map on the fixed grid, inside the same mask (mean over cases, max in brackets); wall and CPU "
        "= the whole command in a fresh process (CPU = user + system time; start-up and torch import included); "
        "peak MB = that process's peak resident memory. How the defaults were chosen: on tuning cases of the "
        "same generator and subject drawn with seed 100 instead of 0 (other synthetic fields and noise, never these "
        "cases; `Testing/Benchmarks/tune_deformable.py`, which refuses seed 0): T1→T1 classes 0–2 and T1→T2/T1→FLAIR "
        "class 2, one case each; the tuning cases share this subject's images, so they are not an independent "
        "subject.",
        "",
        "Command" + ("s (runs of this script on the same cases, resumed with --resume or combined with --merge "
                     "into this section; each adds rows, cases or checks the others lack)"
                     if len({tuple(a) for a in cfg.get("argv_history", [])}) > 1 else "") + ": "
        + "; ".join(f"`nice -n 10 python Testing/Benchmarks/bench_deformable.py {' '.join(a)}`"
                    for a in dict.fromkeys(tuple(a) for a in (cfg.get("argv_history") or [cfg["argv"]]))),
        "",
        f"This run: {len(n_cases)} synthetic cases (fewer than the issue's 3 per pair type and class where the "
        "counts below say so: the shared machine had no CPU time for more); pair types "
        f"{', '.join(dict.fromkeys(r['pair'] for r in recs))}; peers: "
        f"{_coverage(peer_recs, n_cases)}; network rows "
        f"{'for ' + ', '.join(models) if models else 'not run (no model given)'}. "
        f"Our command ran with `--threads {cfg.get('threads', 0)}`"
        + (" (one torch thread: on a machine this oversubscribed, two threads spin-wait on each other and cost "
           "more CPU and more wall time; an idle 2-core machine would use both)" if cfg.get("threads") == 1 else "")
        + (f"; the peers ran with {', '.join(sorted({str(r['threads']) for r in peer_recs if 'threads' in r}))} "
           "ITK/OpenMP thread(s) (`ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`)"
           if any("threads" in r for r in peer_recs) else "")
        + f". Machine: {os.cpu_count()} CPU cores shared with other jobs (load average {cfg.get('load', '?')} at the "
        "end of the run), so wall times are upper bounds; CPU times are the better measure of cost.",
        "",
        markdown_table(header, rows),
        "",
        "Mean error (mm) per RegNet class (number of cases in brackets):",
        "",
        markdown_table(class_header, class_rows),
    ]
    peer_keys = {(r["pair"], r["class"], r["case"]) for r in peer_recs}
    if peer_keys:
        methods = list(dict.fromkeys(r["method"] for r in recs))
        eq_rows = []
        for pair in dict.fromkeys(r["pair"] for r in recs):
            keys = {k for k in peer_keys if k[0] == pair}
            cells = []
            for method in methods:
                sel = [r for r in recs if (r["pair"], r["class"], r["case"]) in keys and r["method"] == method
                       and "mean" in r]
                cells.append(f"{np.mean([r['mean'] for r in sel]):.2f} / {100 * max(r['folding'] for r in sel):.3f} %"
                             if len(sel) == len(keys) and sel else "")
            eq_rows.append([pair, str(len(keys)), *cells])
        lines += ["", "On exactly the peers' cases (mean error in mm / worst folding):", "",
                  markdown_table(["pair", "cases", *methods], eq_rows)]
    if not result.get("abdomen") or not result.get("memory"):
        missing = [name for key, name in (("abdomen", "the abdomen CT pair (organ Dice), section `deformable-abdomen`"),
                                          ("memory", "the 256³ peak-memory check, section `deformable-memory`"))
                   if not result.get(key)]
        lines += ["", "Not measured in this run: " + "; ".join(missing) + ". Those sections, when present below, were "
                  "written by an earlier run of this script (their own commands, code version and defaults)."]
    lines += ["", *targets_text(result), "", *(f"- {n}" for n in cfg.get("notes", []))]
    return "\n".join(lines)


def summarise_abdomen(result: dict) -> str:
    """The ``abdomen`` part of a result as its own BENCHMARKS.md section (written only by runs that measured it)."""
    cfg = result["config"]
    lines = []
    ab = result["abdomen"]
    lines += ["", "### Real pair: abdomen CT, subject A → subject B (TotalSegmentator organ Dice)", "",
              "Moving = `abdomen/subjectA_ct_3mm` (3 mm), fixed = `abdomen/subjectB_ct_dicom` (0.98 × 0.98 × 2 mm, "
              "40 mm slab); initialisation = the project's global rigid search (`rigid-search --min-overlap 0.3`; "
              "rigid, no scaling); ours runs with `--initial-transform` (folded into its output), the peers on "
              "the moving CT resampled through the same initialisation. Dice of subject A's labels warped onto "
              "subject B's grid (nearest neighbour) against subject B's labels, counted where the map lands inside "
              "subject A's field of view; organs present in both scans."]
    if ab.get("error"):
        lines += ["", f"Not measured: {ab['error']}"]
    else:
        organs = [ORGANS[lab] for lab in ab["labels"]]
        h = ["method", *organs, "mean Dice", "wall s", "CPU s", "peak MB"]
        rr = []
        for row in ab["rows"]:
            if "dice" not in row:
                rr.append([row["method"], *["failed"] * len(organs), row.get("error", ""), "", "", ""])
                continue
            d = [row["dice"][o] for o in organs]
            t = [("" if not np.isfinite(row[k]) else f"{row[k]:.{n}f}")
                 for k, n in (("seconds", 1), ("cpu_s", 1), ("peak_mb", 0))]
            rr.append([row["method"], *[f"{v:.3f}" for v in d], f"{np.mean(d):.3f}", *t])
        lines += ["", markdown_table(h, rr)]
        if cfg.get("abdomen_init"):
            lines += ["", "The rigid-search initialisation was run once before this benchmark with the same command "
                      "(`rigid-search --fixed subjectB_ct.nii.gz --moving subjectA_ct_3mm.nii.gz --min-overlap 0.3 "
                      "--device cpu`) and reused (`--abdomen-init`), so its time is not in the table."]
    lines += ["", f"Command: `python Testing/Benchmarks/bench_deformable.py {' '.join(result.get('abdomen_argv', cfg.get('argv', [])))}`"]
    return "\n".join(lines).strip()


def summarise_memory(result: dict) -> str:
    """The ``memory`` part of a result as its own BENCHMARKS.md section (written only by runs that measured it)."""
    cfg = result["config"]
    lines = []
    lines += ["", "### 256³ 1 mm pair: peak memory", "",
              "The stroke T1 (fixed) and T2 (moving, shifted 3 mm) resampled onto a 256³ 1 mm grid; the default "
              "command (automatic working spacing: 1.5 mm coarsened to at most 3 M voxels, here about 1.8 mm; "
              "MIND-SSC, as the pair is cross-contrast), and a 1 mm working grid, which the memory estimate "
              "refuses before allocating (exit 2, one line).", ""]
    h = ["run", "exit code", "wall s", "CPU s", "peak MB", "message"]
    lines += [markdown_table(h, [[r["run"], r["rc"], f"{r['seconds']:.1f}", f"{r['cpu_s']:.1f}",
                                  f"{r['peak_mb']:.0f}", r["message"]] for r in result["memory"]["runs"]])]
    ok = [r for r in result["memory"]["runs"] if r["rc"] == 0]
    if ok:
        peak = max(r["peak_mb"] for r in ok)
        lines += ["", f"- peak memory ≤ 4 GB for a 256³ 1 mm pair: {peak:.0f} MB: "
                      f"{'met' if peak <= 4096 else '**not met**'}"]
    lines += ["", f"Command: `python Testing/Benchmarks/bench_deformable.py {' '.join(result.get('memory_argv', cfg.get('argv', [])))}`"]
    return "\n".join(lines).strip()


def targets_text(result: dict) -> list:
    """The issue's targets, each checked against this run's records (met / not met, with the numbers)."""
    recs = [r for r in result["records"] if "mean" in r]
    out = ["Targets of the issue, checked on this run's numbers:", ""]

    def verdict(ok):
        return "met" if ok else "**not met**"

    ours = [m for m in dict.fromkeys(r["method"] for r in recs)
            if m.startswith(("optimisation only", "network + optimisation"))]
    for method in ours:
        same = [r["mean"] for r in recs if r["method"] == method and r["pair"] == "T1→T1"]
        cross = [r["mean"] for r in recs if r["method"] == method and r["pair"] != "T1→T1"]
        folds = [r["folding"] for r in recs if r["method"] == method]
        cpu = [r["cpu_s"] for r in recs if r["method"] == method]
        if same:
            out.append(f"- {method}, same contrast ≤ 0.3 mm: mean {np.mean(same):.2f} mm, worst case "
                       f"{max(same):.2f} mm ({len(same)} cases): {verdict(max(same) <= 0.3)}")
        if cross:
            out.append(f"- {method}, cross contrast ≤ 1.5 mm: mean {np.mean(cross):.2f} mm, worst case "
                       f"{max(cross):.2f} mm ({len(cross)} cases): {verdict(max(cross) <= 1.5)}")
        if folds:
            out.append(f"- {method}, folding < 0.1 % in every case: worst {100 * max(folds):.4f} %: "
                       f"{verdict(max(folds) < 1e-3)}")
        if cpu:
            out.append(f"- {method}, whole command ≤ 20 s per pair on 2 cores: CPU time {np.mean(cpu):.1f} s mean, "
                       f"{max(cpu):.1f} s worst (one thread; the wall times of this loaded machine say nothing "
                       f"about an idle one, and CPU time also grows under contention; the quiet-machine wall time "
                       f"is in the section deformable-timing): {verdict(max(cpu) <= 20.0)} as CPU time")
    for method in dict.fromkeys(r["method"] for r in recs):
        if not method.startswith("network only"):
            continue
        keys = {(r["pair"], r["class"], r["case"]) for r in recs if r["method"] == method}
        net = np.mean([r["mean"] for r in recs if r["method"] == method])
        ident = np.mean([r["mean"] for r in recs if r["method"] == "identity"
                         and (r["pair"], r["class"], r["case"]) in keys])
        out.append(f"- {method} at least halves the identity error: {net:.2f} mm against {ident:.2f} mm on the same "
                   f"{len(keys)} cases: {verdict(net <= ident / 2)}")
        name = method[len("network only ("):].split(",")[0]
        both = [r for r in recs if r["method"] == f"network + optimisation ({name})"]
        keys2 = {(r["pair"], r["class"], r["case"]) for r in both}
        opt = [r["mean"] for r in recs if r["method"].startswith("optimisation only")
               and (r["pair"], r["class"], r["case"]) in keys2]
        if both and len(opt) == len(both):
            nb = np.mean([r["mean"] for r in both])
            out.append(f"- network + optimisation ({name}) at least as accurate as optimisation only (same steps): "
                       f"{nb:.3f} mm against {np.mean(opt):.3f} mm on the same {len(both)} cases: "
                       f"{verdict(nb <= np.mean(opt))}")
    if result.get("memory"):
        ok = [r for r in result["memory"]["runs"] if r["rc"] == 0]
        if ok:
            peak = max(r["peak_mb"] for r in ok)
            out.append(f"- peak memory ≤ 4 GB for a 256³ 1 mm pair: {peak:.0f} MB: {verdict(peak <= 4096)}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=3, help="cases per class and pair type")
    p.add_argument("--peer-cases", type=int, default=1, help="cases per class and pair run by the peers")
    p.add_argument("--case-start", type=int, default=0,
                   help="first case index (cases --case-start .. --cases-1; parallel runs split the cases this way)")
    p.add_argument("--pairs", default="T1,T2,FLAIR", help="moving contrasts (fixed is always T1)")
    p.add_argument("--model", action="append", default=[],
                   help="field network (.pt or name): network rows (repeat); 'shipped': every shipped deformable model")
    p.add_argument("--peers", default="elastix,ants", help="comma list of peers: elastix, ants")
    p.add_argument("--classes", default="", help="comma list of RegNet class indices 0-2 (default: all)")
    p.add_argument("--abdomen", action="store_true", help="also the real CT pair (organ Dice)")
    p.add_argument("--abdomen-init", help="reuse this rigid-search result (same command) for the CT pair")
    p.add_argument("--memory", action="store_true", help="also the 256³ 1 mm peak-memory check")
    p.add_argument("--resume", action="store_true", help="go on from the saved partial result")
    p.add_argument("--threads", type=int, default=0, help="--threads of our command (0: torch's default)")
    p.add_argument("--peers-only", action="store_true", help="run only the peers' rows (merge them with --merge)")
    p.add_argument("--models-only", action="store_true", help="run only the network rows (and peers, if any)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default=str(Path(__file__).resolve().parent / "output" / "deformable"))
    p.add_argument("--write", action="store_true", help="write the section of BENCHMARKS.md")
    p.add_argument("--from-json", help="re-summarise a saved result JSON instead of running")
    p.add_argument("--merge", action="append", default=[],
                   help="add the rows, memory and abdomen parts of another run's result JSON (repeat)")
    p.add_argument("--timing-only", type=int, default=0, metavar="N",
                   help="only time the whole command N times per row on a T1→T1 and a T1→T2 case, threads 0 and 1 "
                        "(run it on a quiet machine); --write writes its own section, deformable-timing")
    p.add_argument("--timing-pause", type=float, default=20.0,
                   help="seconds to wait before each --timing-only run (default 20)")
    p.add_argument("--worker", nargs=4, metavar=("PEER", "FIXED", "MOVING", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        {"elastix": worker_elastix, "ants": worker_ants}[args.worker[0]](*args.worker[1:])
        return 0
    argv_used = list(sys.argv[1:] if argv is None else argv)
    args.argv = argv_used
    if "shipped" in args.model:  # every deformable model shipped with the package (the registry's list)
        from RegistrationSuiteLib.models.registry import list_models

        shipped = [m.name for m in list_models("deformable_field") if m.source == "shipped"]
        args.model = list(dict.fromkeys(n for m in args.model for n in (shipped if m == "shipped" else [m])))
    args.pairs = [s for s in args.pairs.split(",") if s]
    args.peers = [s for s in args.peers.split(",") if s]
    args.classes = [int(s) for s in args.classes.split(",") if s]
    notes = []
    args.notes = notes
    if "ants" in args.peers:
        try:
            import ants  # noqa: F401
        except ImportError:
            args.peers.remove("ants")
            notes.append("ANTs SyN was not run: antspyx is not installed here.")
    out_dir = Path(args.output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.timing_only:
        timing = json.loads(Path(args.from_json).read_text()) if args.from_json else timing_run(args, out_dir)
        if not args.from_json:
            timing["argv"] = argv_used
            (out_dir / "bench_deformable_timing.json").write_text(json.dumps(timing, indent=1, default=str))
        text = summarise_timing(timing, timing.get("argv", argv_used))
        print(text)
        if args.write:
            update_benchmarks_md("deformable-timing", text)
        return 0
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
    else:
        partial = out_dir / "bench_deformable.partial.json"
        previous = json.loads(partial.read_text()) if args.resume and partial.exists() else None
        args.argv_history = [*((previous or {}).get("config", {}).get("argv_history", [])), argv_used]
        result = run_benchmark(args, previous)
        if args.abdomen:
            result["abdomen"] = (previous or {}).get("abdomen") or abdomen_check(args, out_dir)
            _save(out_dir, result["records"], args, {"abdomen": result["abdomen"]})
        if args.memory:
            result["memory"] = (previous or {}).get("memory") or memory_check(args, out_dir)
        result["config"] = _config(args)
        result["config"]["load"] = f"{os.getloadavg()[0]:.1f}"
        (out_dir / "bench_deformable.json").write_text(json.dumps(result, indent=1, default=str))
    for path in args.merge:  # parts measured by another run of this script (its own output folder)
        other = json.loads(Path(path).read_text())
        have = {(r["pair"], r["class"], r["case"], r["method"]) for r in result["records"]}
        extra = [r for r in other.get("records", []) if (r["pair"], r["class"], r["case"], r["method"]) not in have]
        for r in extra:  # runs saved before records carried their thread count: that run's --threads
            if r["method"] != "identity" and "threads" not in r and "threads" in other.get("config", {}):
                r["threads"] = other["config"]["threads"]
        if extra:  # rows of the same cases (same seed: the cases are identical) measured by another run
            result["records"] += extra
            result["config"].setdefault("argv_history", [result["config"]["argv"]])
            result["config"]["argv_history"] += other["config"].get("argv_history", [other["config"]["argv"]])
        for key in ("memory", "abdomen"):
            if other.get(key) and not result.get(key):
                result[key] = other[key]
                result[f"{key}_argv"] = other["config"].get("argv", [])  # the run that measured this part
                result["config"].setdefault("argv_history", [result["config"]["argv"]])
                result["config"]["argv_history"] += other["config"].get("argv_history", [other["config"]["argv"]])
    text = summarise(result)
    print(text)
    if args.write:
        update_benchmarks_md("deformable", text)
        for key, section, summary in (("abdomen", "deformable-abdomen", summarise_abdomen),
                                      ("memory", "deformable-memory", summarise_memory)):
            if result.get(key):  # only a run that measured it replaces that section
                update_benchmarks_md(section, summary(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

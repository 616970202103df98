"""Benchmark of deformable registration with RegNet's synthetic-field protocol, peers side by side.

Protocol (issue "Deformable registration", Benchmark; Sokooti et al. 2017 §2.2): the held-out subject is
``../shared/data/brain/stroke`` (T1, T2, FLAIR on one grid; never used in training), resampled to 1.5 mm.
For each RegNet class (σ, P, θ) and case, a synthetic field ``d`` is drawn with its points on edges inside
the brain mask (:func:`RegistrationSuiteLib.methods.deformable.synthetic_field`); the fixed image is the T1
seen through ``x → x + d(x)`` (so the true fixed → moving map is known exactly) plus Gaussian noise (1 % of
the intensity range), the moving image is the T1 (same contrast), T2 or FLAIR (cross contrast), also with
noise. Reported inside the brain mask of the fixed grid: mean and 95th percentile of |T(x) − (x + d(x))|
(mm), the fraction of voxels with det J ≤ 0 of the estimated map (dense field on the fixed grid), the wall
time of the whole command in a fresh process, and that process's peak resident memory.

Rows: identity; ``deformable --model none`` (optimisation only); with ``--model``: network only
(``--io-steps 0``) and network + optimisation; elastix B-spline (itk-elastix, its default ``bspline`` map,
from the identity); ANTs SyN (antspyx, ``type_of_transform='SyN'``) when antspyx is installed.

Usage::

    python Testing/Benchmarks/bench_deformable.py --cases 1 --pairs T1,T2,FLAIR [--model M.pt] \
        [--peers elastix,ants] [--peer-cases 1] [--write]
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
from common import markdown_table, require_shared_data, update_benchmarks_md  # noqa: E402

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


def run_measured(cmd, cwd) -> dict:
    """Run ``cmd`` in a fresh process: return code, stdout, stderr, wall time (s) and its peak RSS (MB)."""
    out_path, err_path = Path(cwd) / "stdout.txt", Path(cwd) / "stderr.txt"
    with open(out_path, "w") as fo, open(err_path, "w") as fe:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=fo, stderr=fe)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage: its peak memory
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "stdout": out_path.read_text(), "stderr": err_path.read_text(),
            "seconds": wall, "peak_mb": usage.ru_maxrss / 1024.0}


def evaluate(field_image: sitk.Image, truth: sitk.Image, mask: np.ndarray) -> dict:
    """Field error (mm) inside ``mask`` and folding fraction of the estimated dense field (fixed grid)."""
    est = sitk.GetArrayFromImage(field_image)
    err = np.linalg.norm(est - sitk.GetArrayFromImage(truth), axis=-1)[mask]
    det = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field_image))[mask]
    return {"mean": float(err.mean()), "p95": float(np.percentile(err, 95)), "folding": float((det <= 0).mean())}


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


def method_commands(args) -> dict:
    """Name → command builder ``(fixed, moving, out) -> argv`` of every row that runs a process."""
    base = ["deformable", "--json", "--quiet", "--device", "cpu"]
    rows = {"optimisation only": lambda f, m, o: CLI + base + ["--fixed", f, "--moving", m, "--output", o,
                                                               "--model", "none"]}
    if args.model:
        rows["network only"] = lambda f, m, o: CLI + base + ["--fixed", f, "--moving", m, "--output", o,
                                                             "--model", args.model, "--io-steps", "0"]
        rows["network + optimisation"] = lambda f, m, o: CLI + base + ["--fixed", f, "--moving", m, "--output", o,
                                                                       "--model", args.model]
    me = str(Path(__file__).resolve())
    if "elastix" in args.peers:
        rows["elastix B-spline"] = lambda f, m, o: [sys.executable, me, "--worker", "elastix", f, m, o]
    if "ants" in args.peers:
        rows["ANTs SyN"] = lambda f, m, o: [sys.executable, me, "--worker", "ants", f, m, o]
    return rows


def read_field(path: Path, reference: sitk.Image) -> sitk.Image:
    if str(path).endswith(".h5"):
        return dense(sitk.ReadTransform(str(path)), reference)
    img = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64)
    return img if img.GetSize() == reference.GetSize() else dense(sitk.DisplacementFieldTransform(img), reference)


def run_benchmark(args) -> dict:
    from RegistrationSuiteLib.methods.deformable.synthetic import REGNET_CLASSES

    root = require_shared_data("brain", "stroke")
    names = ["T1", *[p for p in args.pairs if p != "T1"]] if "T1" in args.pairs else ["T1", *args.pairs]
    images = {n: resample_iso(sitk.ReadImage(str(root / f"{n}.nii.gz"), sitk.sitkFloat32), SPACING) for n in names}
    t1 = sitk.GetArrayFromImage(images["T1"])
    mask = t1 > 0.05 * float(np.percentile(t1, 99.5))  # the T1 is skull-stripped: non-background = brain
    rows = method_commands(args)
    records = []
    rng = np.random.default_rng(args.seed)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for pair in args.pairs:
        for k, cls in enumerate(REGNET_CLASSES):
            if args.classes and k not in args.classes:
                continue
            for case in range(args.cases):
                fixed, moving, truth = make_case(images, mask, cls, pair, rng)
                with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
                    f, m = str(Path(tmp) / "fixed.nii.gz"), str(Path(tmp) / "moving.nii.gz")
                    sitk.WriteImage(fixed, f)
                    sitk.WriteImage(moving, m)
                    ident = evaluate(dense(sitk.Transform(3, sitk.sitkIdentity), fixed), truth, mask)
                    records.append({"pair": f"T1→{pair}", "class": k, "case": case, "method": "identity", **ident,
                                    "seconds": 0.0, "peak_mb": 0.0})
                    print(json.dumps(records[-1]), flush=True)
                    for name, build in rows.items():
                        if name in ("elastix B-spline", "ANTs SyN") and case >= args.peer_cases:
                            continue
                        o = str(Path(tmp) / ("t.h5" if not name.startswith(("elastix", "ANTs")) else "field.nii.gz"))
                        res = run_measured(build(f, m, o), tmp)
                        rec = {"pair": f"T1→{pair}", "class": k, "case": case, "method": name,
                               "seconds": res["seconds"], "peak_mb": res["peak_mb"], "rc": res["rc"]}
                        if res["rc"] == 0 and Path(o).exists():
                            rec.update(evaluate(read_field(Path(o), fixed), truth, mask))
                        else:
                            rec["error"] = (res["stderr"].strip().splitlines() or ["?"])[-1][:200]
                        records.append(rec)
                        print(json.dumps(rec), flush=True)
                        # saved after every run: an interrupted benchmark keeps what it measured
                        (out_dir / "bench_deformable.partial.json").write_text(json.dumps(
                            {"records": records, "config": dict(vars(args), argv=args.argv, notes=args.notes)},
                            indent=1, default=str))
    return {"records": records, "config": vars(args)}


def summarise(result: dict) -> str:
    recs = result["records"]
    header = ["pair", "method", "cases", "mean error (mm)", "p95 error (mm)", "folding % (max)", "time (s)", "peak MB"]
    rows = []
    for pair in dict.fromkeys(r["pair"] for r in recs):
        for method in dict.fromkeys(r["method"] for r in recs):
            sel = [r for r in recs if r["pair"] == pair and r["method"] == method]
            ok = [r for r in sel if "mean" in r]
            if not sel:
                continue
            if not ok:
                rows.append([pair, method, f"0/{len(sel)}", "failed", "", "", "", ""])
                continue
            rows.append([pair, method, f"{len(ok)}/{len(sel)}", f"{np.mean([r['mean'] for r in ok]):.2f}",
                         f"{np.mean([r['p95'] for r in ok]):.2f}",
                         f"{100 * np.mean([r['folding'] for r in ok]):.3f} ({100 * max(r['folding'] for r in ok):.3f})",
                         "" if method == "identity" else f"{np.mean([r['seconds'] for r in ok]):.1f}",
                         "" if method == "identity" else f"{max(r['peak_mb'] for r in ok):.0f}"])
    cfg = result["config"]
    classes = cfg.get("classes") or [0, 1, 2]
    run_scope = (f"This run: pair types {', '.join('T1→' + p for p in cfg['pairs'])}; RegNet classes "
                 f"{', '.join(str(c) for c in classes)} (0 = σ 35, 1 = σ 25, 2 = σ 20 mm); peers "
                 f"{', '.join(cfg['peers']) or 'none'}; network rows {'with ' + str(cfg['model']) if cfg.get('model') else 'not run (no model given)'}.")
    return "\n".join([
        "## Deformable registration — RegNet synthetic-field protocol (`bench_deformable.py`)",
        "",
        f"Held-out subject `brain/stroke` at {SPACING} mm (never used in training); per pair type and RegNet class "
        f"(σ, P, θ) ∈ {{(35, 80, 8), (25, 100, 8), (20, 100, 8)}} mm: {cfg['cases']} case(s) "
        f"(peers: {cfg['peer_cases']}); fixed = T1 through the synthetic field + 1 % noise, moving = T1/T2/FLAIR "
        "+ 1 % noise. Error = |estimated − true fixed→moving map| inside the brain mask; folding = det J ≤ 0 of "
        "the estimated map on the fixed grid (mean over cases, max in brackets); time = whole command in a fresh "
        "process (wall clock on the shared 2-core machine, heavily loaded by other jobs during this run: "
        "times are upper bounds); peak MB = that process's peak resident memory.",
        f"Command: `python Testing/Benchmarks/bench_deformable.py {' '.join(cfg['argv'])}`",
        "",
        run_scope,
        "",
        markdown_table(header, rows),
        "",
        *(f"- {n}" for n in cfg.get("notes", [])),
    ])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=1, help="cases per class and pair type")
    p.add_argument("--peer-cases", type=int, default=1, help="cases per class and pair run by the peers")
    p.add_argument("--pairs", default="T1,T2,FLAIR", help="moving contrasts (fixed is always T1)")
    p.add_argument("--model", help="field network model (.pt or name) for the network rows")
    p.add_argument("--peers", default="elastix,ants", help="comma list of peers: elastix, ants")
    p.add_argument("--classes", default="", help="comma list of RegNet class indices 0-2 (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default=str(Path(__file__).resolve().parent / "output" / "deformable"))
    p.add_argument("--write", action="store_true", help="write the section of BENCHMARKS.md")
    p.add_argument("--from-json", help="re-summarise a saved result JSON instead of running")
    p.add_argument("--worker", nargs=4, metavar=("PEER", "FIXED", "MOVING", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        {"elastix": worker_elastix, "ants": worker_ants}[args.worker[0]](*args.worker[1:])
        return 0
    argv_used = list(sys.argv[1:] if argv is None else argv)
    args.argv = argv_used
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
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
    else:
        result = run_benchmark(args)
        result["config"]["argv"] = argv_used
        result["config"]["notes"] = notes
        out = Path(args.output_dir) / "bench_deformable.json"
        out.write_text(json.dumps(result, indent=1, default=str))
    text = summarise(result)
    print(text)
    if args.write:
        update_benchmarks_md("deformable", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

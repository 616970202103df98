#!/usr/bin/env python
"""Benchmark of histology registration on the ANHIR pairs with landmarks (5 % scale), with peers.

Protocol (ANHIR, METHOD_NOTES §4): fixed = the H&E slide ("target"), moving = the immunohistochemistry slide
("source"); the fixed landmarks are mapped into the moving slide by each method's fixed → moving mapping and
compared with the moving landmarks (the first N of each file correspond, N = the shorter file).
rTRE = landmark error / diagonal of the fixed image; per pair the median and mean rTRE; robustness = fraction
of landmarks whose error is smaller than without registration (identity).

Every method runs in a fresh process (``--one``), so its time is the whole command (interpreter, imports,
reading, registration, writing) and its peak memory is that process's maximum resident set. Ours runs as the
CLI (``registration-suite histology``) inside that process. Peers: SimpleITK (Mattes MI, affine, then a
B-spline) from the images' centres or from our rotation search's candidate (a pure rotation/reflection about
the tissue centres of mass, before our affine refinement), and elastix's default affine + B-spline parameter
maps (itk-elastix). Peers see luminance images (SimpleITK's usual RGB handling).

Usage::

    python Testing/Benchmarks/bench_histology.py [--methods ...] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, markdown_table, require_shared_data, update_benchmarks_md  # noqa: E402

PAIRS = {
    "rat kidney HE → PanCytokeratin": ("rat-kidney_/scale-5pc/Rat-Kidney_HE", "rat-kidney_/scale-5pc/Rat-Kidney_PanCytokeratin"),
    "lung lesion HE → proSPC": ("lesions_/scale-5pc/Izd2-29-041-w35_HE", "lesions_/scale-5pc/Izd2-29-041-w35_proSPC"),
}
METHODS = {
    "identity": "no registration",
    "ours_initial": "ours: rotation search + affine (--io-steps 0)",
    "ours": "ours: + instance optimisation (default)",
    "sitk_affine": "SimpleITK affine (centre init)",
    "sitk_bspline": "SimpleITK affine + B-spline (centre init)",
    "sitk_affine_rs": "SimpleITK affine (our rotation search init)",
    "sitk_bspline_rs": "SimpleITK affine + B-spline (our rotation search init)",
    "elastix": "elastix default affine + B-spline",
}
OUT = REPO / "Testing" / "Benchmarks" / "output" / "histology"


# ------------------------------------------------------------------------------------------- one method
def _paths(pair: str):
    root = require_shared_data("histology", "birl")
    f, m = PAIRS[pair]
    return root / f"{f}.jpg", root / f"{m}.jpg", root / f"{f}.csv", root / f"{m}.csv"


def _grey(path):
    import SimpleITK as sitk

    from RegistrationSuiteLib.io import read_image

    return read_image(str(path), "image").image  # luminance, spacing 1 = level-0 pixels


def _ours(pair: str, extra: list) -> np.ndarray:
    from RegistrationSuiteLib.cli.main import main as cli
    from RegistrationSuiteLib.methods.histology import read_landmarks

    fixed, moving, fixed_lm, _ = _paths(pair)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "in_moving.csv"
        code = cli(["histology", "--fixed", str(fixed), "--moving", str(moving), "--output", str(Path(tmp) / "t.h5"),
                    "--fixed-landmarks", str(fixed_lm), "--output-landmarks", str(out), "--quiet", *extra])
        if code != 0:
            raise RuntimeError(f"CLI exit code {code}")
        return read_landmarks(out)


def _search_init(pair: str):
    """Our rotation search's candidate as a SimpleITK affine (fixed → moving, pixels)."""
    import SimpleITK as sitk

    from RegistrationSuiteLib.methods.histology import HistologyConfig, register_histology

    fixed, moving, _, _ = _paths(pair)
    res = register_histology(str(fixed), str(moving), HistologyConfig(io_steps=0, affine_iterations=1))
    m = np.asarray(res.diagnostics["search_fixed_to_moving"])
    tx = sitk.AffineTransform(2)
    tx.SetMatrix(tuple(m[:2, :2].ravel()))
    tx.SetTranslation(tuple(m[:2, 2]))
    return tx


def _sitk(pair: str, bspline: bool, rotation_search: bool) -> np.ndarray:
    import SimpleITK as sitk

    fixed_p, moving_p, fixed_lm, _ = _paths(pair)
    fixed, moving = _grey(fixed_p), _grey(moving_p)
    if rotation_search:
        init = _search_init(pair)
    else:
        init = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(2),
                                                 sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = _sitk_method(300)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(init, inPlace=False)
    affine = reg.Execute(fixed, moving)
    final = affine
    if bspline:
        mesh = [8, 8]
        bs = sitk.BSplineTransformInitializer(fixed, mesh)
        reg = _sitk_method(100)
        reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=100)
        reg.SetMovingInitialTransform(affine)
        reg.SetInitialTransform(bs, inPlace=True)
        reg.Execute(fixed, moving)
        final = sitk.CompositeTransform([affine, bs])  # applied last-added first: B-spline, then affine
    pts = _read_lm(fixed_lm)
    return np.array([final.TransformPoint(tuple(p)) for p in pts])


def _sitk_method(iterations: int):
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed=0)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=iterations,
                                                 gradientMagnitudeTolerance=1e-6)
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    return reg


def _elastix(pair: str) -> np.ndarray:
    import itk

    fixed_p, moving_p, fixed_lm, _ = _paths(pair)
    import SimpleITK as sitk

    def to_itk(img):
        out = itk.GetImageFromArray(sitk.GetArrayFromImage(img).astype(np.float32))
        out.SetSpacing(img.GetSpacing())
        out.SetOrigin(img.GetOrigin())
        return out

    fixed, moving = to_itk(_grey(fixed_p)), to_itk(_grey(moving_p))
    params = itk.ParameterObject.New()
    params.AddParameterMap(params.GetDefaultParameterMap("affine"))
    params.AddParameterMap(params.GetDefaultParameterMap("bspline"))
    _, result = itk.elastix_registration_method(fixed, moving, parameter_object=params, log_to_console=False)
    pts = _read_lm(fixed_lm)
    with tempfile.TemporaryDirectory() as tmp:
        pfile = Path(tmp) / "points.txt"
        pfile.write_text("point\n%d\n" % len(pts) + "".join(f"{x} {y}\n" for x, y in pts))
        itk.transformix_pointset(moving, result, fixed_point_set_file_name=str(pfile), output_directory=tmp)
        lines = (Path(tmp) / "outputpoints.txt").read_text().splitlines()
    out = []
    for line in lines:
        seg = line.split("OutputPoint = [")[1].split("]")[0]
        out.append([float(v) for v in seg.split()])
    return np.array(out)


def _read_lm(path) -> np.ndarray:
    from RegistrationSuiteLib.methods.histology import read_landmarks

    return read_landmarks(path)


def run_one(method: str, pair: str) -> dict:
    """Run one method on one pair in this process; returns predicted moving landmarks, time, peak memory."""
    t0 = time.perf_counter()
    if method == "identity":
        pred = _read_lm(_paths(pair)[2])
    elif method == "ours_initial":
        pred = _ours(pair, ["--io-steps", "0"])
    elif method == "ours":
        pred = _ours(pair, [])
    elif method.startswith("sitk_"):
        pred = _sitk(pair, "bspline" in method, method.endswith("_rs"))
    elif method == "elastix":
        pred = _elastix(pair)
    else:
        raise ValueError(method)
    return {"predicted": np.asarray(pred).tolist(), "seconds": time.perf_counter() - t0,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


# ------------------------------------------------------------------------------------------- driver
def evaluate(method: str, pair: str, rerun: bool, timeout: int) -> dict:
    """Run ``method`` on ``pair`` in a fresh process (cached in output/histology/) and score it."""
    from RegistrationSuiteLib.methods.histology.landmarks import relative_tre, robustness

    OUT.mkdir(parents=True, exist_ok=True)
    cache = OUT / f"{method}__{PAIRS[pair][0].split('/')[-1]}.json"
    if rerun or not cache.exists():
        t0 = time.perf_counter()
        env = dict(os.environ, OMP_NUM_THREADS="1")
        try:
            proc = subprocess.run([sys.executable, __file__, "--one", method, pair, "--json-out", str(cache)],
                                  capture_output=True, text=True, timeout=timeout, env=env)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                cache.write_text(json.dumps({"error": proc.stderr.strip().splitlines()[-1][:200] if proc.stderr else
                                             f"exit {proc.returncode}", "wall_seconds": wall}))
            else:
                data = json.loads(cache.read_text())
                data["wall_seconds"] = wall
                cache.write_text(json.dumps(data))
        except subprocess.TimeoutExpired:
            cache.write_text(json.dumps({"error": f"timeout after {timeout} s", "wall_seconds": timeout}))
    data = json.loads(cache.read_text())
    row = {"method": method, "pair": pair}
    if "error" in data:
        return dict(row, error=data["error"], wall_seconds=data.get("wall_seconds"))
    _, _, fixed_lm, moving_lm = _paths(pair)
    fixed_pts, moving_pts = _read_lm(fixed_lm), _read_lm(moving_lm)
    n = min(len(fixed_pts), len(moving_pts))
    diag = _diagonal(pair)
    pred = np.asarray(data["predicted"])[:n]
    r = relative_tre(pred, moving_pts[:n], diag)
    r0 = relative_tre(fixed_pts[:n], moving_pts[:n], diag)
    return dict(row, median_rtre=float(np.median(r)), mean_rtre=float(np.mean(r)), robustness=robustness(r, r0),
                seconds=data["wall_seconds"], peak_mb=data["peak_mb"], landmarks=n)


def _diagonal(pair: str) -> float:
    from PIL import Image

    with Image.open(_paths(pair)[0]) as im:
        return float(np.hypot(*im.size))


def summarise(rows, args) -> str:
    header = ["method"] + [f"{p}: median / mean rTRE (%), robustness, time (s), peak MB" for p in PAIRS] + \
             ["average median rTRE (%)"]
    table = []
    for method in [m for m in METHODS if any(r["method"] == m for r in rows)]:
        cells, medians = [METHODS[method]], []
        for pair in PAIRS:
            r = next((x for x in rows if x["method"] == method and x["pair"] == pair), None)
            if r is None:
                cells.append("–")
            elif "error" in r:
                cells.append(f"failed: {r['error'][:60]}")
                medians.append(float("nan"))
            else:
                medians.append(r["median_rtre"])
                cells.append(f"{100 * r['median_rtre']:.2f} / {100 * r['mean_rtre']:.2f}, {r['robustness']:.2f}, "
                             f"{r['seconds']:.0f}, {r['peak_mb']:.0f}")
        cells.append(f"{100 * np.mean(medians):.2f}" if medians else "–")
        table.append(cells)
    lines = [
        "## Histology registration (`bench_histology.py`) — ANHIR pairs at 5 % scale",
        "",
        "Fixed = H&E, moving = immunohistochemistry (`../shared/data/histology/birl`, landmarks X,Y in pixels). "
        "rTRE = landmark error / fixed image diagonal; robustness = fraction of landmarks closer than without "
        "registration. Each run is a fresh process: time = the whole command (start-up, imports, reading, "
        "registration, outputs), peak MB = that process's maximum resident memory. 2 shared, busy CPU cores "
        "(other jobs ran at the same time: times are upper bounds).",
        "",
        markdown_table(header, table),
        "",
        f"Command: `python Testing/Benchmarks/bench_histology.py --methods {' '.join(args.methods)} --write`",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--rerun", action="store_true", help="ignore cached results in output/histology/")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per method and pair")
    ap.add_argument("--write", action="store_true", help="update the section in BENCHMARKS.md")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "PAIR"), help=argparse.SUPPRESS)
    ap.add_argument("--json-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        Path(args.json_out).write_text(json.dumps(run_one(*args.one)))
        return 0
    rows = []
    for method in args.methods:
        for pair in PAIRS:
            rows.append(evaluate(method, pair, args.rerun, args.timeout))
            print(json.dumps(rows[-1]), flush=True)
    (OUT / "summary.json").write_text(json.dumps(rows, indent=1))
    body = summarise(rows, args)
    print(body)
    if args.write:
        update_benchmarks_md("histology", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Benchmark of TSPM partial-volume preregistration (Xia et al., MICCAI 2022) with peers side by side.

Protocol (issue; paper §3): fixed = a whole-brain T2 or FLAIR of the stroke subject
(``../shared/data/brain/stroke``, 1 mm); moving = a partial crop of the same subject's T1 (co-registered with
T2/FLAIR) in one of four size classes by largest extent (tiny < 70 mm, small 70–110, medium 110–135,
large > 135), moved into its own frame: rotation uniform in ±15° per axis about the crop centre, crop centre
placed up to 100 mm (uniform radius, random direction) from the fixed image's centre. The true fixed → moving
transform is therefore known. Error = the paper's anchor error: mean distance, over a 5×5×5 grid spanning the
moving image, between the points mapped into the fixed image by the estimated and the true transform.
Success: anchor error < 4 mm.

Methods (all but "TSPM w/o refinement" and the external peers end with the same overlap-restricted Mattes-MI
rigid refinement, ``methods.partial_prereg.refine.refine_rigid``): centre initialisation, moments
initialisation, the global rigid search (CSNGF), TSPM (default: orientation-prior candidate and local CSNGF
search), TSPM without the local search, TSPM alone (network + RANSAC, no search, no refinement), TSPM without
RANSAC, TSPM as in the paper (RANSAC candidate + refinement only) with Mattes MI and with the paper's NMI,
TSPM's pipeline without the network (``seeds="centre"``: the centre seed; ``seeds="scanner"``: the
scanner-orientation seeds TSPM uses for images too small for its patches; same search, widening and refinement),
and the whole CLI in a new process per case without the cache (its wall-clock time per case is reported);
elastix (itk-elastix default rigid map, geometric-centre initialisation) and SimpleITK (Mattes MI,
geometric-centre initialisation) as peers. The TSPM model is never trained on the stroke subject.

Cases are drawn per (seed, moving contrast, fixed modality, size class, index), so any selection of pairs, classes
and rows draws the same images; every finished row is appended at once to ``output/partial_prereg_rows.jsonl``, so
a run can be stopped, resumed (``--resume``) or split across invocations and summarised with ``--from-json``.

Per-contrast rows (``--moving T1 T2 FLAIR``): T2 and FLAIR crops are registered to the T1 (the network was
trained on T1 patches only).

Stress test ``--rotation-deg N`` (default 15, the table's): the same crops at the same offsets rotated within ±N°
per axis, beyond the network's ±15° training rotations and the local search's ±20° around its seeds; written to
its own section (``partial_prereg-rotation<N>``), rows keyed by the rotation range. Optional development rows
(run only when ``--only`` names them): ``tspm_w<K>`` / ``local_centre_w<K>`` = the first local search within ±K mm
(K = 20, 25, 30, 40) from the network's candidates / the centre seed (``local_search_first_window_mm``).

Usage::

    python Testing/Benchmarks/bench_partial_prereg.py --cases-per-class 5 [--skip global elastix] [--write]
    python Testing/Benchmarks/bench_partial_prereg.py --timing-only 5 --write   # whole-CLI time only (quiet machine)
    python Testing/Benchmarks/bench_partial_prereg.py --cases-per-class 2 --only tspm local_centre --resume
    python Testing/Benchmarks/bench_partial_prereg.py --seed 12 --rotation-deg 45 --only tspm local_centre
    python Testing/Benchmarks/bench_partial_prereg.py --cases-per-class 2 --only tspm local_centre \
        --from-json Testing/Benchmarks/output/partial_prereg_rows.jsonl --write
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import elastix_rigid, sitk_mattes_rigid  # noqa: E402
from common import REPO, markdown_table, require_shared_data, update_benchmarks_md  # noqa: E402

CLASSES = {"tiny": (45.0, 70.0), "small": (70.0, 110.0), "medium": (110.0, 135.0), "large": (135.0, 160.0)}
FIXED_MODALITIES = ("T2", "FLAIR")
SUCCESS_MM = 4.0
ROTATION_DEG = 15.0  # the table's rotations: uniform in ± this per axis (--rotation-deg: stress sections)
MODEL = None  # the shipped TSPM model unless --model is given


# ----------------------------------------------------------------------------------------------- cases
def _euler_deg(angles) -> np.ndarray:
    ax, ay, az = np.radians(angles)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _crop_box(t1: sitk.Image, cls: str, rng: np.random.Generator):
    """Index box (start, size) of a crop in ``cls`` whose content is at least 30 % brain."""
    arr = sitk.GetArrayViewFromImage(t1)
    size = np.asarray(t1.GetSize())
    spacing = np.asarray(t1.GetSpacing())
    lo, hi = CLASSES[cls]
    for _ in range(200):
        largest = rng.uniform(lo, min(hi, (size * spacing).max() - 1))
        axes = [a for a in range(3) if size[a] * spacing[a] >= largest]
        ext = np.minimum(largest * rng.uniform(0.6, 1.0, 3), size * spacing)
        ext[axes[int(rng.integers(len(axes)))]] = largest
        n = np.maximum(np.round(ext / spacing).astype(int), 24)
        start = np.array([int(rng.integers(0, s - k + 1)) for s, k in zip(size, n)])
        block = arr[start[2]:start[2] + n[2], start[1]:start[1] + n[1], start[0]:start[0] + n[0]]
        if np.mean(block > 0) >= 0.3:
            return start, n
    raise RuntimeError(f"no {cls} crop with enough brain")


CONTRASTS = ("T1", "T2", "FLAIR")


def case_rng(seed: int, contrast: str, modality: str, cls: str, k: int) -> np.random.Generator:
    """The random generator of one case, keyed by (seed, moving contrast, fixed modality, size class, index):
    a case is the same whichever pairs, classes or case counts a run selects, so runs can be split, resumed and
    merged (``--resume``)."""
    return np.random.default_rng([int(seed), CONTRASTS.index(contrast), CONTRASTS.index(modality),
                                  list(CLASSES).index(cls), int(k)])


def make_case(t1: sitk.Image, fixed: sitk.Image, cls: str, rng: np.random.Generator,
              rotation_deg: float = ROTATION_DEG):
    """(moving, true fixed→moving 4x4, largest extent mm); rotation uniform in ``± rotation_deg`` per axis. The
    random draws do not depend on ``rotation_deg``: another value rotates the same crop, placed at the same offset,
    by angles scaled by ``rotation_deg / 15`` (up to rounding)."""
    from RegistrationSuiteLib.geometry import Grid, apply_affine

    start, n = _crop_box(t1, cls, rng)
    crop = sitk.RegionOfInterest(t1, [int(v) for v in n], [int(v) for v in start])
    r = _euler_deg(rng.uniform(-float(rotation_deg), float(rotation_deg), 3))
    direction = rng.normal(size=3)
    offset = direction / np.linalg.norm(direction) * rng.uniform(0.0, 100.0)
    c_crop, c_fixed = Grid.from_image(crop).center(), Grid.from_image(fixed).center()
    move = np.eye(4)  # original (= fixed) physical → the moving image's new frame
    move[:3, :3] = r
    move[:3, 3] = c_fixed + offset - r @ c_crop
    moved = sitk.Image(crop)
    moved.SetDirection((r @ np.asarray(crop.GetDirection()).reshape(3, 3)).ravel().tolist())
    moved.SetOrigin(apply_affine(move, np.asarray(crop.GetOrigin())[None])[0].tolist())
    largest = float((np.asarray(crop.GetSize()) * np.asarray(crop.GetSpacing())).max())
    return moved, move, largest


def anchor_error(moving: sitk.Image, estimate: np.ndarray, truth: np.ndarray) -> float:
    """Mean distance over a 5×5×5 grid spanning the moving image, mapped moving → fixed (paper §3)."""
    from RegistrationSuiteLib.geometry import Grid, apply_affine

    axes = [np.linspace(0, s - 1, 5) for s in moving.GetSize()]
    idx = np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1).T
    pts = apply_affine(Grid.from_image(moving).index_to_world(), idx)
    a = apply_affine(np.linalg.inv(estimate), pts)
    b = apply_affine(np.linalg.inv(truth), pts)
    return float(np.linalg.norm(a - b, axis=1).mean())


# --------------------------------------------------------------------------------------------- methods
def _refine(fixed, moving, init):
    from RegistrationSuiteLib.methods.partial_prereg.refine import refine_rigid

    return refine_rigid(fixed, moving, init, metric="mi", seed=0).fixed_to_moving


def run_centre(fixed, moving):
    from RegistrationSuiteLib.geometry import Grid

    init = np.eye(4)
    init[:3, 3] = Grid.from_image(moving).center() - Grid.from_image(fixed).center()
    return _refine(fixed, moving, init)


def run_moments(fixed, moving):
    from RegistrationSuiteLib.geometry import affine_matrix_from_sitk

    tx = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                           sitk.CenteredTransformInitializerFilter.MOMENTS)
    return _refine(fixed, moving, affine_matrix_from_sitk(tx))


def run_global(fixed, moving):
    from RegistrationSuiteLib.methods.global_rigid import GlobalRigidConfig, register_global_rigid

    res = register_global_rigid(fixed, moving, GlobalRigidConfig(seed=0, device="cpu"))
    return _refine(fixed, moving, res.fixed_to_moving_matrix)


def _tspm(fixed, moving, **kw):
    from RegistrationSuiteLib.methods.partial_prereg import PartialPreregConfig, register_partial_prereg

    res = register_partial_prereg(fixed, moving, PartialPreregConfig(device="cpu", **kw), model=MODEL)
    return res.fixed_to_moving_matrix, res


def run_tspm(fixed, moving):
    return _tspm(fixed, moving)


def run_tspm_previous(fixed, moving):
    """TSPM with the previous session's search: 5 then 2.5 mm also for tiny crops, no widening after a poor match
    (the contribution of those two changes)."""
    return _tspm(fixed, moving, local_search_fine_below_mm=0.0, local_search_widen=False)


def run_tspm_nolocal(fixed, moving):
    return _tspm(fixed, moving, local_search=False)


def run_tspm_noref(fixed, moving):
    return _tspm(fixed, moving, refine="none", local_search=False)


def run_tspm_noransac(fixed, moving):
    return _tspm(fixed, moving, use_ransac=False)


def run_tspm_noprior(fixed, moving):
    return _tspm(fixed, moving, orientation_prior=False, local_search=False)


def run_tspm_paper_nmi(fixed, moving):
    """As in the paper, with its refinement metric (NMI) instead of Mattes MI."""
    return _tspm(fixed, moving, orientation_prior=False, local_search=False, refine="nmi")


def run_local_centre(fixed, moving):
    """No network: TSPM's pipeline (local CSNGF search, ±40 mm, ±20°, 2.5 mm for tiny crops, widened when it
    matches poorly; then the refinement) seeded with the moving centre on the fixed foreground's centre in scanner
    orientation (``seeds="centre"``)."""
    return _tspm(fixed, moving, seeds="centre")


def _window_rows(km):
    """Development rows: the first local search within ±``km`` mm of its seeds (``local_search_first_window_mm``)
    from the network's candidates and from the centre seed; the widening after a poor match keeps its ±40 mm."""
    return ((lambda fixed, moving: _tspm(fixed, moving, local_search_first_window_mm=km)),
            (lambda fixed, moving: _tspm(fixed, moving, seeds="centre", local_search_first_window_mm=km)))


def run_local_scanner(fixed, moving):
    """No network: TSPM's pipeline seeded with every scanner-orientation seed it uses for images too small for its
    patches (scanner coordinates, the centre, a lattice over the fixed foreground; ``seeds="scanner"``)."""
    return _tspm(fixed, moving, seeds="scanner")


def _cli(fixed, moving, cache_dir=None):
    """One CLI process; returns (fixed → moving matrix, wall seconds, CPU seconds of the child)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sitk.WriteImage(fixed, f"{tmp}/fixed.nii.gz")
        sitk.WriteImage(moving, f"{tmp}/moving.nii.gz")
        matrix, seconds, cpu, _ = _cli_files(f"{tmp}/fixed.nii.gz", f"{tmp}/moving.nii.gz", tmp, cache_dir)
    return matrix, seconds, cpu


def _cli_files(fixed_path, moving_path, tmp, cache_dir=None):
    """One CLI process on image files (output written under ``tmp``; no cache unless ``cache_dir``); returns
    (fixed → moving matrix, wall seconds, CPU seconds of the child, the CLI's JSON summary)."""
    import os
    import resource
    import subprocess

    cmd = [sys.executable, "-m", "RegistrationSuiteLib", "partial-prereg", "--fixed", str(fixed_path),
           "--moving", str(moving_path), "--output", f"{tmp}/t.h5", "--device", "cpu", "--json",
           "--quiet"] + (["--no-cache"] if cache_dir is None else []) + (["--model", str(MODEL)] if MODEL else [])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, REGISTRATION_SUITE_CACHE=cache_dir or tmp))
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "CLI failed")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return np.asarray(summary["fixed_to_moving_lps"]), seconds, cpu, summary


# ------------------------------------------------------------------------------ whole-CLI timing only
TIMING_SECTION = "partial_prereg-timing"


def run_timing(runs: int, seed: int, log) -> list:
    """``runs`` fresh CLI processes without the cache (--no-cache) and ``runs`` with this fixed image's
    fixed → template alignment in a fresh on-disk cache (filled by one untimed run first), on one medium and
    one tiny T1 crop against the whole T2 (the main table's first T1 → T2 tiny and medium cases with
    ``--fixed T2 --classes tiny medium``, seed ``seed``). Records wall
    clock, the child's CPU time and the 1-minute load average just before each run."""
    import shutil
    import tempfile

    data = require_shared_data("brain", "stroke")
    source = sitk.ReadImage(str(data / "T1.nii.gz"), sitk.sitkFloat32)
    fixed = sitk.ReadImage(str(data / "T2.nii.gz"), sitk.sitkFloat32)
    rows = []
    tmp = tempfile.mkdtemp(prefix="bench_tspm_timing_")
    try:
        sitk.WriteImage(fixed, f"{tmp}/fixed.nii.gz")
        cases = []
        for cls in ("tiny", "medium"):  # the main table's first T1 → T2 tiny and medium cases (same images)
            moving, truth, largest = make_case(source, fixed, cls, case_rng(seed, "T1", "T2", cls, 0))
            sitk.WriteImage(moving, f"{tmp}/{cls}.nii.gz")
            cases.append((cls, moving, truth, largest))
        cache = f"{tmp}/cache"
        for mode in ("uncached", "cached"):
            if mode == "cached":  # one untimed run stores the fixed image's alignment (same fixed for both)
                _cli_files(f"{tmp}/fixed.nii.gz", f"{tmp}/{cases[0][0]}.nii.gz", tmp, cache)
            for k in range(runs):
                for cls, moving, truth, largest in cases:  # alternate the cases: load drifts hit both alike
                    load = _load()
                    try:
                        matrix, seconds, cpu, summary = _cli_files(f"{tmp}/fixed.nii.gz", f"{tmp}/{cls}.nii.gz",
                                                                   tmp, cache if mode == "cached" else None)
                        row = dict(size_class=cls, largest_mm=largest, mode=mode, run=k, seconds=seconds,
                                   cpu_seconds=cpu, load_1min_before=load,
                                   error_mm=anchor_error(moving, matrix, truth), doubtful=summary.get("doubtful"),
                                   timings=summary.get("timings"))
                    except Exception as exc:  # noqa: BLE001 - recorded, never silently dropped
                        row = dict(size_class=cls, largest_mm=largest, mode=mode, run=k, load_1min_before=load,
                                   error=f"{type(exc).__name__}: {exc}"[:200])
                    rows.append(row)
                    log(json.dumps({k_: v for k_, v in row.items() if k_ != "timings"}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def summarise_timing(rows, runs: int, seed: int) -> str:
    table = []
    for mode in ("uncached", "cached"):
        for cls in ("medium", "tiny", "both"):
            rs = [r for r in rows if r["mode"] == mode and (cls == "both" or r["size_class"] == cls)]
            ok = [r for r in rs if "error" not in r]
            if not rs:
                continue
            size = "" if cls == "both" else f" ({rs[0]['largest_mm']:.0f} mm)"
            wall = [r["seconds"] for r in ok]
            cpu = [r["cpu_seconds"] for r in ok]
            load = [r["load_1min_before"] for r in rs]
            table.append([
                mode, f"{cls}{size}", f"{len(ok)} of {len(rs)}",
                f"{np.median(wall):.1f} ({min(wall):.1f}-{max(wall):.1f})" if wall else "–",
                f"{np.median(cpu):.1f} ({min(cpu):.1f}-{max(cpu):.1f})" if cpu else "–",
                f"{np.median(load):.1f} ({min(load):.1f}-{max(load):.1f})",
                f"{sum(r['error_mm'] < SUCCESS_MM for r in ok)} of {len(rs)}",
            ])
    header = ["mode", "case", "runs finished", "wall s, median (range)", "CPU s, median (range)",
              "1-min load before, median (range)", f"anchor error < {SUCCESS_MM:g} mm"]
    return "\n".join([
        "## TSPM whole-CLI time per case (`bench_partial_prereg.py --timing-only`)",
        "",
        f"The whole CLI as a user runs it (`python -m RegistrationSuiteLib partial-prereg ... --device cpu`), one "
        f"new process per run (process start and imports included), {runs} run(s) per case and mode: without "
        "the cache (`--no-cache`: the fixed → template alignment is computed every time, as for a new fixed "
        "image) and with that alignment in a fresh on-disk cache (filled by one untimed run first). Cases: one "
        f"tiny and one medium crop of the stroke T1 against its whole T2 (the main table's first T1 → T2 tiny and "
        f"medium cases, seed {seed}); runs alternate between the two cases. CPU time is the child process's own (user + system); "
        f"the load average is read just before each run, on a machine with {_cores()} cores. Issue 13's target: "
        "≤ 10 s median per case uncached.",
        "",
        markdown_table(header, table),
        "",
        f"Command: `python Testing/Benchmarks/bench_partial_prereg.py --timing-only {runs} --seed {seed} --write`",
    ])


def run_tspm_cli(fixed, moving):
    """The whole CLI as a user runs it: a new process per case, no cached fixed → template alignment."""
    matrix, seconds, cpu = _cli(fixed, moving)
    CLI_SECONDS.append((seconds, cpu))
    return matrix


def run_tspm_cli_cached(fixed, moving):
    """The whole CLI in a new process with the on-disk cache holding this fixed image's fixed → template
    alignment (an untimed first run stores it when the benchmark meets a fixed image for the first time)."""
    import tempfile

    global CACHE_DIR
    if CACHE_DIR is None:
        CACHE_DIR = tempfile.mkdtemp(prefix="bench_tspm_cache_")
    key = (fixed.GetSize(), fixed.GetOrigin(), float(np.asarray(sitk.GetArrayViewFromImage(fixed)).sum()))
    if key not in WARM:
        _cli(fixed, moving, CACHE_DIR)
        WARM.add(key)
    matrix, seconds, cpu = _cli(fixed, moving, CACHE_DIR)
    CLI_SECONDS.append((seconds, cpu))
    return matrix


CLI_SECONDS: list = []
CACHE_DIR = None
WARM: set = set()


def run_sitk(fixed, moving):
    """SimpleITK Mattes-MI rigid registration from geometric-centre initialisation (no overlap handling)."""
    return sitk_mattes_rigid(fixed, moving, sampling=0.05)


def run_elastix(fixed, moving):
    """elastix default rigid map (itk-elastix) with geometric-centre initialisation."""
    return elastix_rigid(fixed, moving, centre_init=True)


METHODS = {
    "centre init + refine": ("centre", run_centre),
    "moments init + refine": ("moments", run_moments),
    "global rigid search + refine": ("global", run_global),
    "TSPM (+ refine, MI)": ("tspm", run_tspm),
    "TSPM, previous search (5 + 2.5 mm for tiny crops, no widening)": ("tspm_prev", run_tspm_previous),
    "TSPM w/o local search (+ refine)": ("tspm_nolocal", run_tspm_nolocal),
    "TSPM alone (w/o local search and refinement)": ("tspm_noref", run_tspm_noref),
    "TSPM w/o RANSAC (+ refine)": ("tspm_noransac", run_tspm_noransac),
    "TSPM as in the paper (RANSAC + refine; no orientation prior, no local search)": ("tspm_noprior", run_tspm_noprior),
    "TSPM as in the paper, NMI refinement (the paper's metric)": ("tspm_paper_nmi", run_tspm_paper_nmi),
    "no network: TSPM's search from the centre seed (+ refine)": ("local_centre", run_local_centre),
    "no network: TSPM's search from scanner-orientation seeds (+ refine)": ("local_scanner", run_local_scanner),
    "TSPM whole CLI, new process, uncached": ("tspm_cli", run_tspm_cli),
    "TSPM whole CLI, new process, cached fixed → template": ("tspm_cli_cached", run_tspm_cli_cached),
    "elastix rigid (centred)": ("elastix", run_elastix),
    "SimpleITK Mattes MI (centred)": ("sitk", run_sitk),
}
for _km in (20, 25, 30, 40):
    METHODS[f"TSPM, first local search ±{_km} mm"] = (f"tspm_w{_km}", _window_rows(_km)[0])
    METHODS[f"no network: centre seed, first local search ±{_km} mm"] = (f"local_centre_w{_km}", _window_rows(_km)[1])
#: rows run only when ``--only`` names them (development of the first search's window, on seeds other than 0)
OPTIONAL_ROWS = {k for k, _ in METHODS.values() if k.startswith(("tspm_w", "local_centre_w"))}


# --------------------------------------------------------------------------------------------- running
def contrast_pairs(moving_contrasts, fixed_modalities):
    """(moving contrast, fixed modality) pairs: T1 crops against each fixed modality; T2 / FLAIR crops
    (per-contrast rows: the network was trained on T1 only) against the T1."""
    pairs = []
    for contrast in moving_contrasts:
        pairs += [(contrast, m) for m in fixed_modalities] if contrast == "T1" else [(contrast, "T1")]
    return pairs


def row_key(row: dict) -> tuple:
    """What identifies a row across runs: method, case (contrast, modality, class, index), seed, model and the
    cases' rotation range (rows written before ``--rotation-deg`` existed: ±15°)."""
    return (row["method"], row["moving_contrast"], row["modality"], row["size_class"], int(row["case"]),
            int(row.get("seed", 0)), row.get("model") or "", float(row.get("rotation_deg", ROTATION_DEG)))


def read_rows(path) -> list:
    """Rows of a ``.jsonl`` file (one JSON object per line; a cut-off last line is ignored) or a ``.json`` list."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a run killed while writing: that row is run again
            continue
    return rows


def run_all(cases_per_class: int, seed: int, skip, log, modalities=FIXED_MODALITIES, classes=tuple(CLASSES),
            moving_contrasts=("T1",), rows_path=None, done=(), rotation_deg=ROTATION_DEG) -> list:
    """Every selected (pair, class, case, method) row. Each finished row is appended to ``rows_path`` (JSONL) at
    once; rows whose :func:`row_key` is in ``done`` are not run again (``--resume``)."""
    data = require_shared_data("brain", "stroke")
    rows = []
    done = set(done)
    for contrast, modality in contrast_pairs(moving_contrasts, modalities):
        source = sitk.ReadImage(str(data / f"{contrast}.nii.gz"), sitk.sitkFloat32)
        fixed = sitk.ReadImage(str(data / f"{modality}.nii.gz"), sitk.sitkFloat32)
        for cls in classes:
            for k in range(cases_per_class):
                info = dict(modality=modality, size_class=cls, moving_contrast=contrast, case=k, seed=seed,
                            rotation_deg=float(rotation_deg))
                todo = [(name, fn) for name, (key, fn) in METHODS.items()
                        if key not in skip and row_key(dict(info, method=name, model=row_model(key))) not in done]
                if not todo:
                    continue
                moving, truth, largest = make_case(source, fixed, cls, case_rng(seed, contrast, modality, cls, k),
                                                   rotation_deg)
                for name, fn in todo:
                    rows.append(_one(name, fn, fixed, moving, truth,
                                     dict(info, model=row_model(METHODS[name][0]), largest_mm=largest)))
                    log(json.dumps({k_: v for k_, v in rows[-1].items() if k_ not in ("diagnostics", "timings")}))
                    if rows_path is not None:  # at once: a run stopped early resumes from here
                        with open(rows_path, "a") as fh:
                            fh.write(json.dumps(rows[-1], default=str) + "\n")
    return rows


def _one(name, fn, fixed, moving, truth, info) -> dict:
    t0 = time.perf_counter()
    c0 = time.process_time()
    extra = {}
    try:
        out = fn(fixed, moving)
        if isinstance(out, tuple):
            out, res = out
            extra = {"inlier_ratio": (res.diagnostics.get("ransac") or {}).get("inlier_ratio"),
                     "network_skipped": "network_skipped" in res.diagnostics, "confidence": res.confidence,
                     "fixed_to_template_cached": res.diagnostics.get("fixed_to_template", {}).get("cached"),
                     "fallback": bool(res.diagnostics.get("fallback", {}).get("used")),
                     "doubtful": res.diagnostics.get("doubtful", []), "timings": res.timings,
                     "moving_inside_fixed": res.diagnostics.get("moving_inside_fixed"),
                     "refine_shift_mm": res.diagnostics.get("refinement", {}).get("mean_corner_shift_mm"),
                     "ngf_similarity": [c.get("ngf_similarity") for c in
                                        res.diagnostics.get("local_search", {}).get("candidates", {}).values()],
                     "widening": _widening(res.diagnostics, moving, truth),
                     "seed_errors": _seed_errors(res.diagnostics, moving, truth)}
        if fn in (run_tspm_cli, run_tspm_cli_cached):
            extra = {"cli_seconds": CLI_SECONDS[-1][0], "cli_cpu_seconds": CLI_SECONDS[-1][1]}
        err = anchor_error(moving, out, truth)
        extra["truth_rotation_deg"] = rotation_angle_deg(truth[:3, :3])  # from the scanner orientation
    except Exception as exc:  # noqa: BLE001 - a crashing peer is a failed case, not a failed benchmark
        err, extra = float("inf"), {"error": f"{type(exc).__name__}: {exc}"[:200]}
    cpu = time.process_time() - c0 + extra.get("cli_cpu_seconds", 0.0)  # in-process threads + the CLI child
    return dict(info, method=name, error_mm=err, seconds=time.perf_counter() - t0, cpu_seconds=cpu,
                load_1min=_load(), **extra)


def rotation_angle_deg(r: np.ndarray) -> float:
    """Angle (degrees) of the rotation part of ``r`` (its nearest rotation: a scaled one counts as its rotation)."""
    u, _, vt = np.linalg.svd(np.asarray(r, float)[:3, :3])
    return float(np.degrees(np.arccos(np.clip((np.trace(u @ vt) - 1.0) / 2.0, -1.0, 1.0))))


def _seed_errors(diag: dict, moving, truth):
    """The network's candidates as local-search seeds (fixed → moving = moving → template⁻¹ · template → fixed⁻¹):
    rotation error (degrees) and anchor error (mm) of each from the truth; ``None`` without them."""
    cands, t_tf = diag.get("moving_to_template"), diag.get("fixed_to_template", {}).get("template_to_fixed")
    if not cands or t_tf is None:
        return None
    out = {}
    for name, a_mov in cands.items():
        seed = np.linalg.inv(np.asarray(a_mov, float)) @ np.linalg.inv(np.asarray(t_tf, float))
        out[name] = {"rotation_error_deg": rotation_angle_deg(seed[:3, :3].T @ truth[:3, :3]),
                     "error_mm": anchor_error(moving, seed, truth)}
    return out


def _widening(diag: dict, moving, truth):
    """What the widening after a poor match did (``None`` when it did not run): which search was kept, both
    searches' best normalised NGF similarity and the anchor error of both starts (before the refinement)."""
    wide = diag.get("local_search_widened")
    if not wide:
        return None
    best = {k: next(iter(wide[k]["candidates"].values()))["ngf_similarity"] for k in ("first", "widened")}
    return {"kept": wide["kept"], "first_ngf": best["first"], "widened_ngf": best["widened"],
            "first_error_mm": anchor_error(moving, np.asarray(wide["first_fixed_to_moving"]), truth),
            "widened_error_mm": anchor_error(moving, np.asarray(wide["widened_fixed_to_moving"]), truth)}


def summarise(rows, args) -> str:
    names = [n for n in METHODS if any(r["method"] == n for r in rows)]
    header = ["method"] + [f"{c} success" for c in CLASSES] + ["overall success", "median error (mm)",
                                                              "mean time / case (s)"]
    table = []
    for n in names:
        rs = [r for r in rows if r["method"] == n]
        cells = [n]
        for c in CLASSES:
            cr = [r for r in rs if r["size_class"] == c]
            cells.append(f"{np.mean([r['error_mm'] < SUCCESS_MM for r in cr]):.0%} ({len(cr)})" if cr else "–")
        errs = np.array([r["error_mm"] for r in rs])
        cells += [f"{np.mean(errs < SUCCESS_MM):.0%} ({len(rs)})", f"{np.median(errs):.2f}",
                  f"{np.mean([r['seconds'] for r in rs]):.1f}"]
        table.append(cells)
    return _report(rows, args, markdown_table(header, table) + _contrast_table(rows))


def _contrast_table(rows) -> str:
    """Success per moving contrast (rows: methods; only when more than one contrast ran)."""
    contrasts = sorted({r.get("moving_contrast", "T1") for r in rows})
    if len(contrasts) < 2:
        return ""
    names = [n for n in METHODS if any(r["method"] == n for r in rows)]
    table = []
    for n in names:
        cells = [n]
        for c in contrasts:
            rs = [r for r in rows if r["method"] == n and r.get("moving_contrast", "T1") == c]
            cells.append(f"{np.mean([r['error_mm'] < SUCCESS_MM for r in rs]):.0%} ({len(rs)}), "
                         f"{np.median([r['error_mm'] for r in rs]):.1f} mm" if rs else "–")
        table.append(cells)
    header = ["method"] + [f"moving {c} ({'vs T2/FLAIR' if c == 'T1' else 'vs T1'})" for c in contrasts]
    return ("\n\nSuccess and median anchor error per moving contrast (the model's training contrasts: see its "
            f"card, {model_training_note()}):\n\n" + markdown_table(header, table))


def _report(rows, args, table) -> str:
    tspm = [r for r in rows if r["method"] == "TSPM (+ refine, MI)" and "timings" in r]
    cached = [r["seconds"] for r in tspm if r.get("fixed_to_template_cached")]
    first = [r["timings"].get("fixed_to_template", 0.0) for r in tspm if r.get("fixed_to_template_cached") is False]
    doubtful = sum(1 for r in tspm if r.get("doubtful"))
    failed_flagged = sum(1 for r in tspm if r.get("doubtful") and r["error_mm"] >= SUCCESS_MM)
    failed = sum(1 for r in tspm if r["error_mm"] >= SUCCESS_MM)
    crashed = {}
    for r in rows:
        if r.get("error"):
            crashed[r["method"]] = crashed.get(r["method"], 0) + 1
    crash_text = "".join(f" {name} stopped with an error on {n} of {sum(1 for r in rows if r['method'] == name)} "
                         "cases (counted as failures; see output/partial_prereg.json)." for name, n in crashed.items())
    alone = [r for r in rows if r["method"] == "TSPM alone (w/o local search and refinement)"]
    alone_text = (f"\"TSPM alone\" (network + RANSAC) places {np.mean([r['error_mm'] < SUCCESS_MM for r in alone]):.0%} "
                  f"of its {len(alone)} cases within {SUCCESS_MM:g} mm (median anchor error "
                  f"{np.median([r['error_mm'] for r in alone]):.1f} mm); " if alone else "")
    notes = [
        "",
        f"Notes. The TSPM model used ({model_name()}) is CPU-trained ({model_validation_note()}, from its model "
        f"card). {alone_text}the pipeline's "
        "accuracy comes from TSPM's rough position + the local CSNGF search of its neighbourhood (our addition, "
        "compare \"w/o local search\") + the overlap-restricted refinement. "
        + TUNING_NOTE + " Cases are seeded and identical across methods; SimpleITK's multi-threaded MI is "
        "not bit-reproducible, so a borderline case can flip between runs.",
    ] if args.section == "partial_prereg" else [
        "",
        "Notes. A subset run of selected rows beside the full table (same script), with the "
        + (f"TSPM model file {model_id()} and the " if any(row_model(k) for _, (k, _) in METHODS.items()
                                                            if k not in set(args.skip)) else "")
        + "current code: the full table above may predate later changes (see its command and BENCHMARKS history). "
        "Rows not run here: "
        f"{', '.join(n for n, (k, _) in METHODS.items() if k in set(args.skip) - OPTIONAL_ROWS) or 'none'}; "
        f"size classes not run: {', '.join(c for c in CLASSES if c not in args.classes) or 'none'}. "
        + TUNING_NOTE + " A handful of cases is far too few to rank methods, it shows what the rows measure. "
        "Timings are wall "
        "clock on a machine shared with other jobs (see the load figures); the CLI rows' CPU time is the "
        "child process's own.",
    ]
    lines = [
        "## TSPM partial-volume preregistration (`bench_partial_prereg.py`)"
        + ("" if args.section == "partial_prereg" else f" — {args.section}"),
        "",
        f"Pairs (moving crop → fixed, stroke subject, 1 mm, never trained on): "
        f"{', '.join(f'{m} → {f}' for m, f in contrast_pairs(args.moving, args.fixed))}; "
        f"size classes {', '.join(args.classes)}; "
        f"{args.cases_per_class} case(s) per size class and pair, rotated ±{args.rotation_deg:g}° per axis"
        + ("" if args.rotation_deg == ROTATION_DEG else
           f" (a stress test: the network was trained with rotations within ±15°, the local search covers ±20° "
           f"around its seeds)") + ", centre up to 100 mm "
        f"from the fixed centre. Success: anchor error (5×5×5 grid over the moving image) < {SUCCESS_MM:g} mm. "
        f"Seed {args.seed}"
        + ("" if args.seed == 0 else " (development cases: the benchmark's own are seed 0)")
        + "; 2 shared CPU cores (timings include contention from other jobs).",
        "",
        table,
        "",
        (_in_process_sentence(cached, first) if tspm else "")
        + _cli_sentence(rows)
        + _load_sentence(rows)
        + (f"TSPM flagged {doubtful} result(s) as doubtful; {failed_flagged} of its {failed} failure(s) were flagged. "
           if tspm else "")
        + _cost_sentence(rows, args)
        + _widening_sentence(rows)
        + crash_text,
        "",
        f"Command: `python Testing/Benchmarks/bench_partial_prereg.py --cases-per-class {args.cases_per_class} "
        f"--seed {args.seed}"
        f"{' --only ' + ' '.join(args.only) if args.only else (' --skip ' + ' '.join(args.skip) if args.skip else '')}"
        f"{' --fixed ' + ' '.join(args.fixed) if tuple(args.fixed) != FIXED_MODALITIES else ''}"
        f"{' --classes ' + ' '.join(args.classes) if tuple(args.classes) != tuple(CLASSES) else ''}"
        f"{' --moving ' + ' '.join(args.moving) if tuple(args.moving) != ('T1',) else ''}"
        f"{' --model ' + args.model if args.model else ''}"
        f"{f' --rotation-deg {args.rotation_deg:g}' if args.rotation_deg != ROTATION_DEG else ''}"
        f"{' --section ' + args.section if args.section != 'partial_prereg' else ''} --write`"
        + (f" (these rows were summarised with `--from-json {Path(args.from_json).name}`: the rows of earlier, "
           "resumed invocations of this command, cases possibly split across processes by size class; each row "
           "was measured once and the load figures above cover all of them)" if getattr(args, "from_json", None)
           else ""),
        *notes,
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases-per-class", type=int, default=5, help="cases per size class and fixed modality")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", nargs="*", default=[], choices=[k for k, _ in METHODS.values()])
    ap.add_argument("--only", nargs="*", choices=[k for k, _ in METHODS.values()],
                    help="run only these rows (the others are skipped)")
    ap.add_argument("--rows", help="JSONL file the finished rows are appended to, one per line, as they finish "
                                   "(default output/partial_prereg_rows.jsonl)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows already in --rows and run only the missing ones (same seed and model; "
                         "any split of pairs, classes and rows across invocations adds up to the same table)")
    ap.add_argument("--fixed", nargs="*", default=list(FIXED_MODALITIES), choices=FIXED_MODALITIES)
    ap.add_argument("--classes", nargs="*", default=list(CLASSES), choices=list(CLASSES))
    ap.add_argument("--moving", nargs="*", default=["T1"], choices=["T1", "T2", "FLAIR"],
                    help="contrasts of the moving crops (T1: against T2/FLAIR; T2, FLAIR: against T1)")
    ap.add_argument("--model", help="TSPM model (name or .pt; default: the shipped one)")
    ap.add_argument("--rotation-deg", type=float, default=ROTATION_DEG,
                    help=f"rotate the moving crops uniformly within ± this per axis (default {ROTATION_DEG:g}, the "
                         "table's; another value is a stress test beyond the network's ±15° training rotations and "
                         "writes its own section, partial_prereg-rotation<N> unless --section is given)")
    ap.add_argument("--write", action="store_true", help="update the section in BENCHMARKS.md")
    ap.add_argument("--from-json", help="summarise the rows saved by earlier runs (.jsonl of --rows, or "
                                        "output/partial_prereg.json) without running anything; the selection "
                                        "arguments pick the rows summarised")
    ap.add_argument("--section", default="partial_prereg",
                    help="BENCHMARKS.md section to write (a small run of a few rows can go beside the full table)")
    ap.add_argument("--timing-only", type=int, metavar="N",
                    help="only time the whole CLI on a quiet machine: N fresh processes uncached and N cached on "
                         "one medium and one tiny case (writes its own section, " + TIMING_SECTION + ")")
    args = ap.parse_args(argv)
    if not 0 <= args.rotation_deg <= 180:
        ap.error(f"--rotation-deg: expected an angle in [0, 180], got {args.rotation_deg:g}")
    if args.rotation_deg != ROTATION_DEG and args.section == "partial_prereg":
        args.section = f"partial_prereg-rotation{args.rotation_deg:g}"  # never overwrite the main table
    out_dir = REPO / "Testing" / "Benchmarks" / "output"
    out_dir.mkdir(parents=True, exist_ok=True)
    global MODEL
    if args.model:
        MODEL = args.model
    args.skip = skipped_rows(args.only, args.skip)
    if args.timing_only is not None:
        if args.timing_only < 1:
            ap.error("--timing-only: expected at least 1 run")
        rows = (json.loads(Path(args.from_json).read_text()) if args.from_json else
                run_timing(args.timing_only, args.seed, lambda s: print(s, flush=True)))
        if not args.from_json:
            (out_dir / "partial_prereg_timing.json").write_text(json.dumps(rows, indent=1, default=str))
        body = summarise_timing(rows, args.timing_only, args.seed)
        print(body)
        if args.write:
            update_benchmarks_md(TIMING_SECTION, body)
        return 0
    if not args.from_json:
        # A fresh on-disk cache for the in-process rows: the first TSPM row per fixed image then measures the
        # uncached fixed → template step (a user cache warmed by earlier runs would hide it).
        import os
        import tempfile

        from RegistrationSuiteLib.cache import ENV

        os.environ[ENV] = tempfile.mkdtemp(prefix="bench_tspm_inprocess_cache_")
    if args.from_json:  # summarise the rows of earlier runs (same arguments) without running again
        rows = select_rows(read_rows(args.from_json), args, model_id())
    else:
        rows_path = Path(args.rows) if args.rows else out_dir / "partial_prereg_rows.jsonl"
        previous = select_rows(read_rows(rows_path), args, model_id()) if args.resume else []
        if not args.resume:
            rows_path.write_text("")
        print(f"rows → {rows_path}" + (f" ({len(previous)} already there)" if args.resume else ""), flush=True)
        rows = previous + run_all(args.cases_per_class, args.seed, set(args.skip), lambda s: print(s, flush=True),
                                  tuple(args.fixed), tuple(args.classes), tuple(args.moving), rows_path=rows_path,
                                  done={row_key(r) for r in previous}, rotation_deg=args.rotation_deg)
        (out_dir / "partial_prereg.json").write_text(json.dumps(rows, indent=1, default=str))
    body = summarise(rows, args)
    print(body)
    if args.write:
        update_benchmarks_md(args.section, body)
    return 0


def skipped_rows(only, skip) -> list:
    """Row keys not run: all but ``only`` when given, else ``skip`` and the optional rows (:data:`OPTIONAL_ROWS`,
    run only when ``--only`` names them)."""
    if only is not None:
        return sorted({k for k, _ in METHODS.values()} - set(only))
    return sorted(set(skip) | OPTIONAL_ROWS)


def row_model(key: str, model: str = None) -> str:
    """The model a row depends on: :func:`model_id` (or ``model``) for the rows that run the TSPM network, "" for
    the rest (peers, the network-free search), which a new model leaves valid."""
    return (model_id() if model is None else model) if key in NETWORK_ROWS else ""


NETWORK_ROWS = {"tspm", "tspm_prev", "tspm_nolocal", "tspm_noref", "tspm_noransac", "tspm_noprior", "tspm_paper_nmi",
                "tspm_cli", "tspm_cli_cached", "tspm_w20", "tspm_w25", "tspm_w30", "tspm_w40"}


def select_rows(rows, args, model="") -> list:
    """The rows this invocation's arguments select (seed, ``model`` = :func:`model_id` for the network rows, rows,
    pairs, classes, case count); rows of older files without a seed or model count as this run's."""
    keys = {n: k for n, (k, _) in METHODS.items()}
    pairs = set(contrast_pairs(args.moving, args.fixed))
    names = {n for n, (k, _) in METHODS.items() if k not in set(args.skip)}
    return [r for r in rows
            if int(r.get("seed", args.seed)) == args.seed and r["method"] in keys
            and float(r.get("rotation_deg", ROTATION_DEG)) == float(getattr(args, "rotation_deg", ROTATION_DEG))
            and r.get("model", row_model(keys[r["method"]], model)) == row_model(keys[r["method"]], model)
            and r["method"] in names and (r.get("moving_contrast", "T1"), r["modality"]) in pairs
            and r["size_class"] in args.classes and int(r["case"]) < args.cases_per_class]


def _widening_sentence(rows) -> str:
    """Per row that recorded it: how often the widening after a poor match ran, how often its search was kept, and
    how often it swapped a start within 5 mm of the truth (before the refinement) for one farther away."""
    parts = []
    for n in METHODS:
        rs = [r for r in rows if r["method"] == n and "widening" in r and r.get("ngf_similarity")]  # searched
        if not rs:
            continue
        wide = [r["widening"] for r in rs if r["widening"]]
        kept = [w for w in wide if w["kept"] == "widened"]
        bad = [w for w in kept if w["first_error_mm"] < 5.0 <= w["widened_error_mm"]]
        parts.append(f"{n} {len(wide)} of {len(rs)} (widened search kept {len(kept)}, a start within 5 mm swapped "
                     f"for a worse one {len(bad)})")
    return ("Widening after a poor match ran on: " + "; ".join(parts) + ". ") if parts else ""


def _cost_sentence(rows, args) -> str:
    """CPU time of one case per row (mean over its cases) and what the whole table would cost."""
    names = [n for n in METHODS if any(r["method"] == n and "cpu_seconds" in r for r in rows)]
    if not names:
        return ""
    per = {n: float(np.mean([r["cpu_seconds"] for r in rows if r["method"] == n and "cpu_seconds" in r]))
           for n in names}
    case = sum(per.values())
    n_cases = len(contrast_pairs(args.moving, args.fixed)) * len(args.classes) * args.cases_per_class
    return ("CPU time per case (mean over its cases, process + CLI child): "
            + ", ".join(f"{n} {v:.1f} s" for n, v in per.items())
            + f"; one case through these {len(names)} rows: {case:.0f} CPU s, so these rows on all {n_cases} cases of "
            f"this selection: about {case * n_cases / 60:.0f} CPU minutes. ")


TUNING_NOTE = ("The thresholds of the \"doubtful\" flags were chosen on 20 tiny crops drawn with seed 7, the "
               "tiny-crop search levels (2.5 mm below 70 mm) and the widening after a poor match on 24 tiny crops "
               "drawn with seeds 11 and 12 (diagnose_tspm_pipeline.py), not on these cases. Cases are drawn per "
               "(seed, pair, size class, index) since the resumable version of this script, so they differ from "
               "the cases of tables written before it.")


def _in_process_sentence(cached, first) -> str:
    """What the in-process TSPM row measured: time per case with the fixed → template alignment cached, and
    the uncached fixed → template step, or a plain statement that it was not measured (never a "nan")."""
    out = ""
    if cached:
        out += (f"In-process TSPM time per case with the fixed → template alignment cached (same fixed image): "
                f"{np.mean(cached):.1f} s mean over {len(cached)} case(s). ")
    if first:
        out += (f"The uncached fixed → template step (once per fixed image, in-process) took {np.mean(first):.1f} s "
                f"mean over {len(first)} fixed image(s). ")
    else:
        out += ("No uncached in-process fixed → template step was measured in this run (every in-process TSPM row "
                "found the alignment cached); the uncached whole-CLI figures include it. ")
    return out


def _cli_sentence(rows) -> str:
    out = ""
    for name, how in (("TSPM whole CLI, new process, uncached", "without the cache (--no-cache)"),
                      ("TSPM whole CLI, new process, cached fixed → template",
                       "with this fixed image's fixed → template alignment in the on-disk cache")):
        cli = [r for r in rows if r["method"] == name and "error" not in r]
        if not cli:
            continue
        exact = all("cli_seconds" in r for r in cli)
        secs = [r["cli_seconds"] if exact else r["seconds"] for r in cli]
        cpu = [r["cli_cpu_seconds"] for r in cli if "cli_cpu_seconds" in r]
        out += (f"The whole CLI, one new process per case {how}, took {np.median(secs):.1f} s median wall clock "
                f"({min(secs):.1f}-{max(secs):.1f} s, {len(secs)} cases, process start included"
                f"{'' if exact else ', and writing its two input files'})"
                + (f" and {np.median(cpu):.1f} s median CPU time ({min(cpu):.1f}-{max(cpu):.1f} s)" if cpu else "")
                + ". ")
    return out


def _load_sentence(rows) -> str:
    loads = [r["load_1min"] for r in rows if "load_1min" in r]
    if not loads:
        return "(The machine's load was not recorded in this run's rows.) "
    return (f"1-minute load average after each case: {np.median(loads):.1f} median ({min(loads):.1f}-"
            f"{max(loads):.1f}) on {_cores()} cores. ")


def _load() -> float:
    import os

    return os.getloadavg()[0]


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _model_card() -> dict:
    from RegistrationSuiteLib.methods.partial_prereg.network import DEFAULT_MODEL
    from RegistrationSuiteLib.models.model_file import load_model
    from RegistrationSuiteLib.models.registry import resolve_model

    return load_model(resolve_model(MODEL or DEFAULT_MODEL)).card


def model_id() -> str:
    """The TSPM model's name and the first 12 hex digits of its file's SHA-256: rows of another model (a
    retrained default keeps its name) are never mixed into a resumed table."""
    import hashlib

    from RegistrationSuiteLib.methods.partial_prereg.network import DEFAULT_MODEL
    from RegistrationSuiteLib.models.registry import resolve_model

    path = Path(resolve_model(MODEL or DEFAULT_MODEL))
    return f"{path.stem}@{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


def model_name() -> str:
    return str(_model_card().get("name"))


def model_validation_note() -> str:
    """The model's median validation patch error per validation volume, as its card records it."""
    validation = _model_card()["metrics"]["validation"]
    return "median patch position error " + ", ".join(f"{v['median_mm']:.0f} mm on {k}" for k, v in validation.items())


def model_training_note() -> str:
    card = _model_card()
    synthetic = card.get("synthetic_contrasts")
    names = [d["name"] for d in card.get("training_data", []) if d.get("split") == "train"]
    return (f"trained on {len(names)} scans ({', '.join(names)})"
            + (f" and synthetic contrasts for {synthetic['fraction_of_crops']:.0%} of its crops" if synthetic else
               ", no synthetic contrasts"))


if __name__ == "__main__":
    raise SystemExit(main())

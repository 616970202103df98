#!/usr/bin/env python
"""Why does TSPM's pipeline fail on a case? Development diagnosis on crops drawn with a seed other than the
benchmark's (``bench_partial_prereg.py`` uses ``--seed 0``; use e.g. 11 or 12 here, never 0, so that what is
tuned from this output is not tuned on the benchmark's cases).

For every case (same case generator as the benchmark) it records, as one JSON line in
``output/diagnose_tspm_pipeline_seed<S>.jsonl``:

- the result's anchor error and the chosen candidate's normalised NGF similarity (the pipeline's own);
- every seed of the local search (network / RANSAC candidate, orientation prior, scanner seeds, ...) with its
  anchor error from the truth: was any seed within the search's window of the truth?
- every candidate the local search kept (normalised NGF similarity and anchor error);
- the normalised NGF similarity at the truth (a short local search seeded with the true transform) and Mattes MI
  over the overlap at the truth and at the result: if the truth scores *higher*, the search missed it (seeds,
  window, steps); if *lower*, the metric is ambiguous on that crop.

Usage::

    python Testing/Benchmarks/diagnose_tspm_pipeline.py --seed 11 --classes tiny --cases-per-class 3
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
from bench_partial_prereg import CLASSES, FIXED_MODALITIES, anchor_error, contrast_pairs, make_case  # noqa: E402
from common import REPO, require_shared_data  # noqa: E402


def diagnose_case(fixed, moving, truth, config_kw=None) -> dict:
    from RegistrationSuiteLib.methods.global_rigid import local as local_module
    from RegistrationSuiteLib.methods.partial_prereg import PartialPreregConfig, register_partial_prereg
    from RegistrationSuiteLib.methods.partial_prereg.refine import evaluate_metric

    searches = []
    original = local_module.local_rigid_search

    def spy(fixed_, moving_, seeds, **kw):
        res = original(fixed_, moving_, seeds, **kw)
        searches.append({"seeds": [np.asarray(s) for s in seeds], "result": res, "window_mm": kw.get("window_mm")})
        return res

    local_module.local_rigid_search = spy
    try:
        t0 = time.process_time()
        res = register_partial_prereg(fixed, moving, PartialPreregConfig(device="cpu", **(config_kw or {})))
        cpu = time.process_time() - t0
    finally:
        local_module.local_rigid_search = original
    diag = res.diagnostics
    out = {"error_mm": anchor_error(moving, res.fixed_to_moving_matrix, truth), "cpu_s": cpu,
           "doubtful": diag.get("doubtful"), "network_skipped": diag.get("network_skipped"),
           "fallback": diag.get("fallback", {}).get("chosen"), "confidence": res.confidence,
           "chosen": diag.get("initialisation", {}).get("chosen"),
           "ransac_inlier_ratio": (diag.get("ransac") or {}).get("inlier_ratio")}
    out["searches"] = []
    for s in searches:
        names = list(diag.get("local_search", {}).get("seeds", {})) if len(s["seeds"]) == len(
            diag.get("local_search", {}).get("seeds", {})) else [str(i) for i in range(len(s["seeds"]))]
        r = s["result"]
        out["searches"].append({
            "window_mm": s["window_mm"],
            "seeds": [{"name": n, "error_mm": round(anchor_error(moving, m, truth), 1), "csngf": round(sc, 3)}
                      for n, m, sc in zip(names, s["seeds"], r.diagnostics["seed_scores"])],
            "candidates": [{"seed": c["seed"], "ngf": round(c["score"], 3),
                            "error_mm": round(anchor_error(moving, np.asarray(c["fixed_to_moving"]), truth), 1)}
                           for c in r.diagnostics["candidates"]],
            "first_level": r.diagnostics.get("first_level")})
    # the truth's own normalised NGF similarity (a short local search from the truth, same levels/refinement)
    at_truth = original(fixed, moving, [truth], window_mm=5.0, perturbation_deg=2.0, rotations_per_seed=5, keep=1,
                        refine_iterations=10, seed=0, device="cpu")
    cand = at_truth.diagnostics["candidates"][0]
    out["truth_ngf"] = round(cand["score"], 3)
    out["truth_search_error_mm"] = round(anchor_error(moving, np.asarray(cand["fixed_to_moving"]), truth), 2)
    out["mi_truth"] = evaluate_metric(fixed, moving, truth, "mi")
    out["mi_result"] = evaluate_metric(fixed, moving, res.fixed_to_moving_matrix, "mi")
    out["result_ngf"] = (list(diag.get("local_search", {}).get("candidates", {}).values()) or [{}])[0].get(
        "ngf_similarity")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, required=True, help="case seed (not the benchmark's 0)")
    ap.add_argument("--classes", nargs="*", default=["tiny"], choices=list(CLASSES))
    ap.add_argument("--cases-per-class", type=int, default=2)
    ap.add_argument("--moving", nargs="*", default=["T1", "T2", "FLAIR"], choices=["T1", "T2", "FLAIR"])
    ap.add_argument("--fixed", nargs="*", default=list(FIXED_MODALITIES), choices=FIXED_MODALITIES)
    ap.add_argument("--config", default="{}", help="JSON of PartialPreregConfig overrides")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    if args.seed == 0:
        ap.error("--seed 0 draws the benchmark's cases: use another seed for diagnosis")
    data = require_shared_data("brain", "stroke")
    out_path = REPO / "Testing" / "Benchmarks" / "output" / f"diagnose_tspm_pipeline_seed{args.seed}{args.tag}.jsonl"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    with out_path.open("w") as fh:
        for contrast, modality in contrast_pairs(args.moving, args.fixed):
            source = sitk.ReadImage(str(data / f"{contrast}.nii.gz"), sitk.sitkFloat32)
            fixed = sitk.ReadImage(str(data / f"{modality}.nii.gz"), sitk.sitkFloat32)
            for cls in args.classes:
                for k in range(args.cases_per_class):
                    moving, truth, largest = make_case(source, fixed, cls, rng)
                    row = dict(moving_contrast=contrast, modality=modality, size_class=cls, case=k,
                               largest_mm=round(largest, 1), size=list(moving.GetSize()))
                    try:
                        row.update(diagnose_case(fixed, moving, truth, json.loads(args.config)))
                    except Exception as exc:  # noqa: BLE001 - recorded
                        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                    fh.write(json.dumps(row, default=str) + "\n")
                    fh.flush()
                    print(json.dumps({k_: row.get(k_) for k_ in ("moving_contrast", "modality", "size_class",
                                                                    "largest_mm", "error_mm", "truth_ngf",
                                                                    "result_ngf", "mi_truth", "mi_result",
                                                                    "cpu_s", "error")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

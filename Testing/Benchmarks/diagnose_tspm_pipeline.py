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

With ``--alignment`` it instead measures the pipeline's fixed → template alignment (``_fixed_to_template`` of
``register.py``, uncached) against the reference alignments of the TSPM training set
(``prepare_tspm_training.py``: global search + full Mattes-MI refinement; the network's training targets), on the
training volumes only (``--include-stroke`` adds the benchmark's subject: a held-out check, run once).
Distances are over the template's brain region (template points mapped into the volume by both alignments):
mean and max, against the (rigid) reference and against its similarity counterpart (a similarity MI refinement
started from it, whose isotropic scale says how far any rigid alignment can be right). Rows go to ``output/diagnose_tspm_alignment<tag>.jsonl``.

With ``--patches`` (development seeds only) it records per crop the network's median patch error against the
template positions implied by the true transform and the pipeline's own fixed → template alignment, the scale of
a similarity fit of the predictions to those positions (< 1: contracted), and "TSPM alone"'s anchor error
(``output/diagnose_tspm_patches_seed<S><tag>.jsonl``; ``--save-points`` keeps each crop's points as ``.npz``).

Usage::

    python Testing/Benchmarks/diagnose_tspm_pipeline.py --seed 11 --classes tiny --cases-per-class 3
    python Testing/Benchmarks/diagnose_tspm_pipeline.py --alignment [--include-stroke]
    python Testing/Benchmarks/diagnose_tspm_pipeline.py --patches --seed 11 --classes tiny small medium large \
        --cases-per-class 3 --moving T1 T2 FLAIR [--save-points]
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


def brain_points(template, stride: int = 3) -> np.ndarray:
    """Physical points (template LPS mm) of every ``stride``-th voxel of the template's brain region."""
    from RegistrationSuiteLib.geometry import apply_affine

    mask = template.foreground_mask()  # held: a view of a temporary image would outlive its buffer
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask)[::stride, ::stride, ::stride])
    return apply_affine(template.canvas_to_physical(), idx[:, ::-1] * float(stride))


def alignment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict:
    """Mean / max distance (mm) between two template → image matrices over ``points``."""
    from RegistrationSuiteLib.geometry import apply_affine

    d = np.linalg.norm(apply_affine(a, points) - apply_affine(b, points), axis=1)
    return {"mean_mm": round(float(d.mean()), 2), "max_mm": round(float(d.max()), 2)}


def reference_alignment(template, image, name, start, cache_dir: Path, reference_dir=None) -> np.ndarray:
    """template → image matrix of ``prepare_tspm_training.py`` (read from ``reference_dir`` when it holds the
    file, else computed with the same code and seed and kept in ``cache_dir``)."""
    from prepare_tspm_training import align
    from RegistrationSuiteLib.geometry import affine_matrix_from_sitk

    if reference_dir is not None and (Path(reference_dir) / f"{name}_template_to_image.tfm").is_file():
        return affine_matrix_from_sitk(sitk.ReadTransform(str(Path(reference_dir) / f"{name}_template_to_image.tfm")))
    path = cache_dir / f"{name}_template_to_image.npy"
    if path.is_file():
        return np.load(path)
    matrix, _ = align(template, image, start, 0)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, matrix)
    return matrix


#: variants of the fixed → template step measured by ``--alignment``: name → PartialPreregConfig overrides
ALIGNMENT_VARIANTS = {
    "default (local search follows: no refinement)": {},
    "local search off, rigid MI refinement (before)": {"local_search": False, "fixed_to_template_scale": False},
    "local search off, similarity MI refinement": {"local_search": False},
}


def alignment_main(args) -> int:
    from prepare_tspm_training import VOLUMES
    from RegistrationSuiteLib.methods.partial_prereg import PartialPreregConfig
    from RegistrationSuiteLib.methods.partial_prereg import register as register_module
    from RegistrationSuiteLib.methods.partial_prereg.refine import LEVELS, refine_similarity
    from RegistrationSuiteLib.methods.partial_prereg.template import load_template
    from RegistrationSuiteLib.progress import as_progress

    data = require_shared_data("brain")
    out_dir = REPO / "Testing" / "Benchmarks" / "output"
    out_path = out_dir / f"diagnose_tspm_alignment{args.tag}.jsonl"
    template = load_template()
    points = brain_points(template)
    volumes = [(n, rel, start) for n, rel, start, _lic, split in VOLUMES
               if (split == "train" or args.include_stroke) and not start.startswith("same:")]
    volumes += [(n, rel, start[5:]) for n, rel, start, _lic, split in VOLUMES
                if args.include_stroke and start.startswith("same:")]
    if args.volumes:
        volumes = [v for v in volumes if v[0] in args.volumes]
    refs = {}
    with out_path.open("w") as fh:
        for name, rel, start in volumes:
            image = sitk.ReadImage(str(data.parent / rel), sitk.sitkFloat32)
            if start in refs:  # co-registered with an earlier volume: same reference
                ref = refs[start]
            else:
                ref = reference_alignment(template, image, name, start, out_dir / "tspm_reference_alignments",
                                          args.reference_dir)
            refs[name] = ref
            # the reference's similarity counterpart: a similarity MI refinement from it (3 levels, 200 iterations)
            ref_sim, ref_scale = refine_similarity(template.image, image, ref, iterations=200, levels=LEVELS,
                                                   fixed_mask=template.foreground_mask(dilate_mm=5.0))
            row = {"volume": name, "reference_similarity_scale": round(ref_scale, 4),
                   "rigid_vs_similarity_reference": alignment_distance(points, ref, ref_sim)}
            for label, overrides in ALIGNMENT_VARIANTS.items():
                cfg = PartialPreregConfig(device="cpu", cache_fixed_to_template=False, **overrides)
                diag = {}
                t0 = time.process_time()
                matrix = register_module._fixed_to_template(image, template, cfg, diag, as_progress(None))
                row[label] = dict(alignment_distance(points, matrix, ref),
                                  vs_similarity_reference=alignment_distance(points, matrix, ref_sim),
                                  cpu_s=round(time.process_time() - t0, 2),
                                  scale=round(float(np.cbrt(np.linalg.det(matrix[:3, :3]))), 4),
                                  search=diag["fixed_to_template"].get("search"))
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            print(json.dumps(row), flush=True)
    return 0


def fit_similarity(source: np.ndarray, target: np.ndarray) -> tuple:
    """Least-squares similarity ``target ≈ s R source + t`` (Umeyama): ``(4x4 matrix, s)``."""
    cs, ct = source.mean(axis=0), target.mean(axis=0)
    a, b = source - cs, target - ct
    u, sv, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    fix = np.diag([1.0, 1.0, d])
    r = vt.T @ fix @ u.T
    scale = float((sv * np.diag(fix)).sum() / (a**2).sum())
    m = np.eye(4)
    m[:3, :3] = scale * r
    m[:3, 3] = ct - scale * r @ cs
    return m, scale


def patches_main(args) -> int:
    """Per development crop: the network's patch errors against the template positions implied by the true
    transform and the pipeline's own fixed → template alignment, the scale of a similarity fit of predictions to
    those positions (< 1: predictions contracted), and "TSPM alone"'s anchor error."""
    from RegistrationSuiteLib.geometry import Grid, apply_affine
    from RegistrationSuiteLib.methods.partial_prereg import PartialPreregConfig
    from RegistrationSuiteLib.methods.partial_prereg import register as register_module
    from RegistrationSuiteLib.methods.partial_prereg.network import load_tspm_model
    from RegistrationSuiteLib.progress import as_progress
    from bench_partial_prereg import case_rng

    data = require_shared_data("brain", "stroke")
    out_path = REPO / "Testing" / "Benchmarks" / "output" / f"diagnose_tspm_patches_seed{args.seed}{args.tag}.jsonl"
    cfg = PartialPreregConfig(device="cpu", cache_fixed_to_template=False, local_search=False, refine="none",
                              **json.loads(args.config))
    tspm = load_tspm_model(cfg.model_path)
    t_tf = {}
    with out_path.open("w") as fh:
        for contrast, modality in contrast_pairs(args.moving, args.fixed):
            source = sitk.ReadImage(str(data / f"{contrast}.nii.gz"), sitk.sitkFloat32)
            fixed = sitk.ReadImage(str(data / f"{modality}.nii.gz"), sitk.sitkFloat32)
            if modality not in t_tf:
                t_tf[modality] = register_module._fixed_to_template(fixed, tspm.template, cfg, {}, as_progress(None))
            for cls in args.classes:
                for k in range(args.cases_per_class):
                    moving, truth, largest = make_case(source, fixed, cls, case_rng(args.seed, contrast, modality,
                                                                                     cls, k))
                    row = dict(moving_contrast=contrast, modality=modality, size_class=cls, case=k,
                               largest_mm=round(largest, 1))
                    rng = np.random.default_rng(cfg.seed)
                    try:
                        ps, pred = register_module.predict_template_positions(moving, tspm, cfg, rng)
                    except Exception as exc:  # noqa: BLE001 - recorded
                        row["error"] = f"{type(exc).__name__}: {exc}"[:200]
                        fh.write(json.dumps(row) + "\n")
                        continue
                    true_pos = apply_affine(np.linalg.inv(t_tf[modality]) @ np.linalg.inv(truth), ps.centers_mm)
                    err = np.linalg.norm(pred - true_pos, axis=1)
                    _, scale = fit_similarity(true_pos, pred)
                    a_mov, ransac = register_module._moving_to_template(moving, tspm, cfg, {}, {}, as_progress(None))
                    estimate = np.linalg.inv(a_mov["ransac"]) @ np.linalg.inv(t_tf[modality])
                    centre = tspm.template.grid.center()
                    row.update(patch_error_median_mm=round(float(np.median(err)), 1), n=len(err),
                               pred_over_true_scale=round(scale, 3),
                               true_distance_from_centre_mm=round(float(np.linalg.norm(true_pos.mean(0) - centre)), 1),
                               pred_distance_from_centre_mm=round(float(np.linalg.norm(pred.mean(0) - centre)), 1),
                               consensus=bool(ransac.consensus), alone_error_mm=round(anchor_error(moving, estimate,
                                                                                                   truth), 1))
                    fh.write(json.dumps(row) + "\n")
                    fh.flush()
                    print(json.dumps(row), flush=True)
                    if args.save_points:  # for offline comparisons of estimators (no network rerun)
                        axes = [np.linspace(0, n - 1, 5) for n in moving.GetSize()]
                        idx = np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1).T
                        anchors = apply_affine(Grid.from_image(moving).index_to_world(), idx)
                        np.savez(out_path.with_suffix("").as_posix() + f"_{contrast}_{modality}_{cls}_{k}.npz",
                                 centers=ps.centers_mm, pred=pred, true=true_pos, truth=truth,
                                 t_tf=t_tf[modality], anchors=anchors)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, help="case seed (not the benchmark's 0)")
    ap.add_argument("--alignment", action="store_true", help="measure the fixed → template alignment instead")
    ap.add_argument("--include-stroke", action="store_true", help="with --alignment: also the benchmark's subject")
    ap.add_argument("--reference-dir", help="with --alignment: a prepare_tspm_training.py output folder")
    ap.add_argument("--volumes", nargs="*", help="with --alignment: only these training volumes")
    ap.add_argument("--patches", action="store_true",
                    help="per crop: the network's patch errors, their contraction and TSPM alone's error")
    ap.add_argument("--save-points", action="store_true", help="with --patches: save each crop's points (.npz)")
    ap.add_argument("--classes", nargs="*", default=["tiny"], choices=list(CLASSES))
    ap.add_argument("--cases-per-class", type=int, default=2)
    ap.add_argument("--moving", nargs="*", default=["T1", "T2", "FLAIR"], choices=["T1", "T2", "FLAIR"])
    ap.add_argument("--fixed", nargs="*", default=list(FIXED_MODALITIES), choices=FIXED_MODALITIES)
    ap.add_argument("--config", default="{}", help="JSON of PartialPreregConfig overrides")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    if args.alignment:
        return alignment_main(args)
    if args.seed is None:
        ap.error("--seed is required (not the benchmark's 0)")
    if args.seed == 0:
        ap.error("--seed 0 draws the benchmark's cases: use another seed for diagnosis")
    if args.patches:
        return patches_main(args)
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

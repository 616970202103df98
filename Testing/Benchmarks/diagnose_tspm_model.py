#!/usr/bin/env python
"""Why a TSPM model places patches where it does: bias vs. spread, shrinkage, left-right confusion, and the
error on its TRAINING volumes next to the held-out stroke subject (underfitting vs. generalisation).

For every row of PAIRS.csv (``prepare_tspm_training.py``: training volumes and the held-out stroke subject's
T1, T2, FLAIR), ``--patches`` random axis-aligned 16³ patches on the template canvas (foreground rule of
inference, the volume's own intensity range; whole heads as they are) are placed by the network, and the
following are reported (mm):

- median error |prediction − truth| and, for scale, that of a constant guess (the median true position);
- per axis (canvas x, y, z): the mean signed error (bias) and the standard deviation of the error (spread);
- per axis: the slope of the least-squares line prediction ~ truth (1 = unshrunk; below 1 = predictions pulled
  towards the middle of the template, as an under-fitted regressor does);
- left-right: for patches more than 20 mm from the canvas mid-plane in x, the fraction whose prediction lies
  closer to the mirrored (x → −x about the mid-plane) true position than to the true one;
- mirror drift of the bare network (its ``mirror_average`` switched off): the mean over patches of
  (x̂(patch) + x̂(patch flipped along x)) / 2 − mid-plane. 0 for a left-right equivariant network (for the
  symmetric template, a patch and its mirror image sit at mirrored positions); a shared shift of left-right
  ambiguous patches (the flat region of the L1 loss between the two mirror positions) shows up here, on
  training volumes as much as on held-out ones. Models with ``mirror_average`` cancel it by construction.

Usage::

    python Testing/Benchmarks/diagnose_tspm_model.py --pairs .device_carry/tspm_training/PAIRS.csv \\
        --models tspm_t1_mr_icbm152 NEW.pt [--write]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, update_benchmarks_md  # noqa: E402

SECTION = "tspm_patch_diagnosis"


def diagnose(pairs: Path, model, patches: int, seed: int) -> list:
    import torch

    from RegistrationSuiteLib.methods.partial_prereg.network import load_tspm_model
    from RegistrationSuiteLib.methods.partial_prereg.train import (predict_patch_positions, read_pairs_csv,
                                                                   volume_on_canvas)

    torch.set_num_threads(1)
    tspm = load_tspm_model(model)
    t = tspm.template
    n, sp = t.canvas_size, t.spacing_mm
    brain = sitk.GetArrayFromImage(t.foreground_mask()).astype(bool)
    trained_on = {d["name"] for d in tspm.card.get("training_data", []) if d.get("split") == "train"}
    rows = []
    for case in read_pairs_csv(pairs):
        vol = volume_on_canvas(case, t, brain, 0.6, tspm.intensity)
        t0 = time.process_time()
        pred, truth = predict_patch_positions(tspm.net, vol, t, tspm.intensity, num_patches=patches, seed=seed,
                                              device="cpu")
        cpu = time.process_time() - t0
        bare = tspm.net.config
        tspm.net.config = replace(bare, mirror_average=False)
        try:
            raw, _ = predict_patch_positions(tspm.net, vol, t, tspm.intensity, num_patches=patches, seed=seed)
            raw_flip, _ = predict_patch_positions(tspm.net, vol, t, tspm.intensity, num_patches=patches, seed=seed,
                                                  flip_x=True)
        finally:
            tspm.net.config = bare
        err = pred - truth
        dist = np.linalg.norm(err, axis=1)
        mid = (n - 1) / 2.0 * sp
        mirrored = truth.copy()
        mirrored[:, 0] = 2 * mid - truth[:, 0]
        lateral = np.abs(truth[:, 0] - mid) > 20.0
        rows.append(dict(
            volume=case.name, trained_on=case.name in trained_on, split=case.split, patches=int(len(pred)),
            median_mm=float(np.median(dist)),
            constant_median_mm=float(np.median(np.linalg.norm(truth - np.median(truth, axis=0), axis=1))),
            bias_mm=err.mean(axis=0).tolist(), spread_mm=err.std(axis=0).tolist(),
            slope=[float(np.polyfit(truth[:, a], pred[:, a], 1)[0]) for a in range(3)],
            mirror_closer=float(np.mean(np.linalg.norm(pred - mirrored, axis=1)[lateral] < dist[lateral]))
            if lateral.any() else float("nan"),
            mirror_drift_mm=float(np.mean((raw[:, 0] + raw_flip[:, 0]) / 2.0) - (n - 1) / 2.0 * sp),
            mirror_average=bool(bare.mirror_average),
            cpu_seconds=cpu,
        ))
        print(Path(str(model)).name, rows[-1], flush=True)
    return rows


def report(results: dict, args) -> str:
    header = ["model", "volume", "trained on it", "median error (constant guess)", "bias x, y, z",
              "spread (SD) x, y, z", "slope pred~truth x, y, z", "lateral patches nearer the mirror position",
              "mirror drift of the bare network x (mm)"]
    table = []
    for model, rows in results.items():
        for r in rows:
            table.append([Path(str(model)).name, r["volume"], "yes" if r["trained_on"] else "no (held out)",
                          f"{r['median_mm']:.1f} ({r['constant_median_mm']:.1f})",
                          ", ".join(f"{v:+.1f}" for v in r["bias_mm"]), ", ".join(f"{v:.1f}" for v in r["spread_mm"]),
                          ", ".join(f"{v:.2f}" for v in r["slope"]), f"{r['mirror_closer']:.0%}",
                          f"{r['mirror_drift_mm']:+.1f}" + (" (averaged out)" if r.get("mirror_average") else "")])
    return "\n".join([
        "## TSPM patch placement diagnosis (`diagnose_tspm_model.py`)",
        "",
        f"{args.patches} random axis-aligned 16³ patches per volume (seed {args.seed}) on the template canvas, each "
        "volume with its own intensity range (whole heads as they are; the stroke subject is skull-stripped). "
        "Errors in mm on the canvas axes (x: left-right). \"Constant guess\": the median error of always "
        "answering the volume's median true position. Slope: least-squares slope of predicted on true "
        "coordinate (1 = unshrunk). Mirror: fraction of patches > 20 mm off the mid-plane whose prediction is "
        "nearer their left-right mirrored position than their true one. Mirror drift: mean of (x̂(patch) + "
        "x̂(patch flipped along x)) / 2 − mid-plane for the network without mirror averaging (0 = left-right "
        "equivariant); \"(averaged out)\": the model averages each patch with its mirror image, which cancels it.",
        "",
        markdown_table(header, table),
        "",
        f"Command: `python Testing/Benchmarks/diagnose_tspm_model.py --pairs {args.pairs} --models "
        f"{' '.join(args.models)} --patches {args.patches} --seed {args.seed} --write`",
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", required=True, help="PAIRS.csv of prepare_tspm_training.py (every row is used)")
    ap.add_argument("--models", nargs="+", required=True, help="model names or .pt files")
    ap.add_argument("--patches", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help=f"write the '{SECTION}' section of BENCHMARKS.md")
    args = ap.parse_args(argv)
    body = report({m: diagnose(Path(args.pairs), m, args.patches, args.seed) for m in args.models}, args)
    print(body)
    if args.write:
        update_benchmarks_md(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Patch position error of TSPM models on the held-out stroke subject, per contrast (T1, T2, FLAIR).

The stroke subject (``../shared/data/brain/stroke``) is the partial-prereg benchmark's evaluation subject and is
never trained on. Its T1 is aligned with the template by ``prepare_tspm_training.py`` (global rigid search +
Mattes-MI refinement; T2 and FLAIR share the T1's grid and transform). For each model, ``--patches`` random
axis-aligned 16³ patches of each contrast on the template canvas (foreground rule of inference, the volume's
own intensity range) are placed by the network; the error is the distance (mm) between the predicted and the
true template position of each patch centre (:func:`methods.partial_prereg.train.evaluate_patch_error`). The
same patches (same seed) are used for every model. A model given as ``NAME+mirror`` is evaluated with mirror
averaging switched on (``PatchNetConfig.mirror_average``: each patch's prediction averaged with the mirrored
prediction of its left-right mirror image; weights unchanged), to show what that alone does for a model trained
without it.

Usage::

    python Testing/Benchmarks/eval_tspm_model.py --pairs .device_carry/tspm_training/PAIRS.csv \\
        --models tspm_t1_mr_icbm152 NEW.pt [--write]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, update_benchmarks_md  # noqa: E402

SECTION = "tspm_patch_error"


def evaluate(pairs: Path, models, patches: int, seed: int) -> dict:
    from RegistrationSuiteLib.methods.partial_prereg.network import load_tspm_model
    from RegistrationSuiteLib.methods.partial_prereg.train import read_pairs_csv, volume_on_canvas, \
        evaluate_patch_error

    cases = [c for c in read_pairs_csv(pairs) if c.split == "val"]
    if not cases:
        raise SystemExit(f"{pairs}: no validation rows")
    out = {}
    for name in models:
        base, mirror = (name[:-len("+mirror")], True) if name.endswith("+mirror") else (name, False)
        tspm = load_tspm_model(base)
        if mirror:
            from dataclasses import replace

            tspm.net.config = replace(tspm.net.config, mirror_average=True)
        brain = sitk.GetArrayFromImage(tspm.template.foreground_mask()).astype(bool)
        out[name] = {}
        for case in cases:
            vol = volume_on_canvas(case, tspm.template, brain, 0.6, tspm.intensity)
            t0 = time.process_time()
            out[name][case.name] = dict(evaluate_patch_error(tspm.net, vol, tspm.template, tspm.intensity,
                                                             num_patches=patches, seed=seed, device="cpu"),
                                        cpu_seconds=time.process_time() - t0)
            print(name, case.name, out[name][case.name], flush=True)
    return out


def report(results: dict, args) -> str:
    volumes = list(next(iter(results.values())))
    header = ["model"] + [f"{v}: median / mean error (mm), within 15 mm" for v in volumes]
    rows = [[Path(m).name] + [f"{r[v]['median_mm']:.1f} / {r[v]['mean_mm']:.1f}, {r[v]['within_15mm']:.0%}"
                              for v in volumes] for m, r in results.items()]
    return "\n".join([
        "## TSPM patch position error on the held-out subject (`eval_tspm_model.py`)",
        "",
        f"{args.patches} random axis-aligned 16³ patches per volume (seed {args.seed}, the same for every model) of "
        "the stroke subject (never trained on; its T1 aligned with the template by `prepare_tspm_training.py`, "
        "T2 and FLAIR on the T1's grid); error = distance between the network's and the true template position "
        "of the patch centre.",
        "",
        markdown_table(header, rows),
        "",
        f"Command: `python Testing/Benchmarks/eval_tspm_model.py --pairs {args.pairs} --models "
        f"{' '.join(args.models)} --patches {args.patches} --seed {args.seed} --write`",
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", required=True, help="PAIRS.csv of prepare_tspm_training.py (its val rows are used)")
    ap.add_argument("--models", nargs="+", required=True, help="model names or .pt files")
    ap.add_argument("--patches", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help=f"write the '{SECTION}' section of BENCHMARKS.md")
    args = ap.parse_args(argv)
    body = report(evaluate(Path(args.pairs), args.models, args.patches, args.seed), args)
    print(body)
    if args.write:
        update_benchmarks_md(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Tuning of the deformable defaults on cases the benchmark never uses (RegNet generator of
``bench_deformable.py`` with seed 100 instead of the benchmark's seed 0). In-process (no start-up cost),
one torch thread. Prints one JSON line per (setting, case): field error inside the brain mask, folding, CPU s.

    nice -n 10 python Testing/Benchmarks/tune_deformable.py --pairs T1 --classes 0,2 \
        --setting 'base={}' --setting 'lr=final_lr_fraction=0.2' ...

A setting is ``NAME=field=value,field=value`` (fields of ``DeformableConfig``; tuples as ``a/b/c``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_deformable as bench  # noqa: E402
from common import require_shared_data  # noqa: E402


def parse_setting(text: str):
    name, _, rest = text.partition("=")
    kw = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if "/" in value:
            kw[key] = tuple(float(v) for v in value.split("/"))
        else:
            try:
                kw[key] = int(value)
            except ValueError:
                try:
                    kw[key] = float(value)
                except ValueError:
                    kw[key] = value
    return name, kw


def main(argv=None) -> int:
    from RegistrationSuiteLib.methods.deformable import DeformableConfig, register_deformable
    from RegistrationSuiteLib.methods.deformable.synthetic import REGNET_CLASSES

    p = argparse.ArgumentParser()
    p.add_argument("--pairs", default="T1")
    p.add_argument("--classes", default="0,2")
    p.add_argument("--cases", type=int, default=1)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--setting", action="append", default=[])
    p.add_argument("--log", default="")
    p.add_argument("--fg-mask", type=int, default=-1,
                   help="pass a fixed mask: fixed > 5 %% of its 99.5th percentile, dilated by this many voxels")
    args = p.parse_args(argv)
    if args.seed == 0:
        raise SystemExit("seed 0 draws the benchmark's own cases: tune on another seed")
    torch.set_num_threads(1)
    root = require_shared_data("brain", "stroke")
    pairs = args.pairs.split(",")
    images = {n: bench.resample_iso(sitk.ReadImage(str(root / f"{n}.nii.gz"), sitk.sitkFloat32), bench.SPACING)
              for n in sorted({"T1", *pairs})}
    t1 = sitk.GetArrayFromImage(images["T1"])
    mask = t1 > 0.05 * float(np.percentile(t1, 99.5))
    cases = []
    for pair in pairs:
        for k in [int(c) for c in args.classes.split(",")]:
            for case in range(args.cases):
                rng = np.random.default_rng([args.seed, bench.PAIR_INDEX.index(pair), k, case])
                cases.append((pair, k, case, *bench.make_case(images, mask, REGNET_CLASSES[k], pair, rng)))
    settings = [parse_setting(s) for s in (args.setting or ["base="])]
    log = open(args.log, "a") if args.log else None
    for name, kw in settings:
        for pair, k, case, fixed, moving, truth in cases:
            c0 = time.process_time()
            fmask = None
            if args.fg_mask >= 0:
                fa = sitk.GetArrayFromImage(fixed)
                fg = fa > 0.05 * float(np.percentile(fa, 99.5))
                if args.fg_mask:
                    from scipy import ndimage
                    fg = ndimage.binary_dilation(fg, iterations=args.fg_mask)
                fmask = sitk.GetImageFromArray(fg.astype(np.uint8))
                fmask.CopyInformation(fixed)
            res = register_deformable(fixed, moving, DeformableConfig(device="cpu", **kw), fixed_mask=fmask)
            cpu = time.process_time() - c0
            ev = bench.evaluate(bench.dense(res.transform, fixed), truth, bench.fixed_brain_mask(mask, truth), mask)
            rec = {"setting": name + (f"+fg{args.fg_mask}" if args.fg_mask >= 0 else ""), "kw": kw, "pair": pair, "class": k, "case": case, **ev, "cpu_s": cpu}
            line = json.dumps(rec)
            print(line, flush=True)
            if log:
                log.write(line + "\n")
                log.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

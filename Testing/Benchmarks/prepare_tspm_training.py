#!/usr/bin/env python
"""Build the TSPM training set (PAIRS.csv + volumes + transforms) from ../shared/data, reproducibly.

Every T1-weighted volume of ``brain/`` except the stroke subject (the benchmark's test subject) is aligned
rigidly with the template canvas (shipped ICBM 2009a canvas) using the project's own tools:

- volumes already in MNI space (the MNI/ICBM-derived templates): identity start + Mattes MI refinement
  restricted to the template's (dilated) brain region;
- the individual scans: the global rigid search (CSNGF, :mod:`methods.global_rigid`) + the same refinement.

The stroke T1 is aligned the same way and listed with ``split = val``: it is never trained on, only used
to *report* a patch position error in the model card (no model selection uses it).

Usage::

    python Testing/Benchmarks/prepare_tspm_training.py --data ../shared/data --out .device_carry/tspm_training

Writes ``OUT/PAIRS.csv`` (image, template_to_image, split, licence, name), ``OUT/PILOT.csv`` (the same
training rows, two of them held out for a first training stage, no stroke rows), ``OUT/TISSUE.csv`` (tissue
maps) and ``OUT/LABELS.csv`` (label atlas) for synthetic contrasts, a copy of each image, its
``*_template_to_image.tfm`` (template points → image points, LPS) and ``OUT/report.json`` (MI before/after).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from RegistrationSuiteLib.geometry import sitk_affine_from_matrix
from RegistrationSuiteLib.io import write_transform
from RegistrationSuiteLib.methods.global_rigid import GlobalRigidConfig, register_global_rigid
from RegistrationSuiteLib.methods.partial_prereg.refine import refine_rigid
from RegistrationSuiteLib.methods.partial_prereg.template import load_template

APACHE_ANTS = "Apache-2.0 (ANTsX/ANTsPy data)"
ICBM = "ICBM 2009a terms (MNI/McGill permissive, notice required), via nilearn BSD-3-Clause"
NIIVUE = "BSD-2-Clause (niivue/niivue-demo-images)"
MIT = "MIT (neurolabusc/VolumeRenderingData)"

# (name, path under data/, start: "mni" = identity start, "search" = global rigid search, licence, split)
VOLUMES = [
    ("icbm152_2009a", "brain/templates/icbm152_2009a_t1.nii.gz", "mni", ICBM, "train"),
    ("colin27", "brain/templates/colin27_t1.nii.gz", "mni", APACHE_ANTS, "train"),
    ("mni152_1mm", "brain/templates/mni152_t1_1mm.nii.gz", "mni", APACHE_ANTS, "train"),
    ("mni152_2mm_head", "brain/templates/MNI152_T1_2mm.nii.gz", "mni", NIIVUE, "train"),
    ("spm152", "brain/templates/spm152_t1.nii.gz", "mni", NIIVUE, "train"),
    ("oasis_2mm", "brain/templates/oasis_template_2mm.nii.gz", "mni", APACHE_ANTS, "train"),
    ("t1_head", "brain/unaligned_session/T1_head.nii.gz", "search", NIIVUE, "train"),
    ("t1_gadolinium", "brain/other/T1_gadolinium_skullstripped.nii.gz", "search", NIIVUE, "train"),
    ("seg3d_mr", "brain/other/seg3d_MR.nii.gz", "search", MIT, "train"),
    ("t2w_session", "brain/unaligned_session/T2w.nii.gz", "search", NIIVUE, "train"),
    ("stroke_t1", "brain/stroke/T1.nii.gz", "search", MIT, "val"),
    # co-registered with the stroke T1 (same grid): they reuse its transform ("same:<name>")
    ("stroke_t2", "brain/stroke/T2.nii.gz", "same:stroke_t1", MIT, "val"),
    ("stroke_flair", "brain/stroke/FLAIR.nii.gz", "same:stroke_t1", MIT, "val"),
]
# Never used: other/T2w_stroke_in_mni.nii.gz (a stroke T2 in MNI space of unstated origin: it may be the
# benchmark's subject), the DWI / fMRI volumes (not anatomical contrasts a partial scan is taken in).

#: tissue probability maps in the space of the ICBM 2009a T1 (its transform is reused) for synthetic contrasts
TISSUE_MAPS = [("gm", "brain/templates/icbm152_2009a_gm.nii.gz"), ("wm", "brain/templates/icbm152_2009a_wm.nii.gz")]
TISSUE_ANATOMY = "icbm152_2009a"
#: label atlas on the grid of the MNI152 1 mm T1 (same size, spacing and origin: that T1's transform is reused)
#: for synthetic contrasts with a random intensity per label (train --labels). Drawn on the ICBM 2009a head
#: (LABEL_ANATOMY: its tissue split, scalp and skull; the MNI152 1 mm T1 is skull-stripped).
LABEL_ATLAS = "brain/templates/mni152_labels_1mm.nii.gz"
LABEL_TRANSFORM = "mni152_1mm"
LABEL_ANATOMY = "icbm152_2009a"


def align(template, image: sitk.Image, start: str, seed: int) -> tuple:
    """template → image rigid matrix and a report entry."""
    mask = template.foreground_mask(dilate_mm=5.0)
    t0 = time.perf_counter()
    if start == "search":
        # A coarse search (whole head against the template is an easy case); the refinement polishes it.
        config = GlobalRigidConfig(level_spacing_mm=(10.0, 5.0), blur_mm=(7.0, 3.5), num_rotations=(1000, 200),
                                   perturbation_deg=(180.0, 15.0), keep=(4, 1), refine=False, seed=seed,
                                   device="cpu")
        res = register_global_rigid(template.image, image, config, fixed_mask=mask)
        init = res.fixed_to_moving_matrix
    else:
        init = np.eye(4)
    out = refine_rigid(template.image, image, init, metric="mi", fixed_mask=mask, iterations=200, seed=seed)
    return out.fixed_to_moving, {"start": start, "mi_before": out.before, "mi_after": out.after,
                                 "seconds": round(time.perf_counter() - t0, 1)}


# Held out of the first (pilot) training stage, to compare settings without the benchmark's subject.
PILOT_HELD_OUT = ("colin27", "t1_gadolinium")


def write_stage1(rows, path) -> None:
    """PILOT.csv: the training rows with ``PILOT_HELD_OUT`` as validation rows and the stroke subject left out
    entirely, for a first stage whose settings are judged on held-out *training* volumes, never on the
    benchmark's subject (the shipped model's second stage starts from it with every training row)."""
    out = [dict(r, split="val" if r["name"] in PILOT_HELD_OUT else "train") for r in rows
           if not r["name"].startswith("stroke")]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "template_to_image", "split", "licence", "name"])
        writer.writeheader()
        writer.writerows(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / ".device_carry" / "tspm_training"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="names to (re)process (default: all)")
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if not data.is_dir():
        print(f"data folder not found: {data}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    template = load_template()
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    rows = []
    for name, rel, start, licence, split in VOLUMES:
        src = data / rel
        image_file = f"{name}.nii.gz"
        tfm_file = f"{name}_template_to_image.tfm"
        if start.startswith("same:"):
            shutil.copyfile(src, out / image_file)
            rows.append({"image": image_file, "template_to_image": f"{start[5:]}_template_to_image.tfm",
                         "split": split, "licence": licence, "name": name})
            continue
        if args.only is None or name in args.only or not (out / tfm_file).is_file():
            shutil.copyfile(src, out / image_file)
            image = sitk.ReadImage(str(src), sitk.sitkFloat32)
            matrix, entry = align(template, image, start, args.seed)
            write_transform(sitk_affine_from_matrix(matrix), out / tfm_file)
            report[name] = dict(entry, source=rel)
            report_path.write_text(json.dumps(report, indent=2))
            print(name, json.dumps(report[name]), flush=True)
        rows.append({"image": image_file, "template_to_image": tfm_file, "split": split, "licence": licence,
                     "name": name})
    with open(out / "PAIRS.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "template_to_image", "split", "licence", "name"])
        writer.writeheader()
        writer.writerows(rows)
    write_stage1(rows, out / "PILOT.csv")
    for name, rel in TISSUE_MAPS:  # TISSUE.csv: maps for synthetic contrasts (train --tissue)
        shutil.copyfile(data / rel, out / f"tissue_{name}.nii.gz")
    with open(out / "TISSUE.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["class", "image", "template_to_image", "licence", "anatomy"])
        writer.writeheader()
        writer.writerows({"class": name, "image": f"tissue_{name}.nii.gz",
                          "template_to_image": f"{TISSUE_ANATOMY}_template_to_image.tfm", "licence": ICBM,
                          "anatomy": TISSUE_ANATOMY}
                         for name, _ in TISSUE_MAPS)
    shutil.copyfile(data / LABEL_ATLAS, out / "labels_mni152_1mm.nii.gz")
    with open(out / "LABELS.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "template_to_image", "licence", "anatomy"])
        writer.writeheader()
        writer.writerow({"image": "labels_mni152_1mm.nii.gz",
                         "template_to_image": f"{LABEL_TRANSFORM}_template_to_image.tfm", "licence": APACHE_ANTS,
                         "anatomy": LABEL_ANATOMY})
    report_path.write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'PAIRS.csv'} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

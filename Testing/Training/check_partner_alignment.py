"""Check a partner_transform of deformable_mr_pairs.csv: Mattes mutual information (higher = better aligned)
and NCC of image vs partner resampled onto the image's grid, with the identity, with the transform, and with the
transform shifted by ±5 mm / rotated by ±5° (a correct alignment should beat all of them); writes JSON and an
axial/coronal checkerboard PNG.

    python Testing/Training/check_partner_alignment.py IMAGE PARTNER TRANSFORM OUT_DIR
"""

import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def mattes_mi(fixed, moving, tx):
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(32)
    r.SetMetricSamplingStrategy(r.NONE)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetInitialTransform(tx)
    return -float(r.MetricEvaluate(fixed, moving))  # sitk returns the negative MI


def main(image, partner, transform, out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fixed = sitk.Cast(sitk.ReadImage(image), sitk.sitkFloat32)
    moving = sitk.Cast(sitk.ReadImage(partner), sitk.sitkFloat32)
    tx = sitk.ReadTransform(transform)
    if isinstance(tx, sitk.CompositeTransform) and tx.GetNumberOfTransforms() == 1:
        tx = tx.GetNthTransform(0)
    tx = tx.Downcast() if hasattr(tx, "Downcast") else tx
    # a common 2 mm grid for the metric
    ref = sitk.Resample(fixed, [int(n * s / 2.0) for n, s in zip(fixed.GetSize(), fixed.GetSpacing())],
                        sitk.Transform(), sitk.sitkLinear, fixed.GetOrigin(), [2.0] * 3, fixed.GetDirection())
    cases = {"identity": sitk.Euler3DTransform(), "transform": tx}
    base = sitk.Euler3DTransform()
    base.SetMatrix(tx.GetMatrix())
    base.SetTranslation(tx.GetTranslation())
    base.SetCenter(tx.GetCenter() if hasattr(tx, "GetCenter") else (0, 0, 0))
    for axis in range(3):
        for sign in (-1, 1):
            t = sitk.Euler3DTransform(base)
            tr = list(t.GetTranslation())
            tr[axis] += 5.0 * sign
            t.SetTranslation(tr)
            cases[f"shift{'xyz'[axis]}{sign * 5:+d}mm"] = t
            r = sitk.Euler3DTransform(base)
            ang = [r.GetAngleX(), r.GetAngleY(), r.GetAngleZ()]
            ang[axis] += np.deg2rad(5.0) * sign
            r.SetRotation(*ang)
            cases[f"rot{'xyz'[axis]}{sign * 5:+d}deg"] = r
    res = {}
    for name, t in cases.items():
        warped = sitk.Resample(moving, ref, t, sitk.sitkLinear, 0.0)
        cover = sitk.GetArrayFromImage(sitk.Resample(moving * 0 + 1, ref, t, sitk.sitkNearestNeighbor, 0.0)) > 0
        a, b = sitk.GetArrayFromImage(ref)[cover], sitk.GetArrayFromImage(warped)[cover]
        res[name] = {"mattes_mi": round(mattes_mi(ref, moving, t), 4),
                     "ncc_in_partner_fov": round(float(np.corrcoef(a, b)[0, 1]), 4),
                     "overlap_voxels_2mm": int(cover.sum())}
    others = [v["mattes_mi"] for k, v in res.items() if k != "transform"]
    res["transform_beats_all_perturbations_mi"] = bool(res["transform"]["mattes_mi"] > max(others))
    (out / "alignment.json").write_text(json.dumps(res, indent=1))
    # checkerboard of the two central slices
    warped = sitk.GetArrayFromImage(sitk.Resample(moving, ref, tx, sitk.sitkLinear, 0.0))
    fa = sitk.GetArrayFromImage(ref)

    def unit(x):
        return np.clip(x / max(np.percentile(x, 99.5), 1e-6), 0, 1)

    fa, warped = unit(fa), unit(warped)
    rows = []
    for sl in (lambda x: x[x.shape[0] // 2], lambda x: x[:, x.shape[1] // 2, :]):
        f, m = sl(fa), sl(warped)
        yy, xx = np.indices(f.shape)
        rows.append(np.where(((yy // 8) + (xx // 8)) % 2 == 0, f, m))
    w = max(r.shape[1] for r in rows)
    canvas = np.concatenate([np.pad(r, ((0, 0), (0, w - r.shape[1]))) for r in rows], 0)
    png = sitk.GetImageFromArray((canvas[::-1] * 255).astype(np.uint8))
    sitk.WriteImage(png, str(out / "checkerboard.png"))
    print(json.dumps(res))


if __name__ == "__main__":
    main(*sys.argv[1:5])

"""Is ``brain/other/T2w_stroke_in_mni.nii.gz`` (niivue M2208) the same patient as the evaluation subject
``brain/stroke`` (C-STAR, via VolumeRenderingData)? Headers first, then image similarity after an affine
alignment (SimpleITK, Mattes MI) of each candidate T2 onto the stroke T2, and a picture of four axial slices
of both (the chronic left-hemisphere lesion of ``brain/stroke`` must be present in the same patient).

This is the script that produced the figures quoted in the ``deformable_mr_synthetic`` model card; it writes
``Testing/Benchmarks/output/defnet5/holdout_check.png`` and prints one line per image.

Usage: ``python Testing/Training/check_stroke_holdout.py``
"""

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "brain"
OUT = Path(__file__).resolve().parents[1] / "Benchmarks" / "output" / "defnet5"
FIXED = "stroke/T2.nii.gz"
CANDIDATES = ["other/T2w_stroke_in_mni.nii.gz", "unaligned_session/T2w.nii.gz"]


def header(path):
    r = sitk.ImageFileReader()
    r.SetFileName(str(ROOT / path))
    r.ReadImageInformation()
    keys = ("descrip", "aux_file", "intent_name", "qform_code", "sform_code", "db_name")
    return r.GetSize(), r.GetSpacing(), r.GetOrigin(), {k: r.GetMetaData(k) for k in r.GetMetaDataKeys() if k in keys}


def align(fix, path):
    mov = sitk.ReadImage(str(ROOT / path), sitk.sitkFloat32)
    init = sitk.CenteredTransformInitializer(fix, mov, sitk.AffineTransform(3),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(32)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(0.1, 1)
    r.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-3, 200)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel([4, 2])
    r.SetSmoothingSigmasPerLevel([2, 1])
    r.SetInitialTransform(init, inPlace=False)
    r.SetInterpolator(sitk.sitkLinear)
    t = r.Execute(fix, mov)
    warped = sitk.GetArrayFromImage(sitk.Resample(mov, fix, t, sitk.sitkLinear, 0.0))
    f = sitk.GetArrayFromImage(fix)
    m = (f > 0.05 * f.max()) & (warped > 0.05 * warped.max())
    a, b = f[m] - f[m].mean(), warped[m] - warped[m].mean()
    return r.GetMetricValue(), float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())), warped


def main() -> int:
    for path in [FIXED, "stroke/T1.nii.gz", "stroke/FLAIR.nii.gz", *CANDIDATES]:
        print(path, *header(path))
    fix = sitk.ReadImage(str(ROOT / FIXED), sitk.sitkFloat32)
    warped = {}
    for path in CANDIDATES:
        mi, corr, warped[path] = align(fix, path)
        print(f"{path}: affine onto {FIXED}: Mattes MI {mi:.3f}, Pearson correlation inside both brains {corr:.3f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = sitk.GetArrayFromImage(fix)
    fig, ax = plt.subplots(2, 4, figsize=(16, 8))
    for i, z in enumerate([40, 60, 80, 100]):
        ax[0, i].imshow(f[z], cmap="gray")
        ax[0, i].set_title(f"brain/stroke T2 z={z}")
        ax[1, i].imshow(warped[CANDIDATES[0]][z], cmap="gray")
        ax[1, i].set_title("T2w_stroke_in_mni, affine")
    OUT.mkdir(parents=True, exist_ok=True)
    plt.savefig(OUT / "holdout_check.png", dpi=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())

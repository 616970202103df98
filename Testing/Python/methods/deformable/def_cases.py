"""Small deformable cases built from the shipped 2 mm sample brain: a known smooth field fixed → moving."""

import numpy as np
import SimpleITK as sitk

from RegistrationSuiteLib.sample_data import load_sample


def oblique_fixed(name="T1", spacing=(3.0, 3.5, 4.0)):
    """The sample resampled onto an oblique (10° about an off-axis direction), anisotropic grid."""
    src = load_sample(name)
    rot = sitk.VersorTransform((0.2, 0.3, 0.9), np.deg2rad(10.0))
    direction = np.asarray(rot.GetMatrix()).reshape(3, 3)
    extent = np.array(src.GetSize()) * np.array(src.GetSpacing())
    size = [int(e / s) for e, s in zip(extent, spacing)]
    centre = np.array(src.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in src.GetSize()]))
    origin = centre - direction @ (np.array(spacing) * (np.array(size) - 1) / 2)
    return sitk.Resample(src, size, sitk.Transform(), sitk.sitkLinear, origin.tolist(), spacing,
                         direction.ravel().tolist(), 0.0, sitk.sitkFloat32), src


def smooth_displacement(reference, amplitude_mm=5.0, wavelength_mm=120.0, seed=0):
    """A smooth sinusoidal LPS displacement field on ``reference``'s grid (peak ``amplitude_mm`` per axis)."""
    rng = np.random.default_rng(seed)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in reference.GetSize()], indexing="ij"), -1).reshape(-1, 3)
    a = np.asarray(reference.GetDirection()).reshape(3, 3) @ np.diag(reference.GetSpacing())
    pts = idx @ a.T + np.asarray(reference.GetOrigin())
    field = np.zeros_like(pts)
    for c in range(3):
        k = rng.normal(size=(2, 3))
        k /= np.linalg.norm(k, axis=1, keepdims=True)
        phase = rng.uniform(0, 2 * np.pi, 2)
        field[:, c] = amplitude_mm * np.sin(2 * np.pi * pts @ k[0] / wavelength_mm + phase[0]) * \
            np.cos(2 * np.pi * pts @ k[1] / wavelength_mm + phase[1])
    arr = field.reshape(*reference.GetSize(), 3).transpose(2, 1, 0, 3)
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=True)
    out.CopyInformation(reference)
    return out


def deformed_pair(fixed_name="T1", moving_name="T1", amplitude_mm=5.0):
    """``fixed`` = the sample deformed by a known smooth field on an oblique anisotropic grid; ``moving`` =
    the sample on its own 2 mm grid. The true fixed → moving transform is ``T(x) = x + d(x)``:
    ``fixed(x) = sample(T(x))`` by construction (no inversion needed)."""
    grid, _ = oblique_fixed(fixed_name)
    d = smooth_displacement(grid, amplitude_mm)
    truth = sitk.DisplacementFieldTransform(sitk.Cast(d, sitk.sitkVectorFloat64))
    fixed = sitk.Resample(load_sample(fixed_name), grid, truth, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return fixed, load_sample(moving_name), truth


def negated(transform, reference):
    """``x − d(x)``: what a method returning the moving → fixed direction would give (small fields)."""
    args = (sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(), reference.GetSpacing(),
            reference.GetDirection())
    field = sitk.TransformToDisplacementField(transform, *args)
    neg = sitk.GetImageFromArray(-sitk.GetArrayFromImage(field), isVector=True)
    neg.CopyInformation(field)
    return sitk.DisplacementFieldTransform(neg)


def field_error(transform, truth, fixed, mask):
    """Mean and 95th percentile of |T(x) − T_true(x)| (mm) over fixed voxels where ``mask``."""
    args = (sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection())
    a = sitk.GetArrayFromImage(sitk.TransformToDisplacementField(transform, *args))
    b = sitk.GetArrayFromImage(sitk.TransformToDisplacementField(truth, *args))
    e = np.linalg.norm(a - b, axis=-1)[mask]
    return float(e.mean()), float(np.percentile(e, 95))

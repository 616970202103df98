"""Tiny 2D known-answer cases for the chain, batch and report tests (built from the shipped T1 sample)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from RegistrationSuiteLib.sample_data import load_sample


def slice_2d(spacing=(1.5, 1.0), origin=(-40.0, 12.0), index: int = 35) -> sitk.Image:
    """A 2D axial slice of the shipped T1 with anisotropic spacing and a non-zero origin."""
    arr = sitk.GetArrayFromImage(load_sample("T1"))[index].astype(np.float32)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def rigid_2d(angle_deg: float, shift_mm, center) -> sitk.Euler2DTransform:
    tx = sitk.Euler2DTransform()
    tx.SetCenter(tuple(float(c) for c in center))
    tx.SetAngle(np.deg2rad(angle_deg))
    tx.SetTranslation(tuple(float(s) for s in shift_mm))
    return tx


def known_pair_2d(angle_deg: float = 20.0, shift_mm=(6.0, -4.0)):
    """``(fixed, moving, truth)``: moving on its own grid (spacing 1.2 mm, other origin) such that
    ``truth`` (fixed→moving, non-identity) aligns them."""
    fixed = slice_2d()
    center = fixed.TransformContinuousIndexToPhysicalPoint([s / 2 for s in fixed.GetSize()])
    truth = rigid_2d(angle_deg, shift_mm, center)
    grid = sitk.Image([int(fixed.GetSize()[0] * 1.5 / 1.2) + 8, int(fixed.GetSize()[1] / 1.2) + 8], sitk.sitkFloat32)
    grid.SetSpacing((1.2, 1.2))
    grid.SetOrigin(tuple(np.asarray(fixed.GetOrigin()) - 5.0))
    # moving(y) = fixed(truth⁻¹(y)): resample fixed through the moving→fixed map onto the moving grid.
    moving = sitk.Resample(fixed, grid, truth.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return fixed, moving, truth


def corner_error_mm(fixed: sitk.Image, estimate: sitk.Transform, truth: sitk.Transform) -> float:
    size = fixed.GetSize()
    corners = [fixed.TransformContinuousIndexToPhysicalPoint([i * (s - 1) for i, s in zip(c, size)])
               for c in np.ndindex(*(2,) * fixed.GetDimension())]
    return float(np.mean([np.linalg.norm(np.subtract(estimate.TransformPoint(p), truth.TransformPoint(p)))
                          for p in corners]))

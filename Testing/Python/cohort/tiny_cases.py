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


def known_deformable_pair_3d(amplitude_mm: float = 4.0):
    """``(fixed, moving, moving_to_fixed, rigid)``: a 3D case whose answer is a rotation+shift AND a smooth field.

    Fixed: the shipped T1 (2 mm, oblique direction). Moving, on its own 2.5 mm grid around the rotated fixed
    centre: ``moving(y) = fixed(W(y))`` with ``W(y) = z + v(z)``, ``z = R⁻¹(y)``, ``R`` a rigid fixed→moving
    transform (about 15°, 8 mm) and ``v`` a smooth field of up to ``amplitude_mm`` (sines of 25 mm period/2π).
    The true fixed→moving answer is ``W⁻¹``: a correct estimate ``T`` satisfies ``T(W(y)) = y``.
    """
    fixed = sitk.Cast(load_sample("T1"), sitk.sitkFloat32)
    size = np.asarray(fixed.GetSize())
    center = fixed.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist())
    rigid = sitk.Euler3DTransform(center, 0.12, -0.08, 0.25, (6.0, -4.0, 3.0))
    grid = sitk.Image([int(s) for s in size // 2], sitk.sitkFloat32)
    grid.SetSpacing(tuple(2 * s for s in fixed.GetSpacing()))
    grid.SetOrigin(fixed.GetOrigin())
    grid.SetDirection(fixed.GetDirection())
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.GetSize()[::-1]], indexing="ij"), -1)[..., ::-1]
    to_mm = np.asarray(grid.GetDirection()).reshape(3, 3) * np.asarray(grid.GetSpacing())
    q = (idx.reshape(-1, 3) @ to_mm.T + np.asarray(grid.GetOrigin()) - np.asarray(center)) / 25.0
    v = np.stack([amplitude_mm * np.sin(q[:, 1]), 0.8 * amplitude_mm * np.sin(q[:, 2]),
                  0.6 * amplitude_mm * np.cos(q[:, 0])], -1)
    field_img = sitk.GetImageFromArray(v.reshape(tuple(grid.GetSize()[::-1]) + (3,)), isVector=True)
    field_img.CopyInformation(grid)
    field = sitk.DisplacementFieldTransform(sitk.Cast(field_img, sitk.sitkVectorFloat64))
    moving_to_fixed = sitk.CompositeTransform(3)  # ITK applies the last added first: R⁻¹, then the field
    moving_to_fixed.AddTransform(field)
    moving_to_fixed.AddTransform(rigid.GetInverse())
    m_size = np.array([50, 64, 56])
    m_grid = sitk.Image([int(s) for s in m_size], sitk.sitkFloat32)
    m_grid.SetSpacing((2.5, 2.5, 2.5))
    m_grid.SetDirection(fixed.GetDirection())
    half = np.asarray(fixed.GetDirection()).reshape(3, 3) @ ((m_size - 1) * 2.5 / 2)
    m_grid.SetOrigin(tuple(np.asarray(rigid.TransformPoint(center)) - half))
    moving = sitk.Resample(fixed, m_grid, moving_to_fixed, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return fixed, moving, moving_to_fixed, rigid


def inside_points(image: sitk.Image, n: int = 300, seed: int = 0) -> list:
    """``n`` physical points of ``image``'s central 60 % box where the image is brighter than 10 % of its max."""
    rng = np.random.default_rng(seed)
    arr = sitk.GetArrayViewFromImage(image)
    size = np.asarray(image.GetSize())
    out = []
    while len(out) < n:
        i = (0.2 + 0.6 * rng.random(image.GetDimension())) * (size - 1)
        if arr[tuple(np.round(i[::-1]).astype(int))] > 0.1 * arr.max():
            out.append(image.TransformContinuousIndexToPhysicalPoint(i.tolist()))
    return out


def organ_labels(shift_vox=0):
    """Two ellipsoid 'organs' (labels 1, 2) on an anisotropic grid; ``shift_vox`` moves organ 2 along x."""
    z, y, x = np.mgrid[0:24, 0:40, 0:48].astype(float)
    arr = np.zeros(z.shape, np.uint8)
    arr[((x - 15) / 8) ** 2 + ((y - 20) / 10) ** 2 + ((z - 12) / 6) ** 2 <= 1] = 1
    arr[((x - 33 - shift_vox) / 7) ** 2 + ((y - 20) / 8) ** 2 + ((z - 12) / 7) ** 2 <= 1] = 2
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 2.0, 3.0))
    img.SetOrigin((-40.0, 10.0, 5.0))
    return img


def slide_pair_rgb(angle_deg: float = 40.0, shift_px=(6.0, -4.0), size: int = 192, seed: int = 0):
    """``(fixed_rgb, moving_rgb, matrix, offset)``: an H&E-like fixed slide and a DAB-like moving slide of a
    textured, asymmetric section; fixed pixel ``x`` (x, y) maps to moving pixel ``matrix @ x + offset``
    (a rotation by ``angle_deg`` about the centre plus ``shift_px``)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = ((xx - 0.45) / 0.27) ** 2 + ((yy - 0.52) / 0.2) ** 2 < 1
    lobe = ((xx - 0.68) / 0.1) ** 2 + ((yy - 0.3) / 0.09) ** 2 < 1
    texture = ndimage.gaussian_filter(rng.normal(size=(size, size)), size / 40)
    texture = (texture - texture.min()) / np.ptp(texture)
    density = ndimage.gaussian_filter((body | lobe) * (0.25 + 0.75 * texture), 0.7)
    a = np.radians(angle_deg)
    matrix = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = np.array([size / 2, size / 2])
    offset = centre + np.asarray(shift_px, float) - matrix @ centre
    inv = np.linalg.inv(matrix)
    swap = np.array([[0, 1], [1, 0]])  # ndimage works in (row, col) = (y, x)
    moved = ndimage.affine_transform(density, swap @ inv @ swap, swap @ (-inv @ offset), order=1, cval=0.0)

    def stain(d, od, strength):
        rgb = 0.96 * np.exp(-strength * d[..., None] * np.asarray(od)[None, None, :])
        return np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)

    return stain(density, (0.55, 0.85, 0.45), 1.5), stain(moved, (0.27, 0.57, 0.78), 1.2), matrix, offset

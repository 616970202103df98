"""Label image → organ surface points: physical placement (oblique, anisotropic), sampling, bad inputs."""

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.geometry import rotation_from_quaternion
from RegistrationSuiteLib.methods.organ_point_cloud import OrganPointCloudConfig, register_organ_point_cloud
from RegistrationSuiteLib.surfaces import labels_to_points, sample_surface

from opc_shapes import one_torch_thread  # noqa: F401

DIRECTION = rotation_from_quaternion(np.array([0.9, 0.2, -0.3, 0.1]))
SPACING = (0.9, 1.1, 1.6)
ORIGIN = (-20.0, 13.0, 40.0)
SIZE = (60, 50, 40)


def _label_image(spheres):
    """Spheres (label, centre in mm LPS, radius mm) voxelised on an oblique, anisotropic grid."""
    img = sitk.Image(list(SIZE), sitk.sitkUInt16)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(tuple(DIRECTION.ravel()))
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in SIZE], indexing="ij"), -1).reshape(-1, 3)
    phys = np.asarray(ORIGIN) + (idx * SPACING) @ DIRECTION.T
    arr = np.zeros(len(idx), np.uint16)
    for label, centre, radius in spheres:
        arr[np.linalg.norm(phys - centre, axis=1) <= radius] = label
    out = sitk.GetImageFromArray(arr.reshape(SIZE).transpose(2, 1, 0).copy())
    out.CopyInformation(img)
    return out


def _centre(offset_voxels):
    return np.asarray(ORIGIN) + DIRECTION @ (np.asarray(offset_voxels) * SPACING)


def test_sphere_surface_lands_at_the_right_lps_position():
    centre, radius = _centre([30, 25, 20]), 15.0
    pts = labels_to_points(_label_image([(3, centre, radius)]), None, 2000, seed=0)
    r = np.linalg.norm(pts.points - centre, axis=1)
    assert pts.counts() == {3: 2000}
    assert abs(r.mean() - radius) < 0.3 and r.std() < 0.6  # staircase of ≤ half a voxel
    np.testing.assert_allclose(pts.points.mean(axis=0), centre, atol=0.4)
    # seeded: the same seed gives the same points, another seed other points
    again = labels_to_points(_label_image([(3, centre, radius)]), None, 2000, seed=0)
    np.testing.assert_array_equal(again.points, pts.points)


def test_two_organs_and_absent_requested_label_warns():
    a, b = _centre([18, 25, 20]), _centre([44, 25, 20])
    image = _label_image([(1, a, 9.0), (2, b, 8.0)])
    notes = []
    pts = labels_to_points(image, [1, 2, 5], 300, seed=1, notes=notes)
    assert pts.counts() == {1: 300, 2: 300}
    assert notes == ["labels: organ label 5 is absent from the label image; skipped"]
    with pytest.warns(UserWarning, match="organ label 5 is absent"):
        labels_to_points(image, [2, 5], 10)
    np.testing.assert_allclose(pts.points[pts.labels == 2].mean(axis=0), b, atol=0.5)


def test_empty_or_unusable_label_images():
    empty = _label_image([])
    with pytest.raises(InputError, match="expected a label image with at least one non-zero organ label"):
        labels_to_points(empty)
    image = _label_image([(1, _centre([30, 25, 20]), 8.0)])
    with pytest.raises(InputError, match=r"none of the requested organ labels \[4\] is present \(image has \[1\]\)"):
        labels_to_points(image, [4], 10, notes=[])
    with pytest.raises(InputError, match="expected integer organ labels"):
        labels_to_points(sitk.Cast(image, sitk.sitkFloat32) * 0.5)
    with pytest.raises(InputError, match="expected a scalar 3D label image"):
        labels_to_points(sitk.Image([5, 5], sitk.sitkUInt8))


def test_area_uniform_sampling_on_a_triangle_pair():
    # a 2 x 1 rectangle: one triangle of area 1 and another of area 0.25 keep a 4:1 share of the points
    verts = np.array([[0, 0, 0], [2, 0, 0], [2, 1, 0], [0, 0, 5], [1, 0, 5], [1, 0.5, 5]], float)
    pts = sample_surface(verts, np.array([[0, 1, 2], [3, 4, 5]]), 20000, np.random.default_rng(0))
    assert abs(np.mean(pts[:, 2] == 0) - 0.8) < 0.02


def test_label_images_register_and_skip_an_organ_missing_from_moving(tmp_path):
    a, b = _centre([18, 25, 20]), _centre([44, 25, 20])
    fixed = _label_image([(1, a, 9.0), (2, b, 8.0), (4, _centre([30, 40, 10]), 5.0)])
    moving = _label_image([(1, a + [2.0, 1.0, 0.0], 9.0), (2, b + [2.0, 1.0, 0.0], 8.0)])
    sitk.WriteImage(moving, str(tmp_path / "moving.nii.gz"))
    result = register_organ_point_cloud(fixed, str(tmp_path / "moving.nii.gz"),
                                        OrganPointCloudConfig(device="cpu", points_per_organ=150))
    assert result.diagnostics["skipped_labels"] == [4]
    assert result.diagnostics["points_per_organ"]["fixed"] == {1: 150, 2: 150}
    assert result.fixed_grid is not None and result.fixed_grid.size == SIZE
    moved = np.array(result.transform.TransformPoint(tuple(a)))
    np.testing.assert_allclose(moved, a + [2.0, 1.0, 0.0], atol=0.7)


def test_faces_cut_by_the_image_border_are_not_sampled():
    """A sphere cut by the first and last z slices of an oblique, anisotropic image: the flat faces closing it
    there lie in the planes index z = −0.5 and size − 0.5 and are the scan's edge, not the organ's surface."""
    image = _label_image([(4, _centre((30, 25, 20)), 40.0)])  # 40 mm radius > the image's 32 mm half-height
    to_index = np.linalg.inv(DIRECTION @ np.diag(SPACING))

    def on_border(points):
        k = (points.points - np.asarray(ORIGIN)) @ to_index.T
        return np.minimum(np.abs(k[:, 2] + 0.5), np.abs(k[:, 2] - (SIZE[2] - 0.5))) < 1e-6

    kept = labels_to_points(image, None, 3000, seed=2, keep_fov_faces=True)
    dropped = labels_to_points(image, None, 3000, seed=2)
    assert on_border(kept).mean() > 0.2  # the two caps are a large share of the cut sphere's closed surface
    assert on_border(dropped).sum() == 0
    assert len(dropped) == 3000

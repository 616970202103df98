"""MO-BCPD configuration: every bad parameter named in the issue gives an InputError that says what and why."""

import numpy as np
import pytest

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.methods.organ_point_cloud import OrganPointCloudConfig


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lambda_mm=0.0), r"lambda_mm: expected a positive number of mm, got 0.0"),
        (dict(lambda_mm=-3), r"lambda_mm: expected a positive number"),
        (dict(beta_mm={1: 30.0, 2: -1.0}), r"beta_mm: expected a positive number of mm, got -1.0 for label 2"),
        (dict(beta_mm=float("nan")), r"beta_mm: expected a positive number"),
        (dict(labels=[1, 2], coherence=[[1, 0.5], [0.4, 1]]), r"coherence: expected a symmetric matrix"),
        (dict(labels=[1, 2], coherence=[[1, 2], [2, 1]]), r"coherence: expected a positive semidefinite matrix"),
        (dict(labels=[1, 2], coherence=[[0, 0], [0, 1]]), r"coherence: expected a positive diagonal"),
        (dict(labels=[1, 2], coherence=np.eye(3)), r"coherence: expected a 2x2 matrix"),
        (dict(coherence=np.eye(2)), r"coherence: a matrix needs 'labels'"),
        (dict(coherence="sliding"), r"coherence: expected 'independent', 'global' or a matrix"),
        (dict(labels=[1, 2], label_transition=[[0.9, 0.2], [0.1, 0.9]]), r"label_transition: expected rows summing to 1"),
        (dict(labels=[1, 2], label_transition=[[1.2, -0.2], [0, 1]]), r"label_transition: expected finite non-negative"),
        (dict(labels=[1, 2], label_transition=[[1, 0], [1, 0]]), r"every column needs a positive entry"),
        (dict(rank=10), r"rank: expected an integer >= 20"),
        (dict(omega=1.0), r"omega: expected an outlier probability in \[0, 1\)"),
        (dict(dtype="float16"), r"dtype: expected 'float64' or 'float32'"),
        (dict(labels=[]), r"labels: expected None or a non-empty list"),
        (dict(points_per_organ=2), r"points_per_organ: expected an integer >= 4"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(InputError, match=message):
        OrganPointCloudConfig(**kwargs)


def test_global_coherence_is_accepted_although_singular():
    model = OrganPointCloudConfig(coherence="global").label_model([3, 1])
    np.testing.assert_array_equal(model.labels, [1, 3])
    np.testing.assert_array_equal(model.coherence, np.ones((2, 2)))
    assert model.components() == [[0, 1]]


def test_independent_organs_are_separate_kernel_blocks():
    model = OrganPointCloudConfig().label_model([1, 2, 5])
    assert model.components() == [[0], [1], [2]]
    np.testing.assert_array_equal(model.transition, np.eye(3))


def test_per_label_values_and_skipped_label_submatrices():
    cfg = OrganPointCloudConfig(labels=[1, 2, 3], lambda_mm={1: 5.0, 2: 10.0, 3: 15.0},
                                coherence=[[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]],
                                label_transition=[[0.8, 0.2, 0.0], [0.1, 0.8, 0.1], [0.0, 0.0, 1.0]])
    model = cfg.label_model([1, 2])  # label 3 skipped
    np.testing.assert_allclose(model.lambda_mm, [5.0, 10.0])
    np.testing.assert_allclose(model.coherence, [[1, 0.5], [0.5, 1]])
    np.testing.assert_allclose(model.transition, [[0.8, 0.2], [0.1 / 0.9, 0.8 / 0.9]])  # rows renormalised


def test_per_label_dict_must_cover_registered_labels():
    with pytest.raises(InputError, match=r"lambda_mm: expected a value for every registered label, got none for labels \[7\]"):
        OrganPointCloudConfig(lambda_mm={1: 5.0}).label_model([1, 7])


def test_field_classes_share_identical_kernel_rows():
    assert OrganPointCloudConfig(coherence="global").label_model([1, 2, 3]).field_classes().tolist() == [0, 0, 0]
    assert OrganPointCloudConfig().label_model([1, 2, 3]).field_classes().tolist() == [0, 1, 2]

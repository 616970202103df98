"""Synthetic contrasts from tissue maps and label maps (SynthSeg-style, random intensity per label): tissue classes get their drawn intensities, contrasts differ between
draws and repeat per seed, thick slices are constant within a slab, the bias field is smooth."""

import numpy as np
import pytest

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.methods.partial_prereg.synth import (BACKGROUND, CSF, GM, WM, LabelSynthConfig,
                                                               SynthConfig, synthetic_contrast,
                                                               synthetic_from_labels, thick_slices, tissue_stack)

PLAIN = SynthConfig(class_std=0.0, bias_strength=0.0, blur_sigma=(0.0, 0.0), thick_slice_probability=0.0,
                    noise_std=(0.0, 0.0), background_lift=0.0)


def _maps(shape=(20, 24, 28)):
    """Two tissue classes in halves of a ball, background outside."""
    z, y, x = np.indices(shape)
    ball = ((z - 10) ** 2 + (y - 12) ** 2 + (x - 14) ** 2) < 81
    return (ball & (x < 14)).astype(np.float32), (ball & (x >= 14)).astype(np.float32)


def test_each_class_gets_its_drawn_intensity_and_contrasts_differ():
    a, b = _maps()
    tissue = tissue_stack(a, b)
    assert tissue.shape == (3,) + a.shape and np.allclose(tissue.sum(axis=0), 1.0)
    image, info = synthetic_contrast(tissue, np.random.default_rng(1), PLAIN)
    lo, hi = np.percentile(image, [0.5, 99.5])
    means = np.array(info["means"])
    # without noise, bias and blur each class is one value; the order of class means is kept
    values = [float(np.median(image[m > 0.5])) for m in (tissue[0], a, b)]
    assert np.argsort(values).tolist() == np.argsort(means).tolist() and np.ptp(values) > 0.3
    other, info2 = synthetic_contrast(tissue, np.random.default_rng(2), PLAIN)
    assert info2["means"] != info["means"] and not np.allclose(other, image)
    again, _ = synthetic_contrast(tissue, np.random.default_rng(1), PLAIN)
    np.testing.assert_array_equal(again, image)
    assert image.dtype == np.float32 and image.min() >= 0.0 and image.max() <= 1.0 and lo < hi


def test_full_randomisation_keeps_the_anatomy_visible():
    a, b = _maps()
    image, info = synthetic_contrast(tissue_stack(a, b), np.random.default_rng(5), SynthConfig(
        thick_slice_probability=1.0))
    assert info["thick_slice_axis"] in (0, 1, 2) and 2 <= info["slab"] <= 6
    ball = (a + b) > 0.5
    assert abs(image[ball].mean() - image[~ball].mean()) > 0.05  # tissue still differs from background


def test_thick_slices_are_constant_within_each_slab():
    rng = np.random.default_rng(0)
    image = rng.random((10, 7, 5)).astype(np.float32)
    out = thick_slices(image, axis=1, slab=3)
    assert out.shape == image.shape
    np.testing.assert_allclose(out[:, 0], out[:, 2])
    np.testing.assert_allclose(out[:, 1], image[:, 0:3].mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(out[:, 6], image[:, 6])  # the last, partial slab of one slice
    assert not np.allclose(out[:, 2], out[:, 3])


def test_bad_inputs():
    with pytest.raises(InputError, match="tissue: expected"):
        synthetic_contrast(np.zeros((4, 4, 4)), np.random.default_rng(0))
    with pytest.raises(InputError, match="one shape"):
        tissue_stack(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))


def _label_map(shape=(20, 24, 28)):
    """Four labels: background, then three slabs of a ball (labels 1, 2, 3) in classes csf, gm, wm."""
    z, y, x = np.indices(shape)
    ball = ((z - 10) ** 2 + (y - 12) ** 2 + (x - 14) ** 2) < 81
    labels = np.where(ball, 1 + (x >= 11).astype(int) + (x >= 17).astype(int), 0)
    return labels.astype(np.int32), np.array([BACKGROUND, CSF, GM, WM])


def test_label_synthesis_follows_the_label_map():
    """Before bias, blur and noise every label is one intensity, its drawn mean; labels differ."""
    labels, groups = _label_map()
    cfg = LabelSynthConfig(acquisition=PLAIN)
    image, info = synthetic_from_labels(labels, groups, np.random.default_rng(3), cfg, family="random")
    means = np.array(info["means"])
    for lab in range(4):
        assert np.ptp(image[labels == lab]) < 1e-5  # constant within a label
    values = np.array([image[labels == lab][0] for lab in range(4)])
    assert np.argsort(values).tolist() == np.argsort(means).tolist()
    assert np.min(np.diff(np.sort(values))) > 0.01  # different across labels
    # with the per-voxel variation, still close to constant within a label and ordered like the means
    noisy, info2 = synthetic_from_labels(labels, groups, np.random.default_rng(3),
                                         LabelSynthConfig(acquisition=SynthConfig(
                                             bias_strength=0.0, blur_sigma=(0.0, 0.0), thick_slice_probability=0.0,
                                             noise_std=(0.0, 0.0), background_lift=0.0, class_std=0.02)),
                                         family="random")
    med = [np.median(noisy[labels == lab]) for lab in range(4)]
    assert np.argsort(med).tolist() == np.argsort(info2["means"]).tolist()
    again, _ = synthetic_from_labels(labels, groups, np.random.default_rng(3), cfg, family="random")
    np.testing.assert_array_equal(again, image)


@pytest.mark.parametrize("family, order", [("t1", (CSF, GM, WM)), ("t2", (WM, GM, CSF)), ("flair", (CSF, WM, GM))])
def test_label_synthesis_contrast_families(family, order):
    """T1: CSF < GM < WM; T2: bright CSF; FLAIR: dark CSF under bright-ish grey matter -- for every draw."""
    labels, groups = _label_map()
    cfg = LabelSynthConfig(acquisition=PLAIN, label_std=0.0)
    for seed in range(10):
        image, info = synthetic_from_labels(labels, groups, np.random.default_rng(seed), cfg, family=family)
        assert info["family"] == family
        by_class = {int(g): float(image[labels == lab].mean()) for lab, g in enumerate(groups)}
        assert by_class[order[0]] < by_class[order[1]] < by_class[order[2]]


def test_label_synthesis_draws_families_by_weight_and_bad_inputs():
    labels, groups = _label_map()
    only_t2 = LabelSynthConfig(family_weights=(0, 0, 1, 0, 0), acquisition=PLAIN)
    assert {synthetic_from_labels(labels, groups, np.random.default_rng(s), only_t2)[1]["family"]
            for s in range(5)} == {"t2"}
    mixed = {synthetic_from_labels(labels, groups, np.random.default_rng(s),
                                   LabelSynthConfig(acquisition=PLAIN))[1]["family"] for s in range(40)}
    assert len(mixed) >= 4
    with pytest.raises(InputError, match="labels: expected labels"):
        synthetic_from_labels(labels + 5, groups, np.random.default_rng(0))
    with pytest.raises(InputError, match="integer label map"):
        synthetic_from_labels(labels.astype(np.float32), groups, np.random.default_rng(0))
    with pytest.raises(InputError, match="family"):
        synthetic_from_labels(labels, groups, np.random.default_rng(0), family="ct")
    with pytest.raises(InputError, match="family_weights"):
        LabelSynthConfig(family_weights=(1, 0, 0))

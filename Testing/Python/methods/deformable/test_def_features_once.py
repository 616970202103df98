"""With a model, register_deformable computes the full-resolution similarity features (MIND descriptors) of each
image once: the "before" similarity reuses them. Behaviour unchanged: "before" is still the score of the
identity (after the initial transform), the same number with and without a network start."""

import pytest
import SimpleITK as sitk
import torch

from RegistrationSuiteLib.deform import gaussian_smooth, optimise_field, score_field, warp_image
from RegistrationSuiteLib.deform import optimize as optimize_module
from RegistrationSuiteLib.deform.optimize import InstanceOptimisationConfig
from RegistrationSuiteLib.methods.deformable import DeformableConfig, FieldUNet, register_deformable
from RegistrationSuiteLib.methods.deformable.network import DeformableModel

SIZE, SPACING = 20, 2.0


def tiny_model():
    """An untrained FieldUNet with a MIND correlation layer (its own MIND calls are not the optimiser's)."""
    torch.manual_seed(0)
    net = FieldUNet(3, (4, 8), (8, 4), correlation_radius=1, correlation_sigma=1.0)
    return DeformableModel(net.eval(), SPACING, "mr", {}, "tiny")


def shifted_pair():
    torch.manual_seed(1)
    moving = gaussian_smooth(torch.rand(1, 1, SIZE, SIZE, SIZE), 1.5)
    u = torch.zeros(1, 3, SIZE, SIZE, SIZE)
    u[:, 0] = 1.5
    fixed = warp_image(moving, u)

    def image(t):
        img = sitk.GetImageFromArray(t[0, 0].numpy().astype("float32"))
        img.SetSpacing((SPACING,) * 3)
        img.SetOrigin((3.0, -5.0, 7.0))
        return img

    return image(fixed), image(moving)


@pytest.fixture
def feature_calls(monkeypatch):
    """Shapes of the images whose similarity features the optimiser and the scores compute."""
    calls = []
    real = optimize_module.make_similarity

    def counting(*args, **kwargs):
        sim = real(*args, **kwargs)
        features = sim.features

        def counted(x):
            calls.append(tuple(x.shape[2:]))
            return features(x)

        sim.features = counted
        return sim

    monkeypatch.setattr(optimize_module, "make_similarity", counting)
    return calls


@pytest.mark.parametrize("io_steps", [6, 0], ids=["network + optimisation", "network only"])
def test_full_resolution_features_once_per_image_with_a_model(feature_calls, io_steps):
    fixed, moving = shifted_pair()
    cfg = DeformableConfig(similarity="mind", io_steps=io_steps, spacing_mm=SPACING, device="cpu",
                           network_skip_levels=0)
    result = register_deformable(fixed, moving, cfg, model=tiny_model())
    grid = tuple(result.diagnostics["working_grid"]["size"][::-1])  # (z, y, x) as the tensors hold it
    full = [shape for shape in feature_calls if shape == grid]
    assert len(full) == 2, feature_calls  # fixed once, moving once (it was twice each)
    assert result.diagnostics["network"] == "tiny"


def test_before_is_the_identity_score_with_and_without_a_model():
    fixed, moving = shifted_pair()
    cfg = DeformableConfig(similarity="mind", io_steps=6, spacing_mm=SPACING, device="cpu")
    plain = register_deformable(fixed, moving, cfg)
    started = register_deformable(fixed, moving, cfg, model=tiny_model())
    before = plain.diagnostics["similarity"]["before"]
    assert started.diagnostics["similarity"]["before"] == pytest.approx(before, abs=1e-6)
    assert started.diagnostics["similarity"]["after"] > before  # a real optimisation happened


@pytest.mark.parametrize("similarity", ["mind", "lncc"])
def test_optimise_field_scores_the_identity_from_its_own_features(similarity):
    torch.manual_seed(2)
    moving = gaussian_smooth(torch.rand(1, 1, 16, 16, 16), 1.5)
    fixed = warp_image(moving, 1.2 * torch.ones(1, 3, 16, 16, 16))
    config = InstanceOptimisationConfig(similarity=similarity, levels=(2, 1), steps=(3, 3))
    initial = 0.8 * torch.ones(1, 3, 16, 16, 16)
    started = optimise_field(fixed, moving, config, initial=initial)
    identity = score_field(similarity, fixed, moving, torch.zeros_like(initial))
    assert started.similarity_identity == pytest.approx(identity, abs=1e-6)
    assert started.similarity_before != pytest.approx(identity, abs=1e-4)  # the initial field is not the identity
    plain = optimise_field(fixed, moving, config)
    assert plain.similarity_identity == plain.similarity_before == pytest.approx(identity, abs=1e-6)

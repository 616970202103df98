"""GlobalRigidConfig validation: clear InputErrors naming the setting."""

import pytest

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.methods.global_rigid import GlobalRigidConfig


def test_defaults_are_consistent_and_serialisable():
    cfg = GlobalRigidConfig()
    assert cfg.num_levels == len(cfg.blur_mm) == len(cfg.num_rotations) == len(cfg.keep)
    assert cfg.perturbation_deg[0] >= 180 and cfg.min_overlap == 0.5 and cfg.epsilon == 1e-5
    assert cfg.to_dict()["seed"] == 0 and cfg.device == "auto" and cfg.refine


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"blur_mm": (1.0, 2.0)}, "equal lengths"),
        ({"level_spacing_mm": 4.0}, "level_spacing_mm"),
        ({"min_overlap": 0.0}, "min_overlap"),
        ({"min_overlap": 1.5}, "min_overlap"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"perturbation_deg": (20.0, 20.0, 7.0)}, "perturbation_deg"),
        ({"num_rotations": (100, 2, 45)}, "num_rotations"),
        ({"keep": (8, 0, 2)}, "keep"),
        ({"intensity_percentiles": (99.0, 1.0)}, "intensity_percentiles"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_shift_mm": -3.0}, "max_shift_mm"),
        ({"local_shift_window": 1.5}, "local_shift_window"),
        ({"level_spacing_mm": (10.0, 0.0, 2.5)}, "level_spacing_mm"),
    ],
)
def test_invalid_settings_raise_input_error_naming_them(kwargs, match):
    with pytest.raises(InputError, match=match):
        GlobalRigidConfig(**kwargs)


def test_lists_are_accepted_and_stored_as_tuples():
    cfg = GlobalRigidConfig(level_spacing_mm=[8.0], blur_mm=[4.0], num_rotations=[100], perturbation_deg=[180],
                            keep=[2])
    assert cfg.level_spacing_mm == (8.0,) and cfg.num_levels == 1

"""HistologyConfig validation: every field checked, errors name the field."""

import pytest

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.methods.histology import HistologyConfig


def test_defaults_valid_and_torch_free_import():
    import subprocess
    import sys

    cfg = HistologyConfig()
    assert cfg.mirror == "auto" and cfg.model is None
    code = ("import sys; import RegistrationSuiteLib.methods.histology as h; h.HistologyConfig(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("kwargs, field", [
    ({"level": 1, "resolution_um": 2.0}, "level, resolution_um"),
    ({"level": -1}, "level"),
    ({"resolution_um": 0.0}, "resolution_um"),
    ({"working_size": 16}, "working_size"),
    ({"search_size": 600, "working_size": 512}, "search_size"),
    ({"rotation_step_deg": 90.0}, "rotation_step_deg"),
    ({"mirror": "maybe"}, "mirror"),
    ({"candidates": 0}, "candidates"),
    ({"io_steps": -1}, "io_steps"),
    ({"io_smoothness": float("nan")}, "io_smoothness"),
    ({"io_similarity": "mi"}, "io_similarity"),
    ({"io_size": 16}, "io_size"),
    ({"iterations": 0}, "iterations"),
    ({"num_threads": 0}, "num_threads"),
])
def test_invalid_fields_are_named(kwargs, field):
    with pytest.raises(InputError, match=f"^{field}:"):
        HistologyConfig(**kwargs)


def test_read_size_covers_the_instance_optimisation_grid():
    """The slide level read must be fine enough for the finest enabled stage's grid."""
    assert HistologyConfig(working_size=256, io_size=512).read_size == 256  # stage off (default)
    assert HistologyConfig(working_size=256, io_size=512, io_steps=10).read_size == 512
    assert HistologyConfig(working_size=256, io_size=128, io_steps=10).read_size == 256
    assert HistologyConfig(working_size=256, io_size=512, io_steps=10, model="m").read_size == 256

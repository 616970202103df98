"""local_rigid_search: recovery from a rough seed, the seed's neighbourhood being respected, seed bookkeeping,
and input errors."""

import numpy as np
import pytest
import torch
from gr_phantoms import corner_error, make_grid, rigid, rotation, sample

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.methods.global_rigid.local import candidate_from_matrix, local_rigid_search
from RegistrationSuiteLib.methods.global_rigid.rotations import rotation_distance_deg

SMALL = dict(level_spacing_mm=(6.0, 3.0), blur_mm=(4.0, 2.0), rotations_per_seed=60, refine_iterations=30,
             device="cpu")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _case():
    cm, cf = np.array([10.0, -5.0, 20.0]), np.array([-30.0, 12.0, 5.0])
    fgrid = make_grid((48, 48, 48), (3.0, 3.0, 3.0), centre=cf)
    mgrid = make_grid((40, 40, 40), (3.0, 3.0, 3.0), centre=cm)
    truth = rigid(rotation((1.0, 2.0, -1.0), 25.0), cf, cm - cf + np.array([8.0, -12.0, 6.0]))
    return sample(fgrid, cm, truth), sample(mgrid, cm), truth


def _offset(matrix, degrees, shift_mm):
    """``matrix`` turned by ``degrees`` about an oblique axis (about the moving point of the fixed centre)
    and shifted by ``shift_mm``."""
    out = np.array(matrix, float)
    out[:3, :3] = rotation((0.3, -1.0, 0.5), degrees) @ out[:3, :3]
    out[:3, 3] += np.asarray(shift_mm, float)
    return out


def test_candidate_from_matrix_round_trips():
    m = rigid(rotation((1.0, 0.2, 0.0), 33.0), np.zeros(3), np.array([4.0, -7.0, 2.5]))
    c_m = np.array([5.0, 6.0, -7.0])
    cand = candidate_from_matrix(m, c_m)
    p = np.array([[1.0, 2.0, 3.0], [-20.0, 4.0, 9.0]])
    q = (cand.rotation @ (p - cand.anchor).T).T + c_m  # the search's q = R (p - a) + c_M
    np.testing.assert_allclose(q, p @ m[:3, :3].T + m[:3, 3], atol=1e-9)
    reflection = np.diag([-1.0, 1.0, 1.0, 1.0])
    with pytest.raises(InputError, match="reflection"):
        candidate_from_matrix(reflection, c_m)


def test_recovers_truth_from_a_seed_20mm_and_12_degrees_off():
    fixed, moving, truth = _case()
    seed = _offset(truth, 12.0, [14.0, -10.0, 9.0])
    assert corner_error(fixed, seed, truth) > 15.0
    result = local_rigid_search(fixed, moving, [seed], window_mm=30.0, perturbation_deg=20.0, **SMALL)
    estimate = result.fixed_to_moving_matrix
    assert corner_error(fixed, estimate, truth) < 3.0
    assert rotation_distance_deg(estimate[:3, :3], truth[:3, :3]) < 2.0
    assert result.method == "local_rigid_search"
    cands = result.diagnostics["candidates"]
    assert cands[0]["seed"] == 0 and len(result.diagnostics["seed_scores"]) == 1
    np.testing.assert_allclose(np.asarray(cands[0]["fixed_to_moving"]), estimate, atol=1e-6)


def test_best_of_several_seeds_and_which_seed_it_came_from():
    fixed, moving, truth = _case()
    far = _offset(truth, 60.0, [-40.0, 30.0, 25.0])  # nowhere near: its window does not contain the truth
    near = _offset(truth, 8.0, [10.0, 5.0, -8.0])
    result = local_rigid_search(fixed, moving, [far, near], window_mm=20.0, perturbation_deg=15.0, keep=2, **SMALL)
    assert corner_error(fixed, result.fixed_to_moving_matrix, truth) < 3.0
    assert result.diagnostics["candidates"][0]["seed"] == 1


def test_the_search_stays_within_the_window():
    fixed, moving, truth = _case()
    seed = _offset(truth, 0.0, [40.0, 0.0, 0.0])  # 40 mm away, window 12 mm: the truth is out of reach
    result = local_rigid_search(fixed, moving, [seed], window_mm=12.0, perturbation_deg=5.0,
                                **dict(SMALL, refine_iterations=0))
    moved = result.fixed_to_moving_matrix[:3, 3] - seed[:3, 3]
    assert np.abs(moved).max() <= 12.0 + 2 * 6.0 + 3 * 3.0  # level-1 window + widening, level-2 window
    assert corner_error(fixed, result.fixed_to_moving_matrix, truth) > 10.0


def test_bad_arguments_raise_input_error():
    fixed, moving, truth = _case()
    with pytest.raises(InputError, match="seeds"):
        local_rigid_search(fixed, moving, [], **SMALL)
    with pytest.raises(InputError, match="seeds"):
        local_rigid_search(fixed, moving, [np.eye(3)], **SMALL)
    with pytest.raises(InputError, match="window_mm"):
        local_rigid_search(fixed, moving, [truth], window_mm=0.0, **SMALL)
    with pytest.raises(InputError, match="rotations_per_seed"):
        local_rigid_search(fixed, moving, [truth], **dict(SMALL, rotations_per_seed=0))


def _stripes(size, spacing, period_mm):
    """Planes of constant intensity every ``period_mm`` along x: a pose shifted by one period along x (or any
    shift along y and z) looks the same."""
    x = np.arange(size[0]) * spacing
    arr = np.broadcast_to(np.sin(2 * np.pi * x / period_mm)[None, None, :], size[::-1]).astype(np.float32)
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing((spacing,) * 3)
    return img


def test_confidence_separates_a_clear_case_from_an_ambiguous_one():
    # Same seeding in both cases: one seed near the truth and one a stripe period (18 mm) along x away, each
    # searched within ± 8 mm. Each rotation keeps only its best shift, so alternatives come from the seeds.
    def search(fixed, moving, truth):
        seeds = [_offset(truth, 3.0, [2.0, -2.0, 1.0]), _offset(truth, 0.0, [18.0, 0.0, 0.0])]
        return local_rigid_search(fixed, moving, seeds, window_mm=8.0, perturbation_deg=6.0, **SMALL)

    fixed, moving, truth = _case()
    clear = search(fixed, moving, truth)
    first = clear.diagnostics["first_level"]
    assert 0.0 <= first["runner_up"] < first["best"]  # 0: no separate peak (the other window is a flank)
    assert clear.confidence == pytest.approx(1.0 - first["runner_up"] / first["best"])
    import SimpleITK as sitk

    fixed_s = _stripes((48, 48, 48), 3.0, 18.0)
    moving_s = sitk.RegionOfInterest(fixed_s, [14, 14, 14], [16, 16, 16])
    ambiguous = search(fixed_s, moving_s, np.eye(4))
    first_s = ambiguous.diagnostics["first_level"]
    assert first_s["runner_up_distance_mm"] > 2 * 6.0  # an alternative more than two 6 mm voxels away ...
    assert ambiguous.confidence < 0.1 and clear.confidence > 0.3  # ... scores as well as the best: ambiguous

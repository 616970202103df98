"""register_partial_prereg end to end with the shipped model and sample, and every bad input of the issue."""

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationSuiteLib.errors import InputError, RegistrationFailed
from RegistrationSuiteLib.geometry import Grid, apply_affine, rigid_about_center
from RegistrationSuiteLib.methods.partial_prereg import (
    DEFAULT_MODEL,
    PartialPreregConfig,
    build_template,
    load_tspm_model,
    register_partial_prereg,
)
from RegistrationSuiteLib.methods.partial_prereg import register as register_module
from RegistrationSuiteLib.models.registry import resolve_model
from RegistrationSuiteLib.sample_data import load_sample

CPU = PartialPreregConfig(device="cpu")


def _moved_crop(image, start, size, angles_deg, offset_mm):
    """A crop of ``image`` moved into its own frame; returns (moving, true fixed→moving)."""
    crop = sitk.RegionOfInterest(image, size, start)
    a = np.radians(angles_deg)
    r = sitk.Euler3DTransform((0, 0, 0), *a).GetMatrix()
    r = np.asarray(r).reshape(3, 3)
    c = Grid.from_image(crop).center()
    truth = rigid_about_center(r, c, offset_mm)
    moved = sitk.Image(crop)
    moved.SetDirection((r @ np.asarray(crop.GetDirection()).reshape(3, 3)).ravel().tolist())
    moved.SetOrigin(apply_affine(truth, np.asarray(crop.GetOrigin())[None])[0].tolist())
    return moved, truth


def _anchor_error(moving, estimate, truth):
    axes = [np.linspace(0, s - 1, 5) for s in moving.GetSize()]
    pts = apply_affine(Grid.from_image(moving).index_to_world(),
                       np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1).T)
    return np.linalg.norm(apply_affine(np.linalg.inv(estimate), pts) - apply_affine(np.linalg.inv(truth), pts),
                          axis=1).mean()


def test_end_to_end_shipped_model_on_shipped_sample():
    register_module._FIXED_CACHE.clear()
    fixed = load_sample("T2")
    moving, truth = _moved_crop(load_sample("T1"), [8, 12, 20], [44, 48, 36], (8.0, -6.0, 10.0), (30.0, -25.0, 20.0))
    result = register_partial_prereg(fixed, moving, CPU)  # run time: bench_partial_prereg.py, not a unit test
    assert _anchor_error(moving, result.fixed_to_moving_matrix, truth) < 4.0
    d = result.diagnostics
    assert d["ransac"]["consensus"] and d["ransac"]["num_inliers"] >= 12 and len(d["ransac"]["residuals_mm"]) > 20
    assert d["refinement"]["metric"] == "mi" and d["refinement"]["after"] >= d["refinement"]["before"]
    assert d["fixed_to_template"]["cached"] is False and result.confidence == d["local_search"]["confidence"]
    assert result.confidence > 0.05  # a clear case: no alternative pose scores nearly as well
    assert d["initialisation"]["chosen"] in ("local_search_from_ransac", "local_search_from_orientation_prior")
    assert set(d["local_search"]["seeds"]) == {"ransac", "orientation_prior"}
    assert d["moving_inside_fixed"] == 1.0 and d["doubtful"] == [], d["doubtful"]
    assert result.summary()["method"] == "partial_prereg"  # JSON-serialisable diagnostics


def test_without_local_search_the_tspm_candidates_are_refined_directly():
    fixed = load_sample("T2")
    moving, truth = _moved_crop(load_sample("T1"), [8, 12, 20], [44, 48, 36], (8.0, -6.0, 10.0), (30.0, -25.0, 20.0))
    result = register_partial_prereg(fixed, moving, dataclasses.replace(CPU, local_search=False))
    d = result.diagnostics
    assert "local_search" not in d
    assert d["initialisation"]["chosen"] in ("ransac", "orientation_prior")
    assert set(d["initialisation"]["candidates"]) == {"ransac", "orientation_prior"}


def test_non_3d_images_rejected():
    img2d = sitk.GetImageFromArray(np.random.default_rng(0).random((40, 40)).astype(np.float32))
    with pytest.raises(InputError, match="moving: expected a 3D image, got a 2D image"):
        register_partial_prereg(load_sample("T2"), img2d, CPU)
    with pytest.raises(InputError, match="fixed: expected a 3D image, got a 2D image"):
        register_partial_prereg(img2d, load_sample("T1"), CPU)


def test_moving_too_small_for_patches_is_searched_without_the_network():
    # the case: a 28 x 46 x 32 mm crop (thinner than a 16³ patch at template scale, 23.6 mm), moved
    fixed = load_sample("T2")
    moving, truth = _moved_crop(load_sample("T1"), [20, 25, 30], [14, 23, 16], (8.0, -6.0, 10.0),
                                (30.0, -25.0, 20.0))
    assert np.allclose(np.asarray(moving.GetSize()) * moving.GetSpacing(), [28, 46, 32])
    result = register_partial_prereg(fixed, moving, CPU)
    d = result.diagnostics
    assert "16³ patch" in d["network_skipped"]["reason"] and "ransac" not in d
    assert {"centre", "lattice_0"} <= set(d["local_search"]["seeds"])
    assert any("network was skipped" in r for r in d["doubtful"])
    assert 0.0 <= result.confidence <= 1.0 and result.confidence == d["local_search"]["confidence"]
    assert _anchor_error(moving, result.fixed_to_moving_matrix, truth) < 4.0


def test_constant_moving_image_is_an_input_error():
    flat = sitk.Image([30, 30, 30], sitk.sitkFloat32) + 7.0
    with pytest.raises(InputError, match="moving: image is constant"):
        register_partial_prereg(load_sample("T2"), flat, CPU)


def test_too_few_foreground_patches_searches_without_the_network(monkeypatch):
    arr = np.zeros((40, 40, 40), np.float32)
    arr[:, :, :3] = 100.0  # a thin bright slab: almost every patch is background
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 2.0, 2.0))
    seen = []

    def fake_search(fixed, moving, seeds, **kw):
        from RegistrationSuiteLib.result import RegistrationResult

        seen.append(len(seeds))
        return RegistrationResult("local_rigid_search", sitk.Euler3DTransform(), confidence=0.4, diagnostics={
            "seed_scores": [0.1] * len(seeds), "candidates": [{"seed": 1, "score": 0.7, "fixed_to_moving": np.eye(4)}]})

    import RegistrationSuiteLib.methods.global_rigid.local as local_module

    monkeypatch.setattr(local_module, "local_rigid_search", fake_search)
    result = register_partial_prereg(load_sample("T2"), img, dataclasses.replace(CPU, refine="none"))
    assert "too few foreground patches" in result.diagnostics["network_skipped"]["reason"]
    assert seen and seen[0] >= 2 and result.confidence == 0.4
    assert result.diagnostics["initialisation"]["chosen"].startswith("local_search_from_")


def _random_predictions(monkeypatch):
    def fake(net, patches, *, device, batch_size=128):
        return np.random.default_rng(0).uniform(0.0, 1.0, (len(patches), 3))

    monkeypatch.setattr(register_module, "predict_positions", fake)
    monkeypatch.setattr(register_module, "_fixed_to_template", lambda *a, **k: np.eye(4))


def _fake_local_search(monkeypatch, similarity):
    """local_rigid_search returning its first seed with the given normalised NGF similarity per call."""
    calls = []

    def fake(fixed, moving, seeds, **kw):
        from RegistrationSuiteLib.result import RegistrationResult

        score = similarity[min(len(calls), len(similarity) - 1)]
        best = 1 if len(seeds) == 2 and score == "second" else 0
        calls.append(dict(kw, num_seeds=len(seeds)))
        return RegistrationResult("local_rigid_search", sitk.Euler3DTransform(), confidence=0.25, diagnostics={
            "seed_scores": [0.1] * len(seeds),
            "candidates": [{"seed": best, "score": 0.7 if score == "second" else score,
                            "fixed_to_moving": seeds[best]}]})

    import RegistrationSuiteLib.methods.global_rigid.local as local_module

    monkeypatch.setattr(local_module, "local_rigid_search", fake)
    return calls


def _fake_global(monkeypatch):
    calls = []

    def fake_global(fixed, moving, config=None, **kw):
        calls.append(config)
        from RegistrationSuiteLib.result import RegistrationResult

        return RegistrationResult("global_rigid", sitk.Euler3DTransform(), score=0.3, confidence=0.5)

    import RegistrationSuiteLib.methods.global_rigid as gr

    monkeypatch.setattr(gr, "register_global_rigid", fake_global)
    return calls


NO_REFINE = PartialPreregConfig(device="cpu", refine="none")


def test_no_consensus_without_fallback_fails_clearly(monkeypatch):
    _random_predictions(monkeypatch)
    _fake_local_search(monkeypatch, [0.4])  # the orientation prior's neighbourhood matches poorly
    with pytest.raises(RegistrationFailed, match="RANSAC found no consensus.*matched poorly"):
        register_partial_prereg(load_sample("T2"), load_sample("T1"),
                                dataclasses.replace(NO_REFINE, fallback_to_global=False))


def test_no_consensus_seeds_the_local_search_from_the_orientation_prior(monkeypatch):
    _random_predictions(monkeypatch)
    searches, globals_ = _fake_local_search(monkeypatch, [0.8]), _fake_global(monkeypatch)
    result = register_partial_prereg(load_sample("T2"), load_sample("T1"), NO_REFINE)
    d = result.diagnostics
    assert not d["ransac"]["consensus"] and globals_ == [] and len(searches) == 1
    assert searches[0]["num_seeds"] == 7  # the prior and its six neighbours
    assert set(d["local_search"]["seeds"]) == {"orientation_prior", *(f"orientation_prior_{s}{a}" for s in "+-"
                                                                        for a in "xyz")}
    assert d["fallback"]["chosen"] == "orientation_prior" and result.confidence == 0.25
    assert any("no RANSAC consensus" in r for r in d["doubtful"])
    # the prior's neighbours are one window step (1.5 x 40 mm) away along the fixed axes
    seeds = {k: np.linalg.inv(v) for k, v in register_module.neighbour_seeds(
        "p", np.eye(4), load_sample("T2"), 40.0).items()}
    np.testing.assert_allclose(seeds["p_+x"][:3, 3] - seeds["p"][:3, 3],
                               60.0 * np.asarray(load_sample("T2").GetDirection()).reshape(3, 3)[:, 0])


def test_no_consensus_and_a_poor_prior_ranks_it_against_the_global_search(monkeypatch):
    _random_predictions(monkeypatch)
    searches, globals_ = _fake_local_search(monkeypatch, [0.4, "second"]), _fake_global(monkeypatch)
    result = register_partial_prereg(load_sample("T2"), load_sample("T1"), NO_REFINE)
    d = result.diagnostics
    assert len(globals_) == 1 and len(searches) == 2 and searches[1]["num_seeds"] == 2
    assert set(d["local_search"]["seeds"]) == {"orientation_prior_search", "global_search"}
    assert d["fallback"]["chosen"] == "global_search" and "local_search_orientation_prior" in d
    assert d["initialisation"]["chosen"] == "local_search_from_global_search"
    assert any("no consensus" in w for w in result.warnings) and d["doubtful"]


def test_no_consensus_without_local_search_falls_back_to_global_search(monkeypatch):
    _random_predictions(monkeypatch)
    globals_ = _fake_global(monkeypatch)
    result = register_partial_prereg(load_sample("T2"), load_sample("T1"),
                                     dataclasses.replace(NO_REFINE, local_search=False))
    assert len(globals_) == 1 and result.diagnostics["fallback"]["used"] and result.confidence == 0.5
    assert not result.diagnostics["ransac"]["consensus"]
    assert any("no consensus" in w for w in result.warnings) and result.diagnostics["doubtful"]


def test_corrupt_model_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(resolve_model(DEFAULT_MODEL).read_bytes()[:100_000])
    with pytest.raises(InputError, match="corrupt or truncated"):
        register_partial_prereg(load_sample("T2"), load_sample("T1"), CPU, model=str(bad))


def test_model_template_mismatch(tmp_path):
    other = build_template(load_sample("T2"), name="other", canvas_size=64)
    other.write(tmp_path / "other.nii.gz")
    with pytest.raises(InputError, match="model/template mismatch"):
        register_partial_prereg(load_sample("T2"), load_sample("T1"),
                                PartialPreregConfig(device="cpu", template_path=str(tmp_path / "other.nii.gz")))


def test_model_with_wrong_weights(tmp_path):
    from RegistrationSuiteLib.models.model_file import load_model, save_model

    model = load_model(resolve_model(DEFAULT_MODEL))
    model.state_dict = {k.replace("head.", "fc."): v for k, v in model.state_dict.items()}
    save_model(model, tmp_path / "renamed.pt")
    with pytest.raises(InputError, match="weights do not match the network: missing keys"):
        load_tspm_model(str(tmp_path / "renamed.pt"))


def test_config_validation():
    with pytest.raises(InputError, match="refine: expected one of mse, nmi, mi, none, got 'ncc'"):
        PartialPreregConfig(refine="ncc")
    with pytest.raises(InputError, match="min_patches: expected <= num_patches"):
        PartialPreregConfig(num_patches=10, min_patches=20)
    with pytest.raises(InputError, match="ransac_threshold_mm"):
        PartialPreregConfig(ransac_threshold_mm=0)
    with pytest.raises(InputError, match="local_search_window_mm: expected a positive number"):
        PartialPreregConfig(local_search_window_mm=0)
    with pytest.raises(InputError, match="local_search_deg"):
        PartialPreregConfig(local_search_deg=-5)
    with pytest.raises(InputError, match="local_search_rotations: expected an integer >= 1"):
        PartialPreregConfig(local_search_rotations=0)
    for bad in ((), (0.0,), (2.0, 4.0), ("2",)):
        with pytest.raises(InputError, match="local_search_fine_levels_mm: expected positive spacings"):
            PartialPreregConfig(local_search_fine_levels_mm=bad)
    with pytest.raises(InputError, match="local_search_widen_below: expected a similarity in"):
        PartialPreregConfig(local_search_widen_below=1.5)
    with pytest.raises(InputError, match="local_search_fine_below_mm"):
        PartialPreregConfig(local_search_fine_below_mm=-1)
    for bad in (0, -10.0, True, "25"):
        with pytest.raises(InputError, match="local_search_first_window_mm: expected a positive number or None"):
            PartialPreregConfig(local_search_first_window_mm=bad)
    assert PartialPreregConfig(local_search_first_window_mm=None, local_search_window_mm=35).first_window_mm() == 35.0
    assert PartialPreregConfig(local_search_first_window_mm=20).first_window_mm() == 20.0
    assert PartialPreregConfig(local_search_fine_levels_mm=[4, 2]).local_search_fine_levels_mm == (4.0, 2.0)
    with pytest.raises(InputError, match="config: expected a PartialPreregConfig"):
        register_partial_prereg(load_sample("T2"), load_sample("T1"), {"refine": "mi"})


def _stroke_tiny_case(shared_data, contrast, start, size, truth_rows):
    """A tiny crop of the stroke subject moved into its own frame by ``truth`` (rows of the true fixed → moving
    matrix, as the benchmark's case generator makes them). These two crops come from the development cases drawn
    with seed 11 (``diagnose_tspm_pipeline.py --seed 11``), not from the benchmark's seed 0."""
    source = sitk.ReadImage(str(shared_data / "brain" / "stroke" / f"{contrast}.nii.gz"), sitk.sitkFloat32)
    truth = np.asarray(truth_rows + [[0.0, 0.0, 0.0, 1.0]], float)
    u, _, vt = np.linalg.svd(truth[:3, :3])
    truth[:3, :3] = u @ vt
    crop = sitk.RegionOfInterest(source, size, start)
    moved = sitk.Image(crop)
    moved.SetDirection((truth[:3, :3] @ np.asarray(crop.GetDirection()).reshape(3, 3)).ravel().tolist())
    moved.SetOrigin(apply_affine(truth, np.asarray(crop.GetOrigin())[None])[0].tolist())
    return moved, truth


@pytest.mark.slow
def test_tiny_crop_is_searched_on_the_finer_levels(shared_data):
    """A 34 x 51 x 41 mm FLAIR crop against the T1: at 5 mm the crop is a handful of voxels and the search's first
    level picked a place 37 mm off (normalised NGF similarity 0.45 there, 0.61 at the truth); searched at 2.5 mm
    it is found."""
    fixed = sitk.ReadImage(str(shared_data / "brain" / "stroke" / "T1.nii.gz"), sitk.sitkFloat32)
    moving, truth = _stroke_tiny_case(shared_data, "FLAIR", [26, 58, 60], [34, 51, 41], [
        [0.988695, -0.07131, -0.131895, 35.499372], [0.063538, 0.996037, -0.062232, 65.979196],
        [0.13581, 0.053148, 0.989308, -35.095772]])
    result = register_partial_prereg(fixed, moving, CPU)
    assert _anchor_error(moving, result.fixed_to_moving_matrix, truth) < 4.0
    assert result.diagnostics["local_search"]["levels_mm"] == [2.5]


@pytest.mark.slow
def test_poorly_matching_local_search_is_widened(shared_data, monkeypatch):
    """A 38 x 51 x 48 mm T2 crop against the T1 whose TSPM candidates are moved 55 mm (template x) away from what
    the network says, so that the truth lies beyond the local search's ±40 mm window (as it did with the previous
    model's own candidates, 54 mm off): the first search matches poorly, the search from the candidates'
    neighbours and the centre finds the truth."""
    fixed = sitk.ReadImage(str(shared_data / "brain" / "stroke" / "T1.nii.gz"), sitk.sitkFloat32)
    moving, truth = _stroke_tiny_case(shared_data, "T2", [55, 23, 14], [38, 51, 48], [
        [0.974118, -0.057878, -0.218506, -30.306065], [0.056669, 0.998323, -0.011803, -69.517382],
        [0.218823, -0.000885, 0.975764, 51.813734]])
    real = register_module._moving_to_template

    def displaced(*args, **kwargs):
        candidates, ransac = real(*args, **kwargs)
        shift = np.eye(4)
        shift[0, 3] = 55.0
        return {name: shift @ m for name, m in candidates.items()}, ransac

    monkeypatch.setattr(register_module, "_moving_to_template", displaced)
    result = register_partial_prereg(fixed, moving, CPU)
    assert _anchor_error(moving, result.fixed_to_moving_matrix, truth) < 4.0
    widened = result.diagnostics["local_search_widened"]
    assert widened["kept"] == "widened"
    first = next(iter(widened["first"]["candidates"].values()))["ngf_similarity"]
    assert first < CPU.local_search_widen_below
    assert not any("agree poorly" in r for r in result.diagnostics["doubtful"])


def test_widening_runs_only_after_a_poor_match_and_keeps_the_better_search(monkeypatch):
    """``_widen_if_poor``: no second search when the first matched well; otherwise one from every seed's six
    neighbours and the centre, and the search with the higher normalised NGF similarity is kept."""
    fixed = load_sample("T2")
    moving = load_sample("T1")[10:40, 10:40, 10:30]
    seeds = {"ransac": np.eye(4), "orientation_prior": np.eye(4)}
    calls = []

    def fake_search(fixed_, moving_, inits, fmask, cfg, diag, prog, **kw):
        calls.append(sorted(inits))
        diag["local_search"] = {"candidates": {"local_search_from_centre": {"ngf_similarity": score}}}
        return {"local_search_from_centre": np.full((4, 4), 2.0)}

    monkeypatch.setattr(register_module, "_local_search", fake_search)
    first = {"local_search_from_ransac": np.eye(4)}
    for first_score, score, kept in ((0.7, 0.9, None), (0.5, 0.8, "widened"), (0.5, 0.4, "first")):
        calls.clear()
        diag = {"local_search": {"candidates": {"local_search_from_ransac": {"ngf_similarity": first_score}}}}
        out = register_module._widen_if_poor(fixed, moving, first, seeds, None, CPU, diag, None)
        if kept is None:
            assert calls == [] and out is first and "local_search_widened" not in diag
            continue
        assert len(calls) == 1 and len(calls[0]) == 2 * 7 + 1 and "centre" in calls[0]
        assert {"ransac_+x", "ransac_-z", "orientation_prior_+y"} <= set(calls[0])
        assert diag["local_search_widened"]["kept"] == kept
        assert (out is first) == (kept == "first")
        chosen_score = diag["local_search"]["candidates"][next(iter(out))]["ngf_similarity"]
        assert chosen_score == max(first_score, score)


def test_network_free_seeding_ablation_runs_the_same_search_without_the_network():
    fixed = load_sample("T2")
    moving, truth = _moved_crop(load_sample("T1"), [8, 12, 20], [44, 48, 36], (8.0, -6.0, 10.0), (30.0, -25.0, 20.0))
    result = register_partial_prereg(fixed, moving, dataclasses.replace(CPU, seeds="centre"))
    d = result.diagnostics
    assert d["seeding"] == "centre" and "patches" not in d and "ransac" not in d and "network_skipped" not in d
    assert set(d["local_search"]["seeds"]) == {"centre"} or set(d["local_search_widened"]["first"]["seeds"]) == {
        "centre"}
    assert _anchor_error(moving, result.fixed_to_moving_matrix, truth) < 4.0  # an 88 mm crop: the centre suffices
    with pytest.raises(InputError, match="seeds: expected 'tspm', 'centre' or 'scanner'"):
        PartialPreregConfig(seeds="lattice")
    with pytest.raises(InputError, match="needs local_search=True"):
        PartialPreregConfig(seeds="scanner", local_search=False)


@pytest.mark.slow
def test_first_local_search_window_is_its_own_and_the_widening_keeps_the_wide_one(monkeypatch):
    """``local_search_first_window_mm`` sets the window of the first search around the network's candidates (and
    the centre seed's); the widening after a poor match (forced here: threshold 1) searches one and a half *wide*
    windows away (60 mm) within the wide window (40 mm); the scanner seeds' lattice keeps the wide window."""
    from RegistrationSuiteLib.methods.global_rigid import local as local_module

    fixed = load_sample("T2")
    moving, truth = _moved_crop(load_sample("T1"), [8, 12, 20], [44, 48, 36], (8.0, -6.0, 10.0), (30.0, -25.0, 20.0))
    calls, real = [], local_module.local_rigid_search

    def spy(fixed_, moving_, seeds, **kw):
        if moving_.GetSize() == moving.GetSize():  # not the fixed → template search (moving there: the fixed image)
            calls.append((np.asarray(seeds), kw["window_mm"]))
        return real(fixed_, moving_, seeds, **kw)

    monkeypatch.setattr(local_module, "local_rigid_search", spy)
    cfg = dataclasses.replace(CPU, local_search_first_window_mm=22.0, local_search_widen_below=1.0)
    for seeding in ("tspm", "centre"):
        calls.clear()
        result = register_partial_prereg(fixed, moving, dataclasses.replace(cfg, seeds=seeding))
        assert [w for _, w in calls] == [22.0, 40.0], seeding
        widened = result.diagnostics["local_search_widened"]
        assert widened["first"]["window_mm"] == 22.0 and widened["widened"]["window_mm"] == 40.0
        first_seed, neighbours = calls[0][0][0], calls[1][0]
        # the widened search's second seed is the first seed's +x neighbour: its moving image sits 60 mm away
        moved = np.linalg.inv(neighbours[1])[:3, 3] - np.linalg.inv(first_seed)[:3, 3]
        assert np.linalg.norm(moved) == pytest.approx(1.5 * 40.0, abs=1e-6), seeding
        assert _anchor_error(moving, result.fixed_to_moving_matrix, truth) < 4.0
    calls.clear()
    register_partial_prereg(fixed, moving, dataclasses.replace(cfg, seeds="scanner"))
    assert [w for _, w in calls] == [40.0]

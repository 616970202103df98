"""Training utilities: seeded, resumable (identical weights after a resume), augmentations."""

import numpy as np
import pytest
import torch

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.geometry import rotation_angle_deg
from RegistrationSuiteLib.models.training import (
    TrainingConfig,
    epoch_seed,
    intensity_jitter,
    load_checkpoint,
    random_rotations,
    train,
)


def _net():
    torch.manual_seed(123)
    return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 2))


def _batch(rng, step):
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = np.stack([x[:, 0] - x[:, 1], x[:, 2] * 2.0], axis=1).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y)


def _loss(p, t):
    return (p - t).abs().sum(1).mean()


def _cfg(epochs):
    return TrainingConfig(epochs=epochs, steps_per_epoch=20, batch_size=8, learning_rate=1e-2, seed=7, device="cpu")


def test_resume_from_checkpoint_is_identical(tmp_path):
    straight = _net()
    out_a = train(straight, _batch, _loss, _cfg(3), checkpoint_path=tmp_path / "a.ckpt")
    first = _net()
    train(first, _batch, _loss, _cfg(1), checkpoint_path=tmp_path / "b.ckpt")  # "interrupted" after epoch 1
    resumed = _net()
    out_b = train(resumed, _batch, _loss, _cfg(3), checkpoint_path=tmp_path / "b.ckpt")
    assert out_b.resumed_from_epoch == 1 and len(out_b.history) == 3
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert [h["loss"] for h in out_a.history] == [h["loss"] for h in out_b.history]
    assert out_a.history[-1]["loss"] < out_a.history[0]["loss"]
    ckpt = load_checkpoint(tmp_path / "b.ckpt")
    assert ckpt["epoch"] == 3 and ckpt["config"]["training"]["seed"] == 7  # the checkpoint carries its config


def test_checkpoint_from_other_settings_refused(tmp_path):
    train(_net(), _batch, _loss, _cfg(1), checkpoint_path=tmp_path / "c.ckpt")
    other = TrainingConfig(epochs=2, steps_per_epoch=20, batch_size=8, learning_rate=1e-3, seed=7, device="cpu")
    with pytest.raises(InputError, match="other settings"):
        train(_net(), _batch, _loss, other, checkpoint_path=tmp_path / "c.ckpt")
    train(_net(), _batch, _loss, _cfg(2), checkpoint_path=tmp_path / "c.ckpt")
    with pytest.raises(InputError, match="already at epoch 2"):
        train(_net(), _batch, _loss, _cfg(1), checkpoint_path=tmp_path / "c.ckpt")
    (tmp_path / "bad.ckpt").write_bytes(b"junk")
    with pytest.raises(InputError, match="cannot read"):
        train(_net(), _batch, _loss, _cfg(1), checkpoint_path=tmp_path / "bad.ckpt")


def test_config_validation_and_epoch_seeds():
    with pytest.raises(InputError, match="epochs: expected an integer >= 1, got 0"):
        TrainingConfig(epochs=0)
    with pytest.raises(InputError, match="learning_rate"):
        TrainingConfig(learning_rate=0)
    assert epoch_seed(0, 1) == epoch_seed(0, 1) != epoch_seed(0, 2)


def test_random_rotations_within_range():
    r = random_rotations(500, 15.0, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    np.testing.assert_allclose(r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r.shape), atol=1e-12)
    angles = rotation_angle_deg(r)
    assert angles.max() <= np.sqrt(3) * 15.0 + 1e-6 and angles.max() > 15.0


def test_intensity_jitter_range_and_determinism():
    x = np.linspace(0, 1, 1000).reshape(10, 100)
    a = intensity_jitter(x, np.random.default_rng(1))
    b = intensity_jitter(x, np.random.default_rng(1))
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1 and np.array_equal(a, b)
    assert not np.allclose(a, x)


def test_cosine_schedule_values_and_resume(tmp_path):
    cfg = TrainingConfig(epochs=3, steps_per_epoch=20, batch_size=8, learning_rate=1e-2, seed=7, device="cpu",
                         lr_schedule="cosine", final_lr_fraction=0.1)
    assert cfg.learning_rate_at(0) == pytest.approx(1e-2)
    assert cfg.learning_rate_at(59) == pytest.approx(1e-3)  # the last step reaches the final fraction
    assert cfg.learning_rate_at(29.5) == pytest.approx(0.5 * (1e-2 + 1e-3))  # halfway: the mean
    lrs = [cfg.learning_rate_at(s) for s in range(60)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert _cfg(3).learning_rate_at(59) == pytest.approx(1e-2)  # constant stays constant
    # the schedule reaches the optimiser: after training, Adam holds the last step's learning rate
    net = _net()
    train(net, _batch, _loss, cfg, checkpoint_path=tmp_path / "cos.ckpt")
    ckpt = load_checkpoint(tmp_path / "cos.ckpt")
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    assert ckpt["config"]["training"]["lr_schedule"] == "cosine"
    # cancelled during epoch 2 (the checkpoint holds epoch 1) and resumed: identical weights, because the
    # schedule follows the global step
    from RegistrationSuiteLib.errors import RegistrationCancelled

    with pytest.raises(RegistrationCancelled):  # stops as soon as epoch 1's checkpoint exists
        train(_net(), _batch, _loss, cfg, checkpoint_path=tmp_path / "i.ckpt",
              cancel=lambda: (tmp_path / "i.ckpt").is_file())
    resumed = _net()
    out = train(resumed, _batch, _loss, cfg, checkpoint_path=tmp_path / "i.ckpt")
    assert out.resumed_from_epoch == 1
    for k, v in net.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    with pytest.raises(InputError, match="lr_schedule"):
        TrainingConfig(lr_schedule="step")
    with pytest.raises(InputError, match="final_lr_fraction"):
        TrainingConfig(lr_schedule="cosine", final_lr_fraction=1.5)
    assert "lr_schedule" not in _cfg(1).to_dict()  # constant runs keep their old run configuration

"""Training utilities shared by the learned methods: a seeded, resumable loop and augmentations.

Determinism: every epoch starts from ``seed_everything(epoch_seed(seed, epoch))`` and a NumPy generator
``default_rng([seed, epoch])`` that the batch function draws from. A checkpoint written at the end of an
epoch holds the weights, the optimiser state, the epoch and the history, so a run resumed from it continues
exactly as the uninterrupted run would have (on CPU; CUDA kernels may differ in the last bits).
Checkpoints contain only tensors and plain data (``torch.load(weights_only=True)``) and carry their config.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..progress import as_progress
from ..seeding import seed_everything

CHECKPOINT_FORMAT = "registration-suite-checkpoint"


@dataclass
class TrainingConfig:
    """Generic optimisation settings.

    Attributes:
        epochs: total epochs (a resumed run stops at the same total).
        steps_per_epoch: optimiser steps per epoch.
        batch_size: samples per step (paper: 64).
        learning_rate: Adam learning rate (paper: 1e-3, fixed).
        seed: the one seed of the run.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        checkpoint_every: write the checkpoint every this many epochs (and after the last one).
        lr_schedule: ``"constant"`` (default) or ``"cosine"``: the learning rate falls from ``learning_rate``
            to ``final_lr_fraction · learning_rate`` along half a cosine over all ``epochs · steps_per_epoch``
            steps (set per step from the global step, so a resumed run follows the same schedule; changing
            ``epochs`` of a cosine run changes the schedule from then on).
        final_lr_fraction: the cosine schedule's last learning rate as a fraction of ``learning_rate``.
    """

    epochs: int = 10
    steps_per_epoch: int = 100
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 1
    lr_schedule: str = "constant"
    final_lr_fraction: float = 0.02

    def __post_init__(self):
        for name in ("epochs", "steps_per_epoch", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise InputError(f"{name}: expected an integer >= 1, got {value!r}")
        if not self.learning_rate > 0:
            raise InputError(f"learning_rate: expected a positive number, got {self.learning_rate}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise InputError(f"lr_schedule: expected 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0 <= self.final_lr_fraction <= 1:
            raise InputError(f"final_lr_fraction: expected a fraction in [0, 1], got {self.final_lr_fraction}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.lr_schedule == "constant":  # older checkpoints (no schedule keys) stay resumable
            d.pop("lr_schedule")
            d.pop("final_lr_fraction")
        return d

    def learning_rate_at(self, step: int) -> float:
        """Learning rate of global optimiser step ``step`` (0-based) under :attr:`lr_schedule`."""
        if self.lr_schedule == "constant":
            return float(self.learning_rate)
        total = max(self.epochs * self.steps_per_epoch - 1, 1)
        t = min(max(step, 0), total) / total
        low = self.final_lr_fraction * self.learning_rate
        return float(low + 0.5 * (self.learning_rate - low) * (1.0 + np.cos(np.pi * t)))


@dataclass
class TrainingOutcome:
    """History of a run: one dict per epoch (``epoch``, ``loss``, ``seconds`` and any validation metrics)."""

    history: List[dict] = field(default_factory=list)
    resumed_from_epoch: int = 0


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of one epoch, derived from the run's seed (stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def save_checkpoint(path, *, model, optimizer, epoch: int, config: dict, history: list, extra: Optional[dict] = None):
    """Write a resumable checkpoint atomically."""
    import torch

    from ..io import atomic_output

    content = {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(epoch),
        "config": dict(config),
        "history": list(history),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "extra": dict(extra or {}),
    }
    with atomic_output(path) as tmp:
        torch.save(content, tmp)


def load_checkpoint(path) -> dict:
    """Read a checkpoint (``weights_only=True``); raises :class:`InputError` if unreadable or foreign."""
    import torch

    try:
        content = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"checkpoint: cannot read {path} ({type(exc).__name__}); delete it to start afresh") from None
    if not isinstance(content, dict) or content.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"checkpoint: {path} is not a RegistrationSuite training checkpoint")
    return content


BatchFn = Callable[[np.random.Generator, int], Tuple["object", "object"]]


def train(
    model,
    make_batch: BatchFn,
    loss_fn,
    config: TrainingConfig,
    *,
    checkpoint_path=None,
    run_config: Optional[dict] = None,
    validate: Optional[Callable[[object], dict]] = None,
    progress=None,
    cancel=None,
    log: Optional[Callable[[str], None]] = None,
) -> TrainingOutcome:
    """Adam training loop, resumable from ``checkpoint_path``.

    Args:
        model: a ``torch.nn.Module`` (moved to the configured device).
        make_batch: ``(rng, step) -> (inputs, targets)`` CPU tensors; draws only from ``rng``.
        loss_fn: ``(prediction, target) -> scalar``.
        config: :class:`TrainingConfig`.
        checkpoint_path: resume from it if it exists, and write it every ``checkpoint_every`` epochs. A
            checkpoint whose ``run_config`` differs from this run's (other than in ``epochs``: a run may be
            extended, or stopped and finished with fewer epochs) is refused, not silently mixed.
        run_config: JSON-like description of the whole run, stored in (and compared with) the checkpoint.
        validate: optional ``model -> dict`` of metrics after each epoch (called in eval mode).
        progress, cancel: the usual callbacks (see :mod:`RegistrationSuiteLib.progress`).

    Returns:
        :class:`TrainingOutcome`.
    """
    import torch

    from ..device import resolve_device

    device = resolve_device(config.device)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    run_config = dict(run_config or {"training": config.to_dict()})
    outcome = TrainingOutcome()
    start = _maybe_resume(checkpoint_path, model, optimizer, run_config, outcome, device, config.epochs)
    prog = as_progress(progress, cancel)
    for epoch in range(start, config.epochs):
        rec = _run_epoch(model, optimizer, make_batch, loss_fn, config, epoch, device, prog)
        if validate is not None:
            model.eval()
            rec.update(validate(model))
        outcome.history.append(rec)
        if log is not None:
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
        last = epoch + 1 == config.epochs
        if checkpoint_path is not None and ((epoch + 1) % config.checkpoint_every == 0 or last):
            save_checkpoint(checkpoint_path, model=model, optimizer=optimizer, epoch=epoch + 1,
                            config=run_config, history=outcome.history)
    return outcome


def _maybe_resume(path, model, optimizer, run_config, outcome, device, epochs: int) -> int:
    if path is None or not Path(path).is_file():
        return 0
    ckpt = load_checkpoint(path)
    if _without_epochs(ckpt["config"]) != _without_epochs(run_config):
        raise InputError(f"checkpoint: {path} was written by a run with other settings; "
                         "use another --checkpoint path or delete it")
    if int(ckpt["epoch"]) > epochs:
        raise InputError(f"checkpoint: {path} is already at epoch {ckpt['epoch']}, beyond the {epochs} requested")
    model.load_state_dict(ckpt["model"], strict=True)
    optimizer.load_state_dict(ckpt["optimizer"])
    model.to(device)
    outcome.history = list(ckpt["history"])
    outcome.resumed_from_epoch = int(ckpt["epoch"])
    return int(ckpt["epoch"])


def _without_epochs(config):
    """The run's settings except the epoch count: a run may be extended (or stopped) and resumed."""
    if isinstance(config, dict):
        return {k: _without_epochs(v) for k, v in config.items() if k != "epochs"}
    return config


def _run_epoch(model, optimizer, make_batch, loss_fn, config, epoch, device, prog) -> dict:
    seed_everything(epoch_seed(config.seed, epoch))  # dropout and any torch-side randomness
    rng = np.random.default_rng([config.seed, epoch])
    model.train()
    t0, c0, total = time.perf_counter(), time.process_time(), 0.0
    for step in range(config.steps_per_epoch):
        prog.check_cancel()
        x, y = make_batch(rng, step)
        if config.lr_schedule != "constant":
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate_at(epoch * config.steps_per_epoch + step)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x.to(device)), y.to(device))
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        done = (epoch * config.steps_per_epoch + step + 1) / (config.epochs * config.steps_per_epoch)
        prog.report(done, f"epoch {epoch + 1}/{config.epochs} step {step + 1}/{config.steps_per_epoch}")
    return {"epoch": epoch + 1, "loss": total / config.steps_per_epoch, "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0}


# ---------------------------------------------------------------------------------------------- augmentation


def random_rotations(n: int, max_deg: float, rng: np.random.Generator) -> np.ndarray:
    """``(n, 3, 3)`` rotations with Euler angles uniform in ±``max_deg`` per axis (R = Rz·Ry·Rx); the range a
    patient's head tilts in a scanner (the paper's suggested augmentation)."""
    a = np.radians(rng.uniform(-max_deg, max_deg, size=(n, 3)))
    cx, cy, cz = np.cos(a).T
    sx, sy, sz = np.sin(a).T
    one, zero = np.ones(n), np.zeros(n)
    rx = np.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).reshape(n, 3, 3)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(n, 3, 3)
    rz = np.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).reshape(n, 3, 3)
    return rz @ ry @ rx


def intensity_jitter(
    x: np.ndarray,
    rng: np.random.Generator,
    *,
    gamma: Tuple[float, float] = (0.7, 1.4),
    scale: Tuple[float, float] = (0.85, 1.15),
    noise_std: float = 0.02,
) -> np.ndarray:
    """Random gamma, contrast scale and Gaussian noise for values in [0, 1] (one draw per call); returns
    values clipped to [0, 1]."""
    g = np.exp(rng.uniform(np.log(gamma[0]), np.log(gamma[1])))
    s = rng.uniform(*scale)
    out = np.power(np.clip(x, 0.0, 1.0), g) * s
    if noise_std > 0:
        out = out + rng.normal(0.0, noise_std, size=out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)

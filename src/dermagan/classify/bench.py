"""Where a training step goes: data, augmentation, forward, backward, optimiser, against raw fwd+bwd.

``profile_training`` times the phases of the real training step (``Trainer``'s batches, the
recipe's augmentation, loss, AdamW, per-batch schedule) and the raw forward+backward of the same
network on one fixed, already prepared batch. Their throughput ratio says how much of the
machine the training loop leaves on the table.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from dermagan.classify.augment import classic_augment
from dermagan.classify.inference import to_float_batch
from dermagan.classify.train import Trainer

PHASES = ("data", "augment", "forward", "backward", "optimizer")


def _timed(times: dict, phase: str, fn):
    start = time.perf_counter()
    out = fn()
    times[phase] += time.perf_counter() - start
    return out


def profile_training(trainer: Trainer, steps: int, warmup: int = 3) -> dict:
    """Seconds per phase over ``steps`` real training steps, and raw fwd+bwd of the same network.

    Returns images/s of both, their ratio, and each phase's share of the training step.
    """
    model, cfg = trainer.model.train(), trainer.cfg
    batches = trainer.epoch_order().split(cfg.batch_size)
    batches = [b for b in batches if len(b) == cfg.batch_size][: warmup + steps]
    times: dict[str, float] = defaultdict(float)
    for i, idx in enumerate(batches):
        if i == warmup:
            times.clear()
        x = _timed(times, "data", lambda idx=idx: to_float_batch(trainer.images[idx]).to(trainer.device))
        if cfg.augment is not None:
            x = _timed(times, "augment", lambda x=x: classic_augment(x, cfg.augment, trainer.gen))
        x = x.contiguous(memory_format=torch.channels_last)
        y = trainer.labels[idx].to(trainer.device)
        loss = _timed(times, "forward", lambda x=x, y=y: trainer.loss_fn(model(x), y))
        trainer.optimizer.zero_grad(set_to_none=True)
        _timed(times, "backward", loss.backward)
        _timed(times, "optimizer", lambda: (trainer.optimizer.step(), trainer.scheduler.step()))
    n_images = steps * cfg.batch_size
    step_seconds = sum(times.values())
    raw_seconds = raw_forward_backward(trainer, x.detach(), y, steps, warmup)
    return {
        "batch_size": cfg.batch_size, "steps": steps,
        "train_images_per_s": n_images / step_seconds, "raw_images_per_s": n_images / raw_seconds,
        "ratio": raw_seconds / step_seconds,
        "share": {phase: times.get(phase, 0.0) / step_seconds for phase in PHASES},
        "ms_per_step": {phase: 1000 * times.get(phase, 0.0) / steps for phase in PHASES},
    }


def raw_forward_backward(trainer: Trainer, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int) -> float:
    """Seconds for ``steps`` forward+backward passes of the network on one fixed batch (no optimiser)."""
    model = trainer.model.train()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return time.perf_counter() - start

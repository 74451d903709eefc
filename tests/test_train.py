"""Classic augmentation and the training loop: finite, learning, resumable."""

import numpy as np
import pytest
import torch

from dermagan.classify.augment import AugmentConfig, classic_augment
from dermagan.classify.models import create_classifier
from dermagan.classify.train import Trainer, TrainConfig, balanced_class_weights, fit, load_checkpoint
from dermagan.constants import CLASSES
from dermagan.data.prepared import SplitArrays


def tiny_split(n: int, seed: int) -> SplitArrays:
    """Images whose mean brightness encodes the class, so a model can learn something."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    base = (labels * 30 + 20)[:, None, None, None]
    images = np.clip(base + rng.integers(-15, 15, (n, 16, 16, 3)), 0, 255).astype(np.uint8)
    return SplitArrays(images, labels.astype(np.int64), np.array([f"I{i}" for i in range(n)]))


def config(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=16, lr=3e-3, weight_decay=0.0, lr_schedule="cosine", step_size=1,
                gamma=0.5, patience=10, seed=0, class_weights=True, augment=AugmentConfig())
    return TrainConfig(**{**base, **kw})


def new_trainer(cfg: TrainConfig) -> Trainer:
    torch.manual_seed(0)
    return Trainer(create_classifier("simple_cnn", CLASSES, 16), tiny_split(70, 0), cfg, torch.device("cpu"))


def test_augment_keeps_shape_and_range_and_varies_per_image():
    x = torch.rand(8, 3, 16, 16)
    x[:] = x[:1]  # eight copies of one image
    out = classic_augment(x, AugmentConfig(), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out[0], out[1])


def test_class_weights_are_balanced():
    weights = balanced_class_weights(np.array([0, 0, 0, 1]), 2)
    assert weights.tolist() == pytest.approx([4 / 6, 2.0])


def test_fit_learns_and_logs_every_epoch():
    seen = []
    result = fit(new_trainer(config()), tiny_split(35, 1), on_epoch=lambda e, m: seen.append(e))
    assert seen == [1, 2, 3] and all(np.isfinite(h["train/loss"]) for h in result.history)
    assert result.best_val_bal_acc > 1 / len(CLASSES)


def test_early_stopping_stops():
    trainer = new_trainer(config(epochs=20, patience=1, lr=0.0))
    for module in trainer.model.modules():  # lr 0 and frozen BatchNorm statistics: val score never changes
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.0
    result = fit(trainer, tiny_split(35, 1))
    assert len(result.history) == 2  # best at epoch 1, then one epoch without improvement


def test_killed_run_resumes_to_the_same_result(tmp_path):
    full = fit(new_trainer(config()), tiny_split(35, 1))
    ckpt = tmp_path / "last.pt"
    with pytest.raises(Killed):  # dies during epoch 3, after the epoch-2 checkpoint
        fit(new_trainer(config()), tiny_split(35, 1), checkpoint=ckpt, on_epoch=kill_after(2))
    resumed_trainer = new_trainer(config())
    load_checkpoint(resumed_trainer, ckpt)
    assert resumed_trainer.epoch == 2
    resumed = fit(resumed_trainer, tiny_split(35, 1), checkpoint=ckpt)
    assert [h["train/loss"] for h in resumed.history] == pytest.approx([h["train/loss"] for h in full.history])
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b)


class Killed(Exception):
    pass


def kill_after(epochs: int):
    def on_epoch(epoch, metrics):
        if epoch > epochs:
            raise Killed

    return on_epoch

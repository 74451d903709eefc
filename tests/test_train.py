"""Classic augmentation, imbalance handling, LR schedules and the training loop: finite, learning, resumable."""

import numpy as np
import pytest
import torch

from dermagan.classify.augment import AugmentConfig, classic_augment, scaled
from dermagan.classify.models import create_classifier
from dermagan.classify.train import (
    Trainer,
    TrainConfig,
    balanced_class_weights,
    fit,
    load_checkpoint,
    make_scheduler,
)
from dermagan.errors import DermaganError
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.data.prepared import SplitArrays


def tiny_split(n: int, seed: int, labels: np.ndarray | None = None) -> SplitArrays:
    """Images whose mean brightness encodes the class, so a model can learn something."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES) if labels is None else np.asarray(labels)
    base = (labels * 30 + 20)[:, None, None, None]
    images = np.clip(base + rng.integers(-15, 15, (n, 16, 16, 3)), 0, 255).astype(np.uint8)
    return SplitArrays(images, labels.astype(np.int64), np.array([f"I{i}" for i in range(n)]))


def config(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=16, lr=3e-3, weight_decay=0.0, lr_schedule="cosine", step_size=1,
                gamma=0.5, patience=10, seed=0, class_weight_power=1.0, augment=AugmentConfig())
    return TrainConfig(**{**base, **kw})


def new_trainer(cfg: TrainConfig, train: SplitArrays | None = None) -> Trainer:
    torch.manual_seed(0)
    train = tiny_split(70, 0) if train is None else train
    return Trainer(create_classifier("simple_cnn", CLASSES, 16), train, cfg, torch.device("cpu"))


def test_augment_keeps_shape_and_range_and_varies_per_image():
    x = torch.rand(8, 3, 16, 16)
    x[:] = x[:1]  # eight copies of one image
    out = classic_augment(x, AugmentConfig(), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out[0], out[1])


def dihedral(image: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/90-degree turns of a (3, H, W) image."""
    return [torch.rot90(view, k, dims=(1, 2)) for view in (image, image.flip(2)) for k in range(4)]


def test_augment_at_strength_zero_only_flips_and_turns_by_90_degrees():
    cfg = scaled(AugmentConfig(rotation_degrees=30, crop_scale=(0.6, 1.0), brightness=0.2, contrast=0.2,
                               saturation=0.2), 0.0)
    assert cfg.hflip and cfg.vflip and cfg.rot90 and cfg.rotation_degrees == 0 and cfg.crop_scale == (1.0, 1.0)
    image = (torch.randperm(3 * 16 * 16).float() / (3 * 16 * 16)).view(3, 16, 16)  # every pixel value distinct
    out = classic_augment(image.expand(64, -1, -1, -1).clone(), cfg, torch.Generator().manual_seed(0))
    views = dihedral(image)
    used = set()
    for augmented in out:
        errors = [float((augmented - view).abs().max()) for view in views]
        assert min(errors) < 1e-5, f"not a dihedral view of the input (closest differs by {min(errors)})"
        used.add(int(np.argmin(errors)))
    assert used == set(range(8))  # 64 draws reach all 8 orientations


def test_augment_strength_scales_the_ranges():
    full = AugmentConfig(rotation_degrees=30, crop_scale=(0.6, 1.0), brightness=0.2, contrast=0.2, saturation=0.2)
    half = scaled(full, 0.5)
    assert half.rotation_degrees == pytest.approx(15) and half.crop_scale == pytest.approx((0.8, 1.0))
    assert (half.brightness, half.contrast, half.saturation) == pytest.approx((0.1, 0.1, 0.1))
    assert scaled(full, 1.0) == full


def test_class_weights_are_balanced():
    weights = balanced_class_weights(np.array([0, 0, 0, 1]), 2)
    assert weights.tolist() == pytest.approx([4 / 6, 2.0])


def test_class_weight_power_interpolates_between_none_and_balanced():
    labels = np.array([0] * 12 + [1] * 3 + [2])
    balanced = balanced_class_weights(labels, 3)
    assert balanced_class_weights(labels, 3, power=0.0).tolist() == [1.0, 1.0, 1.0]
    assert balanced_class_weights(labels, 3, power=0.5).tolist() == pytest.approx(balanced.sqrt().tolist())
    assert new_trainer(config(class_weight_power=0.0)).loss_fn.weight is None  # plain loss
    train = tiny_split(70, 0)
    half = new_trainer(config(class_weight_power=0.5), train).loss_fn.weight
    torch.testing.assert_close(half, balanced_class_weights(train.labels, len(CLASSES)).sqrt())


@pytest.mark.parametrize("kwargs,match", [
    ({"class_weight_power": 1.5}, "class_weight_power"),
    ({"sampler": "weighted"}, "sampler"),
    ({"lr_schedule": "linear"}, "lr_schedule"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
])
def test_bad_train_settings_are_clear_errors(kwargs, match):
    with pytest.raises(DermaganError, match=match):
        config(**kwargs)


def test_class_balanced_sampler_draws_every_class_about_equally_often():
    counts = np.array([400, 150, 80, 40, 20, 7, 3])  # imbalanced like HAM10000
    train = tiny_split(int(counts.sum()), 0, labels=np.repeat(np.arange(len(CLASSES)), counts))
    balanced = new_trainer(config(sampler="class_balanced"), train)
    epochs = 5
    drawn = np.zeros(len(CLASSES))
    for _ in range(epochs):
        order = balanced.epoch_order()
        assert len(order) == len(train)  # one epoch is still len(train) draws
        drawn += np.bincount(train.labels[order.numpy()], minlength=len(CLASSES))
    expected = epochs * len(train) / len(CLASSES)  # 500 per class; binomial sd ~ 21
    assert np.all(np.abs(drawn - expected) < 0.2 * expected), drawn
    shuffled = new_trainer(config(sampler="shuffle"), train).epoch_order()
    assert sorted(shuffled.tolist()) == list(range(len(train)))  # a permutation: counts as in the data


def lr_trace(cfg: TrainConfig, steps: int) -> list[float]:
    """The learning rate of each of the ``cfg.epochs * steps`` batches, and the one after the last."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = make_scheduler(optimizer, cfg, steps)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(cfg.epochs * steps):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_lr_warms_up_then_decays_to_near_zero(schedule):
    steps, epochs, warmup = 10, 4, 1.5
    lrs = lr_trace(config(lr=0.01, epochs=epochs, lr_schedule=schedule, warmup_epochs=warmup), steps)
    rise = lrs[: round(warmup * steps)]
    assert all(b > a for a, b in zip(rise, rise[1:])), rise  # rises through the warm-up
    assert lrs[0] < 0.2 * 0.01
    assert max(lrs) == pytest.approx(0.01, rel=0.05)  # peaks at the configured lr
    peak = int(np.argmax(lrs))
    assert abs(peak - warmup * steps) <= 1
    after = lrs[peak:]
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:]))  # then only decays
    assert lrs[-1] < 1e-3 * 0.01  # ends near 0 after epochs x steps batches


def test_cosine_without_warmup_starts_at_lr_and_step_schedule_decays_per_epoch():
    lrs = lr_trace(config(lr=0.01, epochs=3, lr_schedule="cosine", warmup_epochs=0.0), 5)
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] < 1e-8
    lrs = lr_trace(config(lr=0.01, epochs=3, lr_schedule="step", step_size=1, gamma=0.5), 5)
    assert lrs[4] == pytest.approx(0.01) and lrs[5] == pytest.approx(0.005) and lrs[10] == pytest.approx(0.0025)


def test_label_smoothing_reaches_the_loss():
    assert new_trainer(config(label_smoothing=0.1)).loss_fn.label_smoothing == pytest.approx(0.1)
    assert new_trainer(config()).loss_fn.label_smoothing == 0.0


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

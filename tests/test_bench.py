"""The training-step profiler: every phase timed, ratio against raw forward+backward."""

import torch

from dermagan.classify.augment import AugmentConfig
from dermagan.classify.bench import PHASES, profile_training
from dermagan.classify.models import create_classifier
from dermagan.classify.train import Trainer, TrainConfig
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from test_train import tiny_split


def test_profile_times_every_phase_and_compares_with_raw():
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, weight_decay=0.0, lr_schedule="onecycle", step_size=1,
                      gamma=0.5, patience=3, seed=0, class_weight_power=1.0, augment=AugmentConfig())
    torch.manual_seed(0)
    trainer = Trainer(create_classifier("simple_cnn", CLASSES, 16), tiny_split(64, 0), cfg, torch.device("cpu"))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = profile_training(trainer, steps=3, warmup=1)
    assert set(result["share"]) == set(PHASES) and abs(sum(result["share"].values()) - 1) < 1e-6
    assert all(result["ms_per_step"][phase] > 0 for phase in PHASES)
    assert result["train_images_per_s"] > 0 and result["raw_images_per_s"] > 0
    assert abs(result["ratio"] - result["train_images_per_s"] / result["raw_images_per_s"]) < 1e-9
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters())), "the optimiser must step"

"""A training recipe: the shared ``train`` values, an arm's or a trial's overrides, checked once.

The pipeline's arms and the tuner's trials build their classifier and their TrainConfig here,
so a tuned value means the same thing in a trial and in ``dvc repro``.
"""

from __future__ import annotations

from dermagan.classify.augment import AugmentConfig, scaled
from dermagan.classify.models import NormalizedClassifier, create_classifier
from dermagan.classify.train import TrainConfig
from dermagan.classify.keys import ARM_ONLY_KEYS, RECIPE_KEYS, build_recipe  # noqa: F401 (re-exported)
from dermagan.errors import DermaganError

def augment_config(recipe: dict, limits: dict) -> AugmentConfig | None:
    """Flips and 90-degree turns, plus ``limits`` (params.yaml `augment`) scaled by the strength."""
    if not recipe["augment"]:
        return None
    full = AugmentConfig(**{**limits, "crop_scale": tuple(limits["crop_scale"])})
    return scaled(full, float(recipe["augment_strength"]))


def train_config(recipe: dict, seed: int, augment_limits: dict, max_batches_per_epoch: int | None = None) -> TrainConfig:
    """The TrainConfig of a recipe."""
    return TrainConfig(
        epochs=int(recipe["epochs"]), batch_size=int(recipe["batch_size"]), lr=float(recipe["lr"]),
        weight_decay=float(recipe["weight_decay"]), lr_schedule=str(recipe["lr_schedule"]),
        step_size=int(recipe["step_size"]), gamma=float(recipe["gamma"]), patience=int(recipe["patience"]),
        seed=int(seed), class_weight_power=float(recipe["class_weight_power"]), sampler=str(recipe["sampler"]),
        label_smoothing=float(recipe["label_smoothing"]), warmup_epochs=float(recipe["warmup_epochs"]),
        augment=augment_config(recipe, augment_limits), max_batches_per_epoch=max_batches_per_epoch,
    )


def build_classifier(recipe: dict, classes: tuple[str, ...], image_size: int) -> NormalizedClassifier:
    """The recipe's network with its packaged weights, dropout, drop-path and TTA."""
    return create_classifier(recipe["backbone"], classes, image_size, recipe["pretrained"],
                             dropout=float(recipe["dropout"]), drop_path=float(recipe["drop_path"]),
                             tta=str(recipe["tta"]))


def build_arm_classifier(recipe: dict, classes: tuple[str, ...], image_size: int, experts: dict | None = None,
                         trainset_dir=None, arm: str = "arm") -> NormalizedClassifier:
    """An arm's network: :func:`build_classifier`, or with an ``experts`` block (``{method, classes}``) the
    recipe's backbone plus the frozen class-expert discriminators in ``trainset_dir`` (dermagan.experts)."""
    if experts:
        from dermagan.experts import build_expert_classifier

        return build_expert_classifier(recipe, classes, image_size, experts, trainset_dir, arm)
    return build_classifier(recipe, classes, image_size)

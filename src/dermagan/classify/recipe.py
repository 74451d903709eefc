"""A training recipe: the shared ``train`` values, an arm's or a trial's overrides, checked once.

The pipeline's arms and the tuner's trials build their classifier and their TrainConfig here,
so a tuned value means the same thing in a trial and in ``dvc repro``.
"""

from __future__ import annotations

from dermagan.classify.augment import AugmentConfig, scaled
from dermagan.classify.models import NormalizedClassifier, create_classifier
from dermagan.classify.train import TrainConfig
from dermagan.errors import DermaganError

# Every key a recipe needs. Each comes from params.yaml's `train` block or from the tuned-params
# file (never both), and an arm or a trial may override it.
RECIPE_KEYS: tuple[str, ...] = (
    "backbone", "pretrained", "epochs", "batch_size", "lr", "weight_decay", "lr_schedule", "warmup_epochs",
    "step_size", "gamma", "patience", "label_smoothing", "class_weight_power", "sampler", "augment",
    "augment_strength", "dropout", "drop_path", "tta", "temperature_scaling",
)
ARM_ONLY_KEYS: tuple[str, ...] = ("extra",)


def build_recipe(train: dict, overrides: dict | None = None, where: str = "arm") -> dict:
    """``train``'s recipe keys with ``overrides`` on top; unknown or missing keys are errors."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(RECIPE_KEYS) - set(ARM_ONLY_KEYS))
    if unknown:
        raise DermaganError(f"params: {where} sets unknown key(s) {unknown}; recipe keys are {list(RECIPE_KEYS)}")
    recipe = {k: train[k] for k in RECIPE_KEYS if k in train}
    recipe.update({k: v for k, v in overrides.items() if k in RECIPE_KEYS})
    missing = [k for k in RECIPE_KEYS if k not in recipe]
    if missing:
        raise DermaganError(f"params: train.{missing[0]} is not set (missing: {missing}); set it in params.yaml's "
                            "train block or in the tuned-params file (`dermagan tune classifier --apply`)")
    return recipe


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

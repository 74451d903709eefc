"""The classifier recipe's keys and how a recipe is assembled from params values (no torch: the
typed config checks recipes with it at load time)."""

from __future__ import annotations

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

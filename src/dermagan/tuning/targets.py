"""What each tuning target adds around the general study machinery (:mod:`dermagan.tuning.study`).

From plain params values (the ``tune`` block as params.yaml writes it, the ``train``/``augment``/
``gan`` blocks): the :class:`StudyConfig` of a target with command-line overrides, the picklable
config its objective factory rebuilds in worker processes, and the GAN study's extra summary.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path

from dermagan.errors import DermaganError
from dermagan.gan.methods import STGAN_TUNED_BLOCK, stgan_config
from dermagan.tuning.gan import AMOUNT, check_gan_space
from dermagan.tuning.space import check_space
from dermagan.tuning.study import StudyConfig

TUNABLE_GAN_METHOD = "stgan"  # the GAN objective trains STGAN's per-class stage 2 (tuning/gan.py)


def study_config(tune: dict, target: str, names: dict | None = None, storage: str | None = None,
                 study: str | None = None, n_trials: int | None = None,
                 timeout_minutes: float | None = None) -> StudyConfig:
    """The StudyConfig of ``tune.<target>`` (``tune``: the params block, keys as written), with
    command-line overrides; ``names`` fill the study name's placeholders (e.g. ``gan-{method}-{class}``)."""
    cfg = tune[target]
    name = study or str(cfg["study"]).format(**(names or {}))
    default_storage = str(Path(tune["dir"]) / f"{name}.journal")
    timeout = timeout_minutes if timeout_minutes is not None else cfg.get("timeout_minutes")
    return StudyConfig(name=name, storage=storage or tune.get("storage") or default_storage,
                       n_trials=int(n_trials or cfg["n_trials"]),
                       timeout_seconds=None if timeout is None else float(timeout) * 60,
                       seed=int(cfg["seed"]), n_startup_trials=int(cfg["n_startup_trials"]),
                       pruner=dict(cfg["pruner"]), experiment=tune["experiment"],
                       enqueue=tuple(dict(v) for v in cfg.get("enqueue") or ()))


def classifier_target(study: dict, train: dict, augment: dict, image_size: int, classes: tuple[str, ...],
                      prepared: Path) -> dict:
    """Plain values for the classifier objective (picklable, for worker processes).

    ``study``: ``tune.classifier``; ``train``: the ``train`` block (tuned values merged); the
    searched keys are left out of the recipe base; ``classes``: the task labels (``data.classes``)."""
    check_space(study["space"], "tune.classifier.space")
    base = {k: v for k, v in train.items() if k not in study["space"]}
    return {"prepared": str(prepared), "classes": list(classes), "space": study["space"],
            "objective": study["objective"],
            "kfold_splits": int(study["kfold_splits"]), "seed": int(study["seed"]), "train": base,
            "augment": augment, "image_size": int(image_size), "device": train["device"],
            "max_batches_per_epoch": train.get("max_batches_per_epoch")}


def gan_target(study: dict, gan: dict, image_size: int, classes: tuple[str, ...], prepared: Path, method: str,
               dx: str, device: str) -> dict:
    """Plain values for the GAN objective (see tuning/gan.py): STGAN stage 2 of class ``dx``.

    ``study``: ``tune.gan``; ``gan``: the ``gan`` block; ``classes``: the task labels. The study
    starts from params.yaml's stage-2 settings, not from an earlier study's tuned values."""
    if method != TUNABLE_GAN_METHOD:
        raise DermaganError(f"tune gan: --method {method} cannot be tuned; the GAN study tunes STGAN's per-class "
                            f"stage 2 (--method {TUNABLE_GAN_METHOD})")
    if dx not in gan["classes"]:
        raise DermaganError(f"tune gan: class '{dx}' is not in params gan.classes {list(gan['classes'])}")
    check_gan_space(study["space"], "tune.gan.space")
    if not gan.get("stgan"):
        raise DermaganError("params: gan.stgan is missing (net, stage1, stage2, per_class); the GAN study tunes it")
    base = copy.deepcopy(gan)
    base.pop(STGAN_TUNED_BLOCK, None)  # the study starts from params.yaml, not from an earlier study
    per_class = base["stgan"].setdefault("per_class", {})
    per_class[dx] = dict(per_class.get(dx) or {})
    if "total_images" in study["space"]:
        per_class[dx].setdefault("total_images", int(study["space"]["total_images"]["int"][1]))
    amount = gan["amount"]
    if AMOUNT not in study["space"] and amount.get("mode") != "count":
        raise DermaganError("tune gan: gan.amount.mode must be 'count' unless tune.gan.space searches 'amount'")
    return {"prepared": str(prepared), "classes": list(classes), "class": dx, "method": method,
            "space": study["space"],
            "stage2": asdict(stgan_config(base, image_size, tuple(classes), "stage2", dx)),
            "base_dir": str(study["base_dir"]), "classifier": str(study["classifier"]),
            "domain_encoder": str(study["domain_encoder"]), "probe": dict(study["probe"]),
            "tolerance": float(study["tolerance"]), "eval_every_images": int(study["eval_every_images"]),
            "proxy_samples": int(study["proxy_samples"]), "amount": int(amount.get("value", 0)),
            "generate_seed": int(gan["generate_seed"]), "device": device}


def gan_summary(study, target_config: dict) -> dict:
    """The GAN study's reference (no synthetic images) and default-settings trial, beside its best."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    dx = target_config["class"]
    out = {"class": dx, "method": target_config["method"], "objective": f"real val recall of {dx}",
           "feasible_trials": sum(all(v <= 0 for v in t.constraints.values()) for t in complete)}
    if complete:
        attrs = complete[0].user_attrs
        out["reference"] = {"val_recall": attrs.get("reference_recall"), "val_bal_acc": attrs.get("reference_bal_acc")}
    default = [t for t in complete if t.user_attrs.get("enqueued")]
    if default:
        out["default_trial"] = {"number": default[0].number, "value": default[0].value,
                                "val_bal_acc": default[0].user_attrs.get("val_bal_acc")}
    return out

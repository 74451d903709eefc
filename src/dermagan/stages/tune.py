"""``dermagan tune classifier|gan``: params -> study config -> Optuna study -> results (and --apply).

Not a DVC stage: a study is run on purpose, then ``--apply`` writes the best values into the
tuned-params file that params.yaml names (``tuned_params`` for the classifier recipe,
``tuned_gan_params`` for the generators), which the pipeline's stages read.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from dataclasses import asdict
from pathlib import Path

import matplotlib.pyplot as plt
import yaml

from dermagan.atomic import atomic_dir, atomic_file
from dermagan.errors import DermaganError
from dermagan.params import TUNED_KEY, TUNED_KEYS, read_yaml, section
from dermagan.tracking.setup import configure
from dermagan.tuning.gan import AMOUNT, check_gan_space, stage2_overrides
from dermagan.tuning.space import check_space
from dermagan.tuning.study import StudyConfig, log_results, run_study, study_figures, study_summary


def study_config(params: dict, target: str, storage: str | None = None, study: str | None = None,
                 n_trials: int | None = None, timeout_minutes: float | None = None,
                 names: dict | None = None) -> StudyConfig:
    """The StudyConfig of ``tune.<target>``, with command-line overrides."""
    tune, cfg = section(params, "tune"), section(params, "tune", target)
    name = study or str(cfg["study"]).format(**(names or {}))  # e.g. gan-{method}-{class}
    default_storage = str(Path(tune["dir"]) / f"{name}.journal")
    timeout = timeout_minutes if timeout_minutes is not None else cfg.get("timeout_minutes")
    return StudyConfig(name=name, storage=storage or tune.get("storage") or default_storage,
                       n_trials=int(n_trials or cfg["n_trials"]), timeout_seconds=None if timeout is None else float(timeout) * 60,
                       seed=int(cfg["seed"]), n_startup_trials=int(cfg["n_startup_trials"]),
                       pruner=dict(cfg["pruner"]), experiment=tune["experiment"],
                       enqueue=tuple(dict(v) for v in cfg.get("enqueue") or ()))


def classifier_target(params: dict, prepared: Path) -> dict:
    """Plain values for the classifier objective (picklable, for worker processes)."""
    cfg = section(params, "tune", "classifier")
    check_space(cfg["space"], "tune.classifier.space")
    train = {k: v for k, v in section(params, "train").items() if k not in cfg["space"]}
    return {"prepared": str(prepared), "space": cfg["space"], "objective": cfg["objective"],
            "kfold_splits": int(cfg["kfold_splits"]), "seed": int(cfg["seed"]), "train": train,
            "augment": section(params, "augment"), "image_size": int(section(params, "prepare", "image_size")),
            "device": section(params, "train", "device"),
            "max_batches_per_epoch": section(params, "train").get("max_batches_per_epoch")}


def gan_target(params: dict, prepared: Path, method: str, dx: str) -> dict:
    """Plain values for the GAN objective (see tuning/gan.py): STGAN stage 2 of class ``dx``."""
    from dermagan.stages.train_gan import augmented_classes
    from dermagan.stages.train_stgan import TUNED_BLOCK, stgan_config

    if method != "stgan":
        raise DermaganError(f"tune gan: --method {method} cannot be tuned; the GAN study tunes STGAN's per-class "
                            "stage 2 (--method stgan)")
    if dx not in augmented_classes(params):
        raise DermaganError(f"tune gan: class '{dx}' is not in params gan.classes {augmented_classes(params)}")
    cfg = section(params, "tune", "gan")
    check_gan_space(cfg["space"], "tune.gan.space")
    base = copy.deepcopy(params)
    base["gan"].pop(TUNED_BLOCK, None)  # the study starts from params.yaml, not from an earlier study
    per_class = base["gan"]["stgan"].setdefault("per_class", {})
    per_class[dx] = dict(per_class.get(dx) or {})
    if "total_images" in cfg["space"]:
        per_class[dx].setdefault("total_images", int(cfg["space"]["total_images"]["int"][1]))
    amount = section(params, "gan", "amount")
    if AMOUNT not in cfg["space"] and amount.get("mode") != "count":
        raise DermaganError("tune gan: gan.amount.mode must be 'count' unless tune.gan.space searches 'amount'")
    return {"prepared": str(prepared), "class": dx, "method": method, "space": cfg["space"],
            "stage2": asdict(stgan_config(base, "stage2", dx)), "base_dir": str(cfg["base_dir"]),
            "classifier": str(cfg["classifier"]), "domain_encoder": str(cfg["domain_encoder"]),
            "probe": dict(cfg["probe"]), "tolerance": float(cfg["tolerance"]),
            "eval_every_images": int(cfg["eval_every_images"]), "proxy_samples": int(cfg["proxy_samples"]),
            "amount": int(amount.get("value", 0)), "generate_seed": int(section(params, "gan", "generate_seed")),
            "device": section(params, "train", "device")}


def run_tune(params: dict, target: str, prepared: Path, report_dir: Path, workers: int = 1, worker_offset: int = 0,
             method: str | None = None, dx: str | None = None, **overrides) -> dict:
    """Run (or resume) the study, log its results to the parent MLflow run, write a report folder."""
    names = None
    if target == "classifier":
        target_config = classifier_target(params, prepared)
    elif target == "gan":
        if not method or not dx:
            raise DermaganError("tune gan needs --method and --class (e.g. --method stgan --class df)")
        target_config = gan_target(params, prepared, method, dx)
        names = {"method": method, "class": dx}
    else:
        raise DermaganError(f"unknown tuning target '{target}' (available: {sorted(TUNED_KEYS)})")
    cfg = study_config(params, target, names=names, **overrides)
    configure(cfg.experiment)
    study = run_study(cfg, target, target_config, workers, worker_offset)
    summary = study_summary(study, cfg)
    if target == "gan":
        summary.update(gan_summary(study, target_config))
    figures = study_figures(study)
    log_results(study, cfg, summary, figures)
    with atomic_dir(Path(report_dir)) as tmp:
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        study.trials_dataframe().to_csv(tmp / "trials.csv", index=False)
        for name, fig in figures.items():
            fig.savefig(tmp / name, dpi=110)
    for fig in figures.values():
        plt.close(fig)
    return summary


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


def apply_best(params_path: Path, params: dict, target: str, summary: dict) -> Path:
    """Write the study's best values into the tuned-params file params.yaml names.

    Every value carries a ``# tuned`` comment, the header names the study and its best value,
    and a key that params.yaml's own block also sets is refused (it would be set twice).
    """
    if not summary["best_params"]:
        raise DermaganError(f"study '{summary['study']}' has no completed feasible trial; nothing to apply")
    if target == "gan":
        return apply_gan(params_path, params, summary)
    relative = params.get(TUNED_KEY)
    if not relative:
        raise DermaganError(f"{params_path}: no `{TUNED_KEY}` key naming the tuned-params file to write")
    block = "train"
    own = read_yaml(params_path).get(block) or {}
    both = sorted(set(own) & set(summary["best_params"]))
    if both:
        raise DermaganError(f"{params_path}: {block}.{both[0]} is searched by the study but also set in "
                            f"{params_path}; delete it there before applying (all: {both})")
    path = Path(params_path).parent / relative
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    states = ", ".join(f"{n} {s}" for s, n in summary["states"].items())
    lines = [
        f"# Tuned values: written by `dermagan tune {target} --apply` on {stamp}. Do not edit by hand; re-tune.",
        f"# Study '{summary['study']}' ({summary['storage']}): {summary['trials']} trials ({states}),",
        f"# best real-only validation balanced accuracy {summary['best_value']:.4f} (trial {summary['best_trial']}"
        + (", enqueued from tune.<target>.enqueue: no sampled trial beat it)." if summary.get("best_enqueued") else ")."),
        f"{block}:",
    ]
    for key, value in summary["best_params"].items():
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        lines.append(f"  {key}: {text}  # tuned")
    study = {k: summary[k] for k in ("study", "storage", "best_value", "best_trial", "trials", "wall_minutes",
                                     "pruning_saved_minutes")}
    lines.append("study:  # provenance (not a recipe key)")
    lines += [f"  {k}: {json.dumps(v)}" for k, v in study.items()]
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def apply_gan(params_path: Path, params: dict, summary: dict) -> Path:
    """Write a GAN study's best values into the tuned-GAN file (``tuned_gan_params``).

    Stage-2 values go to ``gan.stgan_tuned.<class>`` (read by the train_stgan stage), the number of
    synthetic images to ``gan.amount_tuned.<method>.<class>`` (read by generate and
    validate_augmented). Other classes' entries already in the file are kept.
    """
    from dermagan.stages.train_stgan import TUNED_BLOCK

    key = TUNED_KEYS["gan"]
    relative = params.get(key)
    if not relative:
        raise DermaganError(f"{params_path}: no `{key}` key naming the tuned-GAN file to write")
    dx, method, best = summary["class"], summary["method"], dict(summary["best_params"])
    stage2 = stage2_overrides(best)
    own = ((read_yaml(params_path).get("gan") or {}).get("stgan") or {}).get("per_class", {}).get(dx) or {}
    both = sorted(set(own) & set(stage2))
    if both:
        raise DermaganError(f"{params_path}: gan.stgan.per_class.{dx}.{both[0]} is searched by the study but also set "
                            f"in {params_path}; delete it there before applying (all: {both})")
    path = Path(params_path).parent / relative
    current = read_yaml(path) if path.is_file() else {}
    gan = current.get("gan") or {}
    tuned = dict(gan.get(TUNED_BLOCK) or {})
    tuned[dx] = stage2
    for other in section(params, "gan", "classes"):  # every class keeps an entry: dvc.yaml reads gan.stgan_tuned.<class>
        tuned.setdefault(other, {})
    amounts = {m: dict(v or {}) for m, v in (gan.get("amount_tuned") or {}).items()}
    if AMOUNT in best:
        amounts.setdefault(method, {})[dx] = int(best[AMOUNT])
    studies = dict(current.get("study") or {})
    studies[dx] = {k: summary.get(k) for k in ("study", "storage", "best_value", "best_trial", "trials",
                                                "wall_minutes", "pruning_saved_minutes", "feasible_trials")}
    studies[dx]["reference_val_recall"] = (summary.get("reference") or {}).get("val_recall")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Tuned GAN values: written by `dermagan tune gan --apply` (last: class {dx}, {stamp}). "
             "Do not edit by hand; re-tune.",
             "# gan.stgan_tuned.<class>: STGAN stage-2 settings; gan.amount_tuned.<method>.<class>: synthetic images added.",
             "# Objective: real-only val recall of the class (classifier probe, see README \"GAN tuning\");",
             "# constraint: val balanced accuracy >= the no-synthetic reference - tune.gan.tolerance.",
             "gan:", f"  {TUNED_BLOCK}:"]
    lines += [f"    {c}: {_flow(v)}" for c, v in sorted(tuned.items())] or []
    if not tuned:
        lines[-1] += " {}"
    lines.append("  amount_tuned:" + ("" if amounts else " {}"))
    lines += [f"    {m}: {_flow(v)}" for m, v in sorted(amounts.items())]
    lines.append("study:  # provenance per class (not read by any stage)")
    lines += [f"  {c}: {json.dumps(v)}" for c, v in sorted(studies.items())]
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def _flow(value) -> str:
    """One-line YAML flow mapping (never wrapped: it is written inside a block mapping)."""
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=True, width=float("inf")).strip().removesuffix(
        "...").strip()

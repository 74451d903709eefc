"""``dermagan tune classifier``: params -> study config -> Optuna study -> results (and --apply).

Not a DVC stage: a study is run on purpose, then ``--apply`` writes the best values into the
tuned-params file that params.yaml names (``tuned_params``), which the train stages read.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import matplotlib.pyplot as plt
import yaml

from dermagan.atomic import atomic_dir, atomic_file
from dermagan.errors import DermaganError
from dermagan.params import TUNED_KEY, read_yaml, section
from dermagan.tracking.setup import configure
from dermagan.tuning.space import check_space
from dermagan.tuning.study import StudyConfig, log_results, run_study, study_figures, study_summary


def study_config(params: dict, target: str, storage: str | None = None, study: str | None = None,
                 n_trials: int | None = None, timeout_minutes: float | None = None) -> StudyConfig:
    """The StudyConfig of ``tune.<target>``, with command-line overrides."""
    tune, cfg = section(params, "tune"), section(params, "tune", target)
    name = study or cfg["study"]
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


def run_tune(params: dict, target: str, prepared: Path, report_dir: Path, workers: int = 1, worker_offset: int = 0,
             **overrides) -> dict:
    """Run (or resume) the study, log its results to the parent MLflow run, write a report folder."""
    if target != "classifier":
        raise DermaganError(f"unknown tuning target '{target}' (available: classifier)")
    cfg = study_config(params, target, **overrides)
    target_config = classifier_target(params, prepared)
    configure(cfg.experiment)
    study = run_study(cfg, target, target_config, workers, worker_offset)
    summary = study_summary(study, cfg)
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


def apply_best(params_path: Path, params: dict, target: str, summary: dict) -> Path:
    """Write the study's best values into the tuned-params file params.yaml names.

    Every value carries a ``# tuned`` comment, the header names the study and its best value,
    and a key that params.yaml's own block also sets is refused (it would be set twice).
    """
    if not summary["best_params"]:
        raise DermaganError(f"study '{summary['study']}' has no completed trial; nothing to apply")
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

"""``dermagan tune classifier|gan``: params -> study config -> Optuna study -> results (and --apply).

Not a DVC stage: a study is run on purpose, then ``--apply`` writes the best values into the
tuned-params file that params.yaml names (``tuned_params`` for the classifier recipe,
``tuned_gan_params`` for the generators), which the pipeline's stages read.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt

from dermagan.atomic import atomic_dir
from dermagan.config import Config
from dermagan.config.load import TUNED_KEYS
from dermagan.data.prepared import check_classes
from dermagan.errors import DermaganError
from dermagan.tracking.setup import configure
from dermagan.tuning.apply import apply_classifier, apply_gan
from dermagan.tuning.study import check_journal, is_url, log_results, run_study, study_figures, study_summary
from dermagan.tuning.targets import classifier_target, gan_summary, gan_target, study_config


def tune_block(cfg: Config) -> dict:
    """params ``tune`` with the keys as params.yaml writes them (the study's MLflow params list its pruner's)."""
    if cfg.tune is None:
        raise DermaganError(f"{cfg.source}: missing key 'tune' (the tuning studies' settings; see params.yaml)")
    return cfg.tune.model_dump(exclude_unset=True)


def run_tune(cfg: Config, target: str, prepared: Path, report_dir: Path, workers: int = 1, worker_offset: int = 0,
             method: str | None = None, dx: str | None = None, **overrides) -> dict:
    """Run (or resume) the study, log its results to the parent MLflow run, write a report folder.

    ``overrides``: ``storage``, ``study``, ``n_trials``, ``timeout_minutes`` from the command line."""
    if target not in TUNED_KEYS:
        raise DermaganError(f"unknown tuning target '{target}' (available: {sorted(TUNED_KEYS)})")
    tune, names = tune_block(cfg), None
    if target == "classifier":
        target_config = classifier_target(tune["classifier"], cfg.train.plain(), cfg.augment.plain(),
                                          cfg.prepare.image_size, cfg.classes, prepared)
    else:
        if not method or not dx:
            raise DermaganError("tune gan needs --method and --class (e.g. --method stgan --class df)")
        target_config = gan_target(tune["gan"], cfg.gan.plain(), cfg.prepare.image_size, cfg.classes, prepared,
                                   method, dx, cfg.train.device)
        names = {"method": method, "class": dx}
    study_cfg = study_config(tune, target, names=names, **overrides)
    if not is_url(study_cfg.storage):
        check_journal(Path(study_cfg.storage))  # a corrupt journal fails before MLflow or any trial is touched
    check_classes(Path(prepared), cfg.classes)  # the folder's integer labels index params data.classes
    configure(study_cfg.experiment)
    study = run_study(study_cfg, target, target_config, workers, worker_offset)
    summary = study_summary(study, study_cfg)
    if target == "gan":
        summary.update(gan_summary(study, target_config))
    figures = study_figures(study)
    log_results(study, study_cfg, summary, figures)
    with atomic_dir(Path(report_dir)) as tmp:
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        study.trials_dataframe().to_csv(tmp / "trials.csv", index=False)
        for name, fig in figures.items():
            fig.savefig(tmp / name, dpi=110)
    for fig in figures.values():
        plt.close(fig)
    return summary


def apply_best(params_path: Path, cfg: Config, target: str, summary: dict) -> Path:
    """Write the study's best values into the tuned-params file params.yaml names (and only there).

    Every value carries a ``# tuned`` comment, the header names the study and its best value,
    and a key that params.yaml's own block also sets is refused (it would be set twice).
    """
    if target == "gan":
        return apply_gan(Path(params_path), cfg.tuned_gan_params, list(cfg.gan.classes), summary)
    return apply_classifier(Path(params_path), cfg.tuned_params, summary)

"""The ensemble stage: combine the trained arms of each seed, weights fitted on real val only.

For every seed s the members are every listed arm's seed-s model (``artifacts/models/<arm>-s<s>``).
Each member's probabilities on the real **val** split fit four sets of weights (bma, bma_tempered,
stacked, average: :mod:`dermagan.ensemble.fit`); only then are the test probabilities combined
and scored: the test split chooses nothing. Reported per combiner: test balanced accuracy and
per-class recall, mean ± std over seeds; the weights; and a paired bootstrap on test of every
combiner against the single arm with the best mean val balanced accuracy. One MLflow run; one
pyfunc version of the chosen combiner on the first seed's members is registered in
``mlflow.registered_model``, tagged like a classifier version so that ``dermagan promote``
treats it like any other. External test sets (params ``evaluate.external``) are scored beside test,
with the same weights and the same best single arm.
"""

from __future__ import annotations

from pathlib import Path

from dermagan.atomic import atomic_dir, atomic_file
from dermagan.config import Config
from dermagan.config.schema import EnsembleSection
from dermagan.device import pick_device
from dermagan.ensemble.fit import EnsembleSettings, fit_ensembles, stacking_settings
from dermagan.ensemble.report import write_documents, write_tables
from dermagan.ensemble.tracking import log_ensemble_run
from dermagan.errors import DermaganError
from dermagan.evaluate.external import external_set_names, load_sets
from dermagan.tracking.setup import configure

def ensemble_settings(cfg: Config) -> EnsembleSettings:
    """params ``ensemble`` (every key optional; the block itself too) and ``evaluate``, as plain values."""
    ens, ev = cfg.ensemble or EnsembleSection(), cfg.evaluate
    return EnsembleSettings(register=ens.register_, collapse_threshold=float(ens.collapse_threshold),
                            stacking=stacking_settings(ens.stacking.plain()), bootstrap_samples=ev.bootstrap_samples,
                            ci_level=ev.ci_level, bootstrap_seed=ev.seed, batch_size=ev.batch_size,
                            calibration_bins=ev.calibration_bins, verdict_classes=cfg.verdict_classes,
                            min_test_count=ev.min_test_count, power=ev.power)


def default_arms(cfg: Config) -> list[str]:
    """``ensemble.arms`` if set, else every arm of params.yaml ``arms``; each must be a known arm."""
    known = list(cfg.arms)
    arms = (cfg.ensemble.arms if cfg.ensemble else None) or known
    unknown = [a for a in arms if a not in known]
    if unknown:
        raise DermaganError(f"params: ensemble.arms lists unknown arm(s) {unknown}; arms are {known}")
    return list(arms)


def run_ensemble(cfg: Config, arms: list[str] | None, seeds: list[int] | None, prepared: Path, models_dir: Path,
                 out_dir: Path, metrics_json: Path, predictions_dir: Path, external_dir: Path | None = None) -> dict:
    """Fit the combiners on val per seed, score them on test, write the report, log and register; return the summary.

    ``external_dir`` (``prepare-external``'s folder): every combiner (weights unchanged) and the best single
    arm are also scored on each external test set: ``external.NAME`` of the summary, ``external/NAME/*.csv``
    and a section of report.md.
    """
    settings = ensemble_settings(cfg)
    arms = list(arms or default_arms(cfg))
    seeds = [int(s) for s in (seeds if seeds is not None else cfg.train.seeds)]
    if len(arms) < 2:
        raise DermaganError(f"ensemble: needs at least 2 arms, got {arms}")
    if len(set(arms)) != len(arms) or not seeds:
        raise DermaganError(f"ensemble: arms must be distinct and seeds non-empty (arms {arms}, seeds {seeds})")
    external = load_sets(external_dir, external_set_names(external_dir, cfg.evaluate.external, cfg.classes))
    result = fit_ensembles(arms, seeds, Path(prepared), Path(models_dir), settings, pick_device(cfg.train.device),
                           external)
    with (atomic_dir(Path(out_dir)) as tmp, atomic_dir(Path(predictions_dir)) as tmp_pred,
          atomic_file(Path(metrics_json)) as tmp_json):
        write_tables(result, tmp, tmp_pred)

        def write_report(registered: dict) -> None:  # called inside the MLflow run, before the folder is logged
            result.document["registered"] = registered
            tmp_json.write_text(write_documents(result, tmp))

        configure(cfg.mlflow.experiment)
        log_ensemble_run(result, cfg.mlflow.registered_model, (tmp, tmp_pred), write_report)
    return result.document

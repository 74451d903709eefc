"""The ensemble stage's MLflow run: params, metrics, report folders, and the registered pyfunc version.

The chosen combiner on the first seed's members is registered as one pyfunc version, tagged like a
classifier version (``val_bal_acc``, ``test_*``), so that ``dermagan promote`` treats it like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np

from dermagan.ensemble.fit import VAL_NOTE, EnsembleResult
from dermagan.ensemble.model import log_ensemble
from dermagan.evaluate.report import flat_metrics
from dermagan.tracking.setup import standard_tags


def log_ensemble_run(result: EnsembleResult, registered_model: str, folders: tuple[Path, Path],
                     write_report: Callable[[dict], None]) -> dict:
    """One run named ``ensemble`` in the current experiment: params, metrics, the report and predictions
    folders (``folders``); registers the chosen combiner in ``registered_model``. ``write_report(registered)``
    is called inside the run, before the folders are logged. Returns the ``registered`` entry."""
    r, s = result, result.settings
    seed, combiner, weights = r.register_seed, r.combiner, r.weights[r.register_seed][r.combiner]
    report, name = r.reports[(combiner, seed)], registered_model
    with mlflow.start_run(run_name="ensemble") as run:
        mlflow.set_tags(standard_tags("ensemble", dvc_stage="ensemble", registered_combiner=combiner,
                                      weights_fitted_on="real val only; test used only to report"))
        mlflow.log_params({"arms": ",".join(r.arms), "seeds": ",".join(map(str, r.seeds)),
                           "register": s.register, "registered_combiner": combiner,
                           "collapse_threshold": s.collapse_threshold,
                           "stacking.iters": s.stacking["iters"], "stacking.tol": s.stacking["tol"],
                           "bootstrap_samples": s.bootstrap_samples, "ci_level": s.ci_level,
                           "bootstrap_seed": s.bootstrap_seed,
                           "n_val": r.document["n_val"], "n_test": r.document["n_test"],
                           "best_single_arm": r.document["best_single"]["arm"]})
        mlflow.log_metrics(ensemble_metrics(r))
        mlflow.log_metrics(flat_metrics(report))  # test/bal_acc ... of the registered ensemble, as evaluate logs
        for set_name, scores in r.external.items():  # external/NAME/bal_acc ... of the registered ensemble
            mlflow.log_metrics({k: v for k, v in flat_metrics(scores.reports[(combiner, seed)],
                                                              f"external/{set_name}/").items() if np.isfinite(v)})
        info = log_ensemble(r.member_dirs(seed), weights, r.classes, r.image_size, name,
                            metadata={"combiner": combiner, "seed": seed, "members": list(r.arms),
                                      "weights": [float(w) for w in weights]})
        mlflow.log_table(r.predictions[(combiner, seed)], "test/predictions.json")  # what `promote`'s gate reads
        version = str(info.registered_model_version)
        tag_version(name, version, r)
        registered = {"registered_model": name, "version": version, "model_uri": f"models:/{name}/{version}",
                      "combiner": combiner, "seed": seed, "reason": r.reason, "run_id": run.info.run_id,
                      "val_bal_acc": r.val_score, "val_bal_acc_note": VAL_NOTE,
                      "test_bal_acc": report["bal_acc"]}
        write_report(registered)
        mlflow.log_artifacts(str(folders[0]), "ensemble")
        mlflow.log_artifacts(str(folders[1]), "predictions")
    return registered


def tag_version(name: str, version: str, result: EnsembleResult) -> None:
    """The tags a reader needs, as on a classifier version (arm, seed, what it was trained on, val and test
    balanced accuracy; ``kind`` keeps it out of ``promote``'s candidates), and a description holding the rest:
    members, weights, combiner, why it was registered."""
    seed, combiner = result.register_seed, result.combiner
    weights, report = result.weights[seed][combiner], result.reports[(combiner, seed)]
    arms, infos = result.arms, result.infos[seed]
    members = [f"{arm}:v{info.get('version', '?')}" for arm, info in zip(arms, infos)]
    tags = {"arm": f"ensemble_{combiner}", "seed": seed, "kind": "ensemble",
            "trained_on": "members' training sets; weights fitted on real val",
            "val_bal_acc": f"{result.val_score:.4f}",
            "test_bal_acc": f"{report['bal_acc']:.4f}",
            "test_bal_acc_ci": f"[{report['bal_acc_ci_low']:.4f}, {report['bal_acc_ci_high']:.4f}]"}
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.update_model_version(name, version, description=ensemble_card(result, members, weights, report))


def ensemble_card(result: EnsembleResult, members: list[str], weights, report: dict) -> str:
    """The version description: what the ensemble is and how far to trust its validation score."""
    lines = [f"# Ensemble ({result.combiner}), seed {result.register_seed}", "",
             f"Combines the seed-{result.register_seed} models of {len(members)} arms, inputs "
             f"{result.image_size} px, output classes {', '.join(result.classes)}. Registered because: "
             f"{result.reason}.", "", "| member | weight |", "|---|---:|"]
    lines += [f"| {m} | {w:.4f} |" for m, w in zip(members, weights)]
    lines += ["", f"Test balanced accuracy {report['bal_acc']:.4f} [{report['bal_acc_ci_low']:.4f}, "
              f"{report['bal_acc_ci_high']:.4f}] on the real-only test split; validation {result.val_score:.4f}: "
              f"{VAL_NOTE}.", "", "Research use only: not a medical device and not for diagnosis."]
    return "\n".join(lines)


def ensemble_metrics(result: EnsembleResult) -> dict[str, float]:
    """Every combiner's summary statistics, per-seed scores and weights, and verdicts against the best arm."""
    flat = {}
    for combiner, stats in result.document["combiners"].items():
        for key, value in stats.items():
            if key != "weights" and isinstance(value, (int, float)) and value is not None:
                flat[f"ensemble/{combiner}/{key}"] = float(value)
    for r in result.runs.to_dict("records"):
        prefix = f"ensemble/{r['combiner']}/s{r['seed']}"
        flat[f"{prefix}/test_bal_acc"], flat[f"{prefix}/val_bal_acc"] = r["bal_acc"], r["val_bal_acc"]
        for arm in result.arms:
            flat[f"weights/{r['combiner']}/s{r['seed']}/{arm}"] = r[f"w_{arm}"]
    for r in result.vs_best.to_dict("records"):
        for key in ("diff", "ci_low", "ci_high"):
            if np.isfinite(r[key]):
                flat[f"ensemble/{r['combiner']}/vs_best/{r['metric']}/{key}"] = float(r[key])
    for name, entry in result.document.get("external", {}).items():  # ensemble/external/NAME/...
        prefix = f"ensemble/external/{name}"
        for combiner, stats in entry["combiners"].items():
            for key, value in stats.items():
                if isinstance(value, (int, float)) and value is not None:
                    flat[f"{prefix}/{combiner}/{key}"] = float(value)
        for combiner, by_metric in entry["vs_best_single"].items():
            for metric, verdict in by_metric.items():
                for key in ("diff", "ci_low", "ci_high"):
                    if verdict.get(key) is not None:
                        flat[f"{prefix}/{combiner}/vs_best/{metric}/{key}"] = float(verdict[key])
    return {k: v for k, v in flat.items() if np.isfinite(v)}

"""The ensemble stage: combine the trained arms of each seed, weights fitted on real val only.

For every seed s the members are every listed arm's seed-s model (``artifacts/models/<arm>-s<s>``).
Each member's probabilities on the real **val** split fit four sets of weights (``bma``: exact
Bayesian model averaging; ``bma_tempered``: BMA with the log-likelihood divided by n_val;
``stacked``: mixture weights maximising the val log-likelihood; ``average``: 1/M). Only then are
the test probabilities combined and scored: the test split chooses nothing (neither weights, nor
the best single arm, nor the registered combiner). Reported per combiner: test balanced accuracy
and per-class recall, mean ± std over seeds; the weights; and a paired bootstrap on test of every
combiner against the single arm with the best mean val balanced accuracy (the compare stage's
``gan_vs_best``). One MLflow run; one pyfunc version of the chosen combiner on the first seed's
members is registered in ``mlflow.registered_model``, tagged like a classifier version so that
``dermagan promote`` treats it like any other.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dermagan.atomic import atomic_dir, atomic_file  # noqa: E402
from dermagan.classify.inference import predict_proba  # noqa: E402
from dermagan.data.prepared import read_split  # noqa: E402
from dermagan.device import pick_device  # noqa: E402
from dermagan.ensemble.model import log_ensemble  # noqa: E402
from dermagan.ensemble.weights import (  # noqa: E402
    COLLAPSE_THRESHOLD,
    average_weights,
    bma_weights,
    combine,
    effective_members,
    is_collapsed,
    stacked_weights,
)
from dermagan.errors import DermaganError  # noqa: E402
from dermagan.evaluate.calibration import expected_calibration_error  # noqa: E402
from dermagan.evaluate.compare import VERDICT_COLOURS, gan_vs_best, run_name  # noqa: E402
from dermagan.evaluate.metrics import balanced_accuracy  # noqa: E402
from dermagan.evaluate.plots import save  # noqa: E402
from dermagan.evaluate.report import evaluation_report, flat_metrics  # noqa: E402
from dermagan.params import section  # noqa: E402
from dermagan.serialize import json_safe  # noqa: E402
from dermagan.stages.evaluate import load_trained  # noqa: E402
from dermagan.tracking.setup import configure, standard_tags  # noqa: E402

COMBINERS: tuple[str, ...] = ("bma", "bma_tempered", "stacked", "average")
REGISTER_CHOICES: tuple[str, ...] = ("auto", *COMBINERS)
DEFAULTS = {"arms": None, "register": "auto", "collapse_threshold": COLLAPSE_THRESHOLD,
            "stacking": {"iters": 1000, "tol": 1e-10}}
VAL_NOTE = "the ensemble weights were fitted on this same real val split, so val_bal_acc is optimistic"


def ensemble_settings(params: dict) -> dict:
    """params.yaml ``ensemble`` with defaults (every key optional; the block itself too)."""
    given = params.get("ensemble") or {}
    if not isinstance(given, dict):
        raise DermaganError("params: 'ensemble' must be a mapping")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise DermaganError(f"params: unknown key(s) ensemble.{unknown[0]} (all: {unknown}); known: {sorted(DEFAULTS)}")
    settings = {**DEFAULTS, **given}
    stacking = {**DEFAULTS["stacking"], **(given.get("stacking") or {})}
    unknown = sorted(set(stacking) - set(DEFAULTS["stacking"]))
    if unknown:
        raise DermaganError(f"params: unknown key(s) ensemble.stacking.{unknown[0]}; known: iters, tol")
    settings["stacking"] = {"iters": int(stacking["iters"]), "tol": float(stacking["tol"])}
    if settings["register"] not in REGISTER_CHOICES:
        raise DermaganError(f"params: ensemble.register must be one of {list(REGISTER_CHOICES)}, "
                            f"got '{settings['register']}'")
    settings["collapse_threshold"] = float(settings["collapse_threshold"])
    if not 0 < settings["collapse_threshold"] <= 1:
        raise DermaganError("params: ensemble.collapse_threshold must be in (0, 1]")
    return settings


def default_arms(params: dict) -> list[str]:
    """``ensemble.arms`` if set, else every arm of params.yaml ``arms``; each must be a known arm."""
    known = list(section(params, "arms"))
    arms = ensemble_settings(params)["arms"] or known
    unknown = [a for a in arms if a not in known]
    if unknown:
        raise DermaganError(f"params: ensemble.arms lists unknown arm(s) {unknown}; arms are {known}")
    return list(arms)


def fit_weights(val_proba: np.ndarray, y_val: np.ndarray, stacking: dict) -> dict[str, np.ndarray]:
    """Every combiner's weights from the members' **val** probabilities (M, N_val, K) and val labels."""
    return {"bma": bma_weights(val_proba, y_val),
            "bma_tempered": bma_weights(val_proba, y_val, temperature=float(len(y_val))),
            "stacked": stacked_weights(val_proba, y_val, stacking["iters"], stacking["tol"]),
            "average": average_weights(val_proba.shape[0])}


def choose_registered(register: str, weights: dict[str, np.ndarray], threshold: float) -> tuple[str, str]:
    """The combiner to register and why: ``auto`` = bma unless its weights collapse, then stacked."""
    if register != "auto":
        return register, f"ensemble.register = {register}"
    if is_collapsed(weights["bma"], threshold):
        return "stacked", (f"auto: exact BMA collapsed (max weight {weights['bma'].max():.4f} > {threshold}), "
                           "so the stacked weights")
    return "bma", f"auto: exact BMA (max weight {weights['bma'].max():.4f} <= {threshold})"


def _members(models_dir: Path, arms: list[str], seed: int, image_size: int):
    models, infos = [], []
    for arm in arms:
        folder = Path(models_dir) / run_name(arm, seed)
        model, info = load_trained(folder)
        if int(model.image_size) != image_size:
            raise DermaganError(f"{folder / 'model.pt'}: trained at {model.image_size} px but the prepared "
                                f"images are {image_size} px; retrain or re-prepare")
        models.append(model)
        infos.append(info)
    classes = tuple(models[0].classes)
    for arm, model in zip(arms, models):
        if tuple(model.classes) != classes:
            raise DermaganError(f"{Path(models_dir) / run_name(arm, seed) / 'model.pt'}: classes {model.classes} "
                                f"differ from {run_name(arms[0], seed)}'s {classes}")
    return models, infos, classes


def _proba(models, images: np.ndarray, batch_size: int, device) -> np.ndarray:
    """Members' probabilities (M, N, K), computed exactly as the evaluate stage does."""
    return np.stack([predict_proba(m.to(device), images, batch_size, device) for m in models]).astype(np.float64)


def run_ensemble(params: dict, arms: list[str] | None, seeds: list[int] | None, prepared: Path, models_dir: Path,
                 out_dir: Path, metrics_json: Path, predictions_dir: Path) -> dict:
    """Fit the combiners on val per seed, score them on test, write the report, log and register; return the summary."""
    settings = ensemble_settings(params)
    arms = list(arms or default_arms(params))
    seeds = [int(s) for s in (seeds if seeds is not None else section(params, "train", "seeds"))]
    if len(arms) < 2:
        raise DermaganError(f"ensemble: needs at least 2 arms, got {arms}")
    if len(set(arms)) != len(arms) or not seeds:
        raise DermaganError(f"ensemble: arms must be distinct and seeds non-empty (arms {arms}, seeds {seeds})")
    cfg = section(params, "evaluate")
    n_boot, level, boot_seed = int(cfg["bootstrap_samples"]), float(cfg["ci_level"]), int(cfg["seed"])
    batch_size, n_bins = int(cfg["batch_size"]), int(cfg.get("calibration_bins", 15))
    device = pick_device(section(params, "train", "device"))
    val = read_split(prepared, "val")
    image_size = int(val.images.shape[1])

    weights, val_proba, test_proba, infos, classes = {}, {}, {}, {}, None
    test = None
    for seed in seeds:
        models, infos[seed], classes = _members(models_dir, arms, seed, image_size)
        val_proba[seed] = _proba(models, val.images, batch_size, device)
        weights[seed] = fit_weights(val_proba[seed], val.labels, settings["stacking"])  # val only
        test = test if test is not None else read_split(prepared, "test")  # read after the first fit
        test_proba[seed] = _proba(models, test.images, batch_size, device)
    y_val, y_test = val.labels, test.labels

    members = _member_table(arms, seeds, infos, val_proba, test_proba, y_val, y_test, classes)
    val_by_arm = members.groupby("arm", sort=False)["val_bal_acc"].mean()
    best_arm = str(val_by_arm.idxmax())  # chosen on val
    runs, reports, predictions = [], {}, {}
    for combiner in COMBINERS:
        for seed in seeds:
            w = weights[seed][combiner]
            proba = combine(test_proba[seed], w)
            report = evaluation_report(y_test, proba, classes, n_boot, level, boot_seed)
            report["ece"] = float(expected_calibration_error(y_test, proba, n_bins))
            reports[(combiner, seed)] = report
            predictions[(combiner, seed)] = pd.DataFrame({
                "image_id": test.image_ids, "actual": [classes[i] for i in y_test],
                "predicted": [classes[i] for i in proba.argmax(1)]})
            runs.append({"combiner": combiner, "seed": seed,
                         "val_bal_acc": balanced_accuracy(y_val, combine(val_proba[seed], w).argmax(1), len(classes)),
                         "bal_acc": report["bal_acc"], "bal_acc_ci_low": report["bal_acc_ci_low"],
                         "bal_acc_ci_high": report["bal_acc_ci_high"], "macro_f1": report["macro_f1"],
                         "ece": report["ece"],
                         **{f"recall_{c}": report["per_class"][c]["recall"] for c in classes},
                         "max_weight": float(w.max()), "effective_members": effective_members(w),
                         "collapsed": is_collapsed(w, settings["collapse_threshold"]),
                         **{f"w_{arm}": float(x) for arm, x in zip(arms, w)}})
    runs = pd.DataFrame(runs)
    summary_table = _summary(runs, members, best_arm, classes)
    judged = {best_arm: {s: members.loc[(members["arm"] == best_arm) & (members["seed"] == s), "pred"].iloc[0]
                         for s in seeds}}
    for combiner in COMBINERS:
        judged[f"ensemble_{combiner}"] = {s: predictions[(combiner, s)]["predicted"].map(
            {c: i for i, c in enumerate(classes)}).to_numpy() for s in seeds}
    vs_best = gan_vs_best(y_test, judged, [f"ensemble_{c}" for c in COMBINERS], classes, n_boot, level, boot_seed)
    vs_best = vs_best.rename(columns={"gan_arm": "combiner", "best_non_gan_arm": "best_single_arm",
                                      "gan_value": "ensemble_value", "best_value": "single_value"})
    vs_best["combiner"] = vs_best["combiner"].str.removeprefix("ensemble_")

    register_seed = seeds[0]
    combiner, reason = choose_registered(settings["register"], weights[register_seed], settings["collapse_threshold"])
    weights_long = pd.DataFrame([{"combiner": c, "seed": s, "arm": arm, "weight": float(x)}
                                 for c in COMBINERS for s in seeds for arm, x in zip(arms, weights[s][c])])
    document = _document(arms, seeds, len(y_val), len(y_test), best_arm, val_by_arm, summary_table, vs_best,
                         weights, settings, classes)
    with (atomic_dir(Path(out_dir)) as tmp, atomic_dir(Path(predictions_dir)) as tmp_pred,
          atomic_file(Path(metrics_json)) as tmp_json):
        for (c, s), frame in predictions.items():
            frame.to_csv(tmp_pred / f"{run_name(f'ensemble_{c}', s)}.csv", index=False)
        save(weights_figure(weights_long, arms, seeds, settings["collapse_threshold"]), tmp / "weights.png")
        save(ensemble_figure(runs, members, best_arm, vs_best, level), tmp / "ensemble.png")
        runs.to_csv(tmp / "runs.csv", index=False)
        members.drop(columns="pred").to_csv(tmp / "members.csv", index=False)
        summary_table.to_csv(tmp / "combiners.csv", index=False)
        weights_long.to_csv(tmp / "weights.csv", index=False)
        vs_best.to_csv(tmp / "vs_best_single.csv", index=False)
        val_score = float(runs.loc[(runs["combiner"] == combiner) & (runs["seed"] == register_seed),
                                   "val_bal_acc"].iloc[0])

        def write_report(registered: dict) -> None:  # called inside the MLflow run, before the folder is logged
            document["registered"] = registered
            markdown = markdown_report(document, summary_table, runs, vs_best, arms, seeds, n_boot, level)
            (tmp / "report.md").write_text(markdown)
            (tmp / "summary.json").write_text(json.dumps(document, indent=2, allow_nan=False))
            tmp_json.write_text(json.dumps(document, indent=2, allow_nan=False))

        _log_to_mlflow(params, settings, arms, seeds, models_dir, document, runs, vs_best, tmp, tmp_pred,
                       combiner, reason, register_seed, weights[register_seed][combiner], classes, image_size,
                       reports[(combiner, register_seed)], predictions[(combiner, register_seed)],
                       infos[register_seed], val_score, write_report)
    return document


def _member_table(arms, seeds, infos, val_proba, test_proba, y_val, y_test, classes) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        for m, arm in enumerate(arms):
            pred = test_proba[seed][m].argmax(1)
            recall = {f"recall_{c}": float(np.mean(pred[y_test == k] == k)) if (y_test == k).any() else np.nan
                      for k, c in enumerate(classes)}
            rows.append({"arm": arm, "seed": seed, "version": str(infos[seed][m].get("version", "")),
                         "val_bal_acc": balanced_accuracy(y_val, val_proba[seed][m].argmax(1), len(classes)),
                         "bal_acc": balanced_accuracy(y_test, pred, len(classes)), **recall, "pred": pred})
    return pd.DataFrame(rows)


def _summary(runs: pd.DataFrame, members: pd.DataFrame, best_arm: str, classes) -> pd.DataFrame:
    """Mean and std (ddof=1) over seeds per combiner, then the best single arm (chosen on val)."""
    metrics = ["bal_acc", "val_bal_acc", *[f"recall_{c}" for c in classes]]
    rows = []
    for combiner, group in runs.groupby("combiner", sort=False):
        rows.append({"model": combiner, "kind": "ensemble", "n_seeds": len(group),
                     "collapsed_seeds": int(group["collapsed"].sum()),
                     **_mean_std(group, [*metrics, "macro_f1", "ece", "effective_members"])})
    best = members[members["arm"] == best_arm]
    rows.append({"model": best_arm, "kind": "best single arm (by val)", "n_seeds": len(best),
                 **_mean_std(best, metrics)})
    return pd.DataFrame(rows)


def _mean_std(frame: pd.DataFrame, columns: list[str]) -> dict:
    out = {}
    for column in columns:
        values = frame[column].astype(float)
        out[f"{column}_mean"] = float(values.mean())
        out[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return out


def _document(arms, seeds, n_val, n_test, best_arm, val_by_arm, summary_table, vs_best, weights, settings,
              classes) -> dict:
    stats = {r["model"]: {k: (int(v) if k in ("n_seeds", "collapsed_seeds") else v) for k, v in r.items()
                          if k not in ("model", "kind")}
             for r in summary_table.to_dict("records") if r["kind"] == "ensemble"}
    for combiner in COMBINERS:
        stats[combiner]["weights"] = {f"s{s}": dict(zip(arms, map(float, weights[s][combiner]))) for s in seeds}
    verdicts = {}
    for r in vs_best.to_dict("records"):
        verdicts.setdefault(r["combiner"], {})[r["metric"]] = {
            k: r[k] for k in ("diff", "ci_low", "ci_high", "verdict")}
    best = summary_table[summary_table["model"] == best_arm].iloc[0]
    return json_safe({
        "arms": arms, "seeds": seeds, "classes": list(classes), "n_val": n_val, "n_test": n_test,
        "weights_fitted_on": "val", "collapse_threshold": settings["collapse_threshold"],
        "best_single": {"arm": best_arm, "val_bal_acc_by_arm": {a: float(v) for a, v in val_by_arm.items()},
                        "test_bal_acc_mean": float(best["bal_acc_mean"]),
                        "test_bal_acc_std": float(best["bal_acc_std"])},
        "combiners": stats, "vs_best_single": verdicts})


def _log_to_mlflow(params, settings, arms, seeds, models_dir, document, runs, vs_best, folder, pred_folder,
                   combiner, reason, seed, weights, classes, image_size, report, predictions, infos,
                   val_bal_acc, write_report) -> dict:
    """One run named ``ensemble``: params, metrics, the report folder; registers the chosen combiner."""
    configure(section(params, "mlflow", "experiment"))
    name = section(params, "mlflow", "registered_model")
    with mlflow.start_run(run_name="ensemble") as run:
        mlflow.set_tags(standard_tags("ensemble", dvc_stage="ensemble", registered_combiner=combiner,
                                      weights_fitted_on="real val only; test used only to report"))
        mlflow.log_params({"arms": ",".join(arms), "seeds": ",".join(map(str, seeds)),
                           "register": settings["register"], "registered_combiner": combiner,
                           "collapse_threshold": settings["collapse_threshold"],
                           "stacking.iters": settings["stacking"]["iters"], "stacking.tol": settings["stacking"]["tol"],
                           "bootstrap_samples": params["evaluate"]["bootstrap_samples"],
                           "ci_level": params["evaluate"]["ci_level"], "bootstrap_seed": params["evaluate"]["seed"],
                           "n_val": document["n_val"], "n_test": document["n_test"],
                           "best_single_arm": document["best_single"]["arm"]})
        mlflow.log_metrics(_flat_metrics(document, runs, vs_best, arms, classes))
        mlflow.log_metrics(flat_metrics(report))  # test/bal_acc ... of the registered ensemble, as evaluate logs
        member_dirs = {arm: Path(models_dir) / run_name(arm, seed) for arm in arms}
        info = log_ensemble(member_dirs, weights, classes, image_size, name,
                            metadata={"combiner": combiner, "seed": seed, "members": list(arms),
                                      "weights": [float(w) for w in weights]})
        mlflow.log_table(predictions, "test/predictions.json")  # what `dermagan promote`'s gate reads
        version = str(info.registered_model_version)
        _tag_version(name, version, combiner, seed, arms, weights, infos, image_size, report, val_bal_acc, reason)
        registered = {"registered_model": name, "version": version, "model_uri": f"models:/{name}/{version}",
                      "combiner": combiner, "seed": seed, "reason": reason, "run_id": run.info.run_id,
                      "val_bal_acc": val_bal_acc, "val_bal_acc_note": VAL_NOTE,
                      "test_bal_acc": report["bal_acc"]}
        write_report(registered)
        mlflow.log_artifacts(str(folder), "ensemble")
        mlflow.log_artifacts(str(pred_folder), "predictions")
    return registered


def _tag_version(name, version, combiner, seed, arms, weights, infos, image_size, report, val_bal_acc, reason):
    """The tags train + evaluate put on a classifier version (val_bal_acc, test_*), plus the ensemble's own."""
    tags = {"arm": f"ensemble_{combiner}", "seed": seed, "kind": "ensemble", "combiner": combiner,
            "extra": "ensemble", "backbone": "ensemble", "image_size": image_size, "flavor": "pyfunc",
            "members": ",".join(f"{arm}:v{info.get('version', '?')}" for arm, info in zip(arms, infos)),
            "weights": ",".join(f"{arm}={w:.4f}" for arm, w in zip(arms, weights)),
            "weights_fitted_on": "val", "val_bal_acc": f"{val_bal_acc:.4f}", "val_bal_acc_note": VAL_NOTE,
            "register_rule": reason,
            "test_bal_acc": f"{report['bal_acc']:.4f}",
            "test_bal_acc_ci": f"[{report['bal_acc_ci_low']:.4f}, {report['bal_acc_ci_high']:.4f}]",
            "test_macro_f1": f"{report['macro_f1']:.4f}",
            **{f"test_recall_{c}": f"{v['recall']:.4f}" for c, v in report["per_class"].items()}}
    if np.isfinite(report.get("ece", np.nan)):
        tags["test_ece"] = f"{report['ece']:.4f}"
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def _flat_metrics(document, runs, vs_best, arms, classes) -> dict[str, float]:
    flat = {}
    for combiner, stats in document["combiners"].items():
        for key, value in stats.items():
            if key != "weights" and isinstance(value, (int, float)) and value is not None:
                flat[f"ensemble/{combiner}/{key}"] = float(value)
    for r in runs.to_dict("records"):
        prefix = f"ensemble/{r['combiner']}/s{r['seed']}"
        flat[f"{prefix}/test_bal_acc"], flat[f"{prefix}/val_bal_acc"] = r["bal_acc"], r["val_bal_acc"]
        for arm in arms:
            flat[f"weights/{r['combiner']}/s{r['seed']}/{arm}"] = r[f"w_{arm}"]
    for r in vs_best.to_dict("records"):
        for key in ("diff", "ci_low", "ci_high"):
            if np.isfinite(r[key]):
                flat[f"ensemble/{r['combiner']}/vs_best/{r['metric']}/{key}"] = float(r[key])
    return {k: v for k, v in flat.items() if np.isfinite(v)}


# --- report ----------------------------------------------------------------------------------

def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def _spread(row, metric: str, digits: int = 3) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    return _fmt(mean, digits) if pd.isna(std) else f"{_fmt(mean, digits)} ± {_fmt(std, digits)}"


def markdown_report(document, summary_table, runs, vs_best, arms, seeds, n_boot, level) -> str:
    """report.md: what was fitted where, the combiners' test scores, their weights, the paired bootstrap."""
    classes = document["classes"]
    best = document["best_single"]["arm"]
    ranking = ", ".join(f"{a} {v:.3f}" for a, v in sorted(document["best_single"]["val_bal_acc_by_arm"].items(),
                                                         key=lambda kv: -kv[1]))
    lines = ["# Ensembles of the classifier arms", "",
             f"Members: {', '.join(arms)}; one ensemble per seed ({', '.join(map(str, seeds))}) of the arms' "
             f"models of that seed. Weights are fitted on the real val split only ({document['n_val']} images); "
             f"every score below is on the real-only test split ({document['n_test']} images), which chooses nothing.",
             "", "- `bma`: exact Bayesian model averaging, w ∝ exp(Σ log p(y|x)) over val (uniform prior);",
             "- `bma_tempered`: the same with the log-likelihood divided by n_val (per-image likelihood);",
             "- `stacked`: mixture weights maximising the val log-likelihood of Σ w p (EM);",
             "- `average`: 1/M each.", "",
             f"Best single arm, chosen on val (mean val balanced accuracy: {ranking}): `{best}`.", "",
             "## Test scores: mean ± std over seeds", ""]
    header = ["model", "test bal_acc", "val bal_acc*", "collapsed seeds", *[f"recall {c}" for c in classes]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in summary_table.iterrows():
        collapsed = "" if r["kind"] != "ensemble" else f"{int(r['collapsed_seeds'])}/{int(r['n_seeds'])}"
        name = r["model"] if r["kind"] == "ensemble" else f"{r['model']} (best single arm)"
        lines.append("| " + " | ".join([name, _spread(r, "bal_acc"), _spread(r, "val_bal_acc"), collapsed,
                                         *[_spread(r, f"recall_{c}", 2) for c in classes]]) + " |")
    lines += ["", f"\\* ensemble val scores are optimistic: {VAL_NOTE.split(', so')[0]}. Collapsed: the largest "
              f"weight exceeds {document['collapse_threshold']}.", "", "## Weights per seed", ""]
    header = ["combiner", "seed", *arms, "effective members"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in runs.iterrows():
        lines.append("| " + " | ".join([r["combiner"], str(r["seed"]), *[_fmt(r[f"w_{a}"]) for a in arms],
                                         _fmt(r["effective_members"], 2)]) + " |")
    lines += ["", f"## Each combiner vs the best single arm (`{best}`)", "",
              f"diff = ensemble − `{best}`, each averaged over the seeds (seed s ensemble vs `{best}` seed s); "
              f"{level:.0%} CI from {n_boot} paired bootstrap resamples of test images (the compare stage's "
              "`gan_vs_best`); \"better\"/\"worse\" only when the whole CI is above/below 0.", ""]
    header = ["combiner", "metric", "ensemble", best, f"diff [{level:.0%} CI]", "verdict"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in vs_best.iterrows():
        lines.append("| " + " | ".join([r["combiner"], r["metric"], _fmt(r["ensemble_value"]), _fmt(r["single_value"]),
                                         f"{r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
                                         r["verdict"]]) + " |")
    reg = document.get("registered")
    if reg:
        lines += ["", "## Registered", "",
                  f"`{reg['model_uri']}`: `{reg['combiner']}` on the seed-{reg['seed']} members ({reg['reason']}); "
                  f"test bal_acc {reg['test_bal_acc']:.4f}, val bal_acc {reg['val_bal_acc']:.4f} ({VAL_NOTE})."]
    return "\n".join(lines) + "\n"


def weights_figure(weights: pd.DataFrame, arms: list[str], seeds: list[int], threshold: float) -> plt.Figure:
    """One panel per combiner: each arm's weight, one bar per seed."""
    fig, axes = plt.subplots(1, len(COMBINERS), figsize=(3.2 * len(COMBINERS), 3.6), sharey=True)
    width = 0.8 / len(seeds)
    x = np.arange(len(arms))
    for ax, combiner in zip(axes, COMBINERS):
        for j, seed in enumerate(seeds):
            values = weights[(weights["combiner"] == combiner) & (weights["seed"] == seed)].set_index("arm")["weight"]
            ax.bar(x + (j - (len(seeds) - 1) / 2) * width, [values[a] for a in arms], width, label=f"seed {seed}")
        ax.axhline(threshold, color="C3", lw=0.8, ls="--")
        ax.set(xticks=x, title=combiner, ylim=(0, 1.05))
        ax.set_xticklabels(arms, rotation=45, ha="right", fontsize=8)
    axes[0].set_ylabel("weight (fitted on val)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Ensemble weights per seed (dashed: collapse threshold {threshold})")
    fig.tight_layout()
    return fig


def ensemble_figure(runs: pd.DataFrame, members: pd.DataFrame, best_arm: str, vs_best: pd.DataFrame,
                    level: float) -> plt.Figure:
    """Left: test balanced accuracy per seed (dots) and mean, combiners and arms. Right: diff vs best single arm."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    groups = [(c, runs.loc[runs["combiner"] == c, "bal_acc"].to_numpy(), "C2") for c in COMBINERS]
    groups += [(a + (" (best, val)" if a == best_arm else ""), members.loc[members["arm"] == a, "bal_acc"].to_numpy(),
                "C0") for a in members["arm"].unique()]
    for y, (label, values, colour) in enumerate(groups):
        left.scatter(values, np.full(len(values), y), s=18, color=colour, alpha=0.6)
        left.plot(values.mean(), y, "D", color=colour, markeredgecolor="black")
    left.set(yticks=range(len(groups)), yticklabels=[g[0] for g in groups], xlabel="test balanced accuracy",
             title="Ensembles (green) and single arms (blue): seeds and mean")
    left.invert_yaxis()
    left.grid(axis="x", alpha=0.3)
    for i, (_, r) in enumerate(vs_best.iterrows()):
        err = [[max(r["diff"] - r["ci_low"], 0)], [max(r["ci_high"] - r["diff"], 0)]]
        right.errorbar(r["diff"], i, xerr=err, fmt="o", capsize=3, color=VERDICT_COLOURS[r["verdict"]])
    right.axvline(0, color="black", lw=0.8)
    labels = [f"{r['combiner']}: {r['metric']}" for _, r in vs_best.iterrows()]
    right.set(yticks=range(len(vs_best)), yticklabels=labels,
              xlabel=f"ensemble − {best_arm} ({level:.0%} paired bootstrap CI)", title="vs the best single arm")
    right.invert_yaxis()
    right.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig

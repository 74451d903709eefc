"""Fit every combiner on the members' real **val** probabilities per seed, then score them on test.

For every seed s the members are every listed arm's seed-s model (``<models_dir>/<arm>-s<s>``).
Each member's probabilities on the real val split fit four sets of weights (``bma``: exact
Bayesian model averaging; ``bma_tempered``: BMA with the log-likelihood divided by n_val;
``stacked``: mixture weights maximising the val log-likelihood; ``average``: 1/M). Only then are
the test probabilities combined and scored: the test split chooses nothing (neither weights, nor
the best single arm, nor the combiner to register). Plain values in, an :class:`EnsembleResult` out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dermagan.classify.artifact import load_trained
from dermagan.classify.inference import predict_proba
from dermagan.config.layout import LAYOUT
from dermagan.data.prepared import SplitArrays, read_split
from dermagan.ensemble.weights import (
    average_weights,
    bma_weights,
    combine,
    effective_members,
    is_collapsed,
    stacked_weights,
)
from dermagan.errors import DermaganError
from dermagan.evaluate.calibration import expected_calibration_error
from dermagan.evaluate.compare import gan_vs_best
from dermagan.evaluate.external import UNDEFINED
from dermagan.evaluate.metrics import balanced_accuracy
from dermagan.evaluate.report import evaluation_report
from dermagan.serialize import json_safe

COMBINERS: tuple[str, ...] = ("bma", "bma_tempered", "stacked", "average")
STACKING_DEFAULTS = {"iters": 1000, "tol": 1e-10}
VAL_NOTE = "the ensemble weights were fitted on this same real val split, so val_bal_acc is optimistic"


@dataclass(frozen=True)
class EnsembleSettings:
    """The knobs of one ensemble run (params ``ensemble`` and ``evaluate``), as plain values."""

    register: str = "auto"  # auto | one of COMBINERS
    collapse_threshold: float = 0.99
    stacking: dict = field(default_factory=lambda: dict(STACKING_DEFAULTS))  # {iters, tol}
    bootstrap_samples: int = 2000
    ci_level: float = 0.95
    bootstrap_seed: int = 0
    batch_size: int = 256
    calibration_bins: int = 15
    verdict_classes: tuple[str, ...] | None = None  # recalls the verdicts judge (None: every class)
    min_test_count: int = 0                          # classes with fewer test images stay out of BMA
    power: float = 0.8                               # for each verdict's minimum detectable difference


@dataclass
class EnsembleResult:
    """Everything the report, the figures and the MLflow run of one ensemble run need."""

    settings: EnsembleSettings
    arms: list[str]
    seeds: list[int]
    classes: tuple[str, ...]
    image_size: int
    models_dir: Path
    weights: dict[int, dict[str, np.ndarray]]  # seed -> combiner -> weights (fitted on val)
    infos: dict[int, list[dict]]  # seed -> the members' mlflow.json
    members: pd.DataFrame  # one row per (arm, seed), with the test predictions in "pred"
    runs: pd.DataFrame  # one row per (combiner, seed)
    summary: pd.DataFrame  # mean/std over seeds per combiner, then the best single arm
    vs_best: pd.DataFrame  # paired bootstrap of every combiner against the best single arm
    weights_long: pd.DataFrame
    reports: dict[tuple[str, int], dict]  # (combiner, seed) -> evaluation report on test
    predictions: dict[tuple[str, int], pd.DataFrame]  # (combiner, seed) -> image_id, actual, predicted
    best_arm: str
    combiner: str  # the one to register (chosen on val)
    reason: str
    register_seed: int
    val_score: float  # val balanced accuracy of the registered combiner (optimistic: fitted there)
    document: dict  # summary.json / metrics/ensemble.json ("registered" is added once registered)
    external: dict[str, ExternalScores] = field(default_factory=dict)  # external test sets, scored like test

    def member_dirs(self, seed: int) -> dict[str, Path]:
        return {arm: Path(self.models_dir) / LAYOUT.run_name(arm, seed) for arm in self.arms}


def stacking_settings(given: dict | None) -> dict:
    """``ensemble.stacking`` with defaults: ``{"iters": int, "tol": float}``; other keys are refused."""
    stacking = {**STACKING_DEFAULTS, **(given or {})}
    unknown = sorted(set(stacking) - set(STACKING_DEFAULTS))
    if unknown:
        raise DermaganError(f"params: unknown key(s) ensemble.stacking.{unknown[0]}; known: iters, tol")
    return {"iters": int(stacking["iters"]), "tol": float(stacking["tol"])}


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


def load_members(models_dir: Path, arms: list[str], seed: int, image_size: int):
    """The seed-``seed`` model of every arm, their mlflow.json and their (common) classes."""
    models, infos = [], []
    for arm in arms:
        folder = Path(models_dir) / LAYOUT.run_name(arm, seed)
        model, info = load_trained(folder)
        if int(model.image_size) != image_size:
            raise DermaganError(f"{folder / 'model.pt'}: trained at {model.image_size} px but the prepared "
                                f"images are {image_size} px; retrain or re-prepare")
        models.append(model)
        infos.append(info)
    classes = tuple(models[0].classes)
    for arm, model in zip(arms, models):
        if tuple(model.classes) != classes:
            raise DermaganError(f"{Path(models_dir) / LAYOUT.run_name(arm, seed) / 'model.pt'}: classes "
                                f"{model.classes} differ from {LAYOUT.run_name(arms[0], seed)}'s {classes}")
    return models, infos, classes


def member_proba(models, images: np.ndarray, batch_size: int, device) -> np.ndarray:
    """Members' probabilities (M, N, K), computed exactly as the evaluate stage does."""
    return np.stack([predict_proba(m.to(device), images, batch_size, device) for m in models]).astype(np.float64)


def fit_ensembles(arms: list[str], seeds: list[int], prepared: Path, models_dir: Path, settings: EnsembleSettings,
                  device, external: dict[str, SplitArrays] | None = None) -> EnsembleResult:
    """Fit the combiners on val per seed, score them (and the members) on test, choose what to register.

    ``external``: external test sets (name -> arrays), each scored like test with the same weights and the
    same best single arm (both chosen on val): :attr:`EnsembleResult.external`, ``document["external"]``.
    """
    s = settings
    val = read_split(prepared, "val")
    image_size = int(val.images.shape[1])
    weights, val_proba, test_proba, infos, classes, test = {}, {}, {}, {}, None, None
    external_proba: dict[str, dict[int, np.ndarray]] = {}
    for seed in seeds:
        models, infos[seed], classes = load_members(models_dir, arms, seed, image_size)
        val_proba[seed] = member_proba(models, val.images, s.batch_size, device)
        weights[seed] = fit_weights(val_proba[seed], val.labels, s.stacking)  # val only
        test = test if test is not None else read_split(prepared, "test")  # read after the first fit
        test_proba[seed] = member_proba(models, test.images, s.batch_size, device)
        for name, arrays in (external or {}).items():  # scored like test, after the weights are fitted
            external_proba.setdefault(name, {})[seed] = member_proba(models, arrays.images, s.batch_size, device)
    y_val, y_test = val.labels, test.labels

    members = member_table(arms, seeds, infos, val_proba, test_proba, y_val, y_test, classes, s.min_test_count)
    val_by_arm = members.groupby("arm", sort=False)["val_bal_acc"].mean()
    best_arm = str(val_by_arm.idxmax())  # chosen on val
    runs, reports, predictions = score_combiners(arms, seeds, weights, val_proba, y_val, test_proba, y_test,
                                                 test.image_ids, classes, s)
    summary = summary_table(runs, members, best_arm, classes)
    vs_best = versus_best(y_test, members, predictions, best_arm, seeds, classes, s)

    register_seed = seeds[0]
    combiner, reason = choose_registered(s.register, weights[register_seed], s.collapse_threshold)
    weights_long = pd.DataFrame([{"combiner": c, "seed": seed, "arm": arm, "weight": float(x)}
                                 for c in COMBINERS for seed in seeds for arm, x in zip(arms, weights[seed][c])])
    document = summary_document(arms, seeds, len(y_val), len(y_test), best_arm, val_by_arm, summary, vs_best,
                                weights, s.collapse_threshold, classes)
    val_score = float(runs.loc[(runs["combiner"] == combiner) & (runs["seed"] == register_seed),
                               "val_bal_acc"].iloc[0])
    scored_external = {name: score_external(arrays, external_proba[name], arms, seeds, infos, weights, val_proba,
                                            y_val, best_arm, classes, s)
                       for name, arrays in (external or {}).items()}
    if scored_external:
        document["external"] = {name: e.document for name, e in scored_external.items()}
    return EnsembleResult(s, arms, seeds, classes, image_size, Path(models_dir), weights, infos, members, runs, summary,
                          vs_best, weights_long, reports, predictions, best_arm, combiner, reason, register_seed,
                          val_score, document, scored_external)


def score_combiners(arms, seeds, weights, val_proba, y_val, proba_by_seed, y_true, image_ids, classes,
                    s: EnsembleSettings) -> tuple[pd.DataFrame, dict, dict]:
    """Every combiner's val-fitted weights applied to the members' probabilities on one split (test, or an
    external set), per seed: the runs table, the evaluation reports and the predictions frames."""
    runs, reports, predictions = [], {}, {}
    for combiner in COMBINERS:
        for seed in seeds:
            w = weights[seed][combiner]
            proba = combine(proba_by_seed[seed], w)
            report = evaluation_report(y_true, proba, classes, s.bootstrap_samples, s.ci_level, s.bootstrap_seed,
                                       min_test_count=s.min_test_count)
            report["ece"] = float(expected_calibration_error(y_true, proba, s.calibration_bins))
            reports[(combiner, seed)] = report
            predictions[(combiner, seed)] = pd.DataFrame({
                "image_id": image_ids, "actual": [classes[i] for i in y_true],
                "predicted": [classes[i] for i in proba.argmax(1)]})
            runs.append({"combiner": combiner, "seed": seed,
                         "val_bal_acc": balanced_accuracy(y_val, combine(val_proba[seed], w).argmax(1), len(classes)),
                         "bal_acc": report["bal_acc"], "bal_acc_ci_low": report["bal_acc_ci_low"],
                         "bal_acc_ci_high": report["bal_acc_ci_high"], "macro_f1": report["macro_f1"],
                         "ece": report["ece"],
                         **{f"recall_{c}": report["per_class"][c]["recall"] for c in classes},
                         "max_weight": float(w.max()), "effective_members": effective_members(w),
                         "collapsed": is_collapsed(w, s.collapse_threshold),
                         **{f"w_{arm}": float(x) for arm, x in zip(arms, w)}})
    return pd.DataFrame(runs), reports, predictions


@dataclass
class ExternalScores:
    """One external test set scored by every combiner (val-fitted weights) and every member."""

    n_images: int
    members: pd.DataFrame  # one row per (arm, seed): val and this set's scores, predictions in "pred"
    runs: pd.DataFrame  # one row per (combiner, seed)
    summary: pd.DataFrame  # mean/std over seeds per combiner, then the best single arm (chosen on val)
    vs_best: pd.DataFrame  # paired bootstrap of every combiner against that arm, on this set
    reports: dict[tuple[str, int], dict]  # (combiner, seed) -> evaluation report on this set
    document: dict  # the ensemble summary's external.NAME entry


def score_external(arrays: SplitArrays, proba_by_seed: dict[int, np.ndarray], arms, seeds, infos, weights,
                   val_proba, y_val, best_arm: str, classes, s: EnsembleSettings) -> ExternalScores:
    """Score one external set like test: nothing is fitted or chosen on it. A class the set lacks has no
    recall (NaN; its verdicts ``undefined on this set``)."""
    y_true = arrays.labels
    members = member_table(arms, seeds, infos, val_proba, proba_by_seed, y_val, y_true, classes, s.min_test_count)
    runs, reports, predictions = score_combiners(arms, seeds, weights, val_proba, y_val, proba_by_seed, y_true,
                                                 arrays.image_ids, classes, s)
    absent = [c for k, c in enumerate(classes) if not (y_true == k).any()]
    runs[[f"recall_{c}" for c in absent]] = np.nan
    summary = summary_table(runs, members, best_arm, classes)
    vs_best = versus_best(y_true, members, predictions, best_arm, seeds, classes, s)
    vs_best.loc[vs_best["n_resamples"] == 0, "verdict"] = UNDEFINED
    return ExternalScores(len(y_true), members, runs, summary, vs_best, reports,
                          external_document(len(y_true), summary, vs_best, best_arm, classes, y_true))


def external_document(n_images: int, summary: pd.DataFrame, vs_best: pd.DataFrame, best_arm: str, classes,
                      y_true: np.ndarray) -> dict:
    """One set's entry of the summary's ``external`` block: its counts, the combiners' scores (no weights:
    they are the test's), the best single arm's (chosen on val) and the verdicts against it."""
    stats = {r["model"]: {k: (int(v) if k in ("n_seeds", "collapsed_seeds") else v) for k, v in r.items()
                          if k not in ("model", "kind")}
             for r in summary.to_dict("records") if r["kind"] == "ensemble"}
    best = summary[summary["model"] == best_arm].iloc[0]
    verdicts = {}
    for r in vs_best.to_dict("records"):
        verdicts.setdefault(r["combiner"], {})[r["metric"]] = {k: r[k] for k in ("diff", "ci_low", "ci_high", "verdict")}
    counts = np.bincount(y_true, minlength=len(classes))
    return json_safe({"n_images": n_images, "counts": {c: int(n) for c, n in zip(classes, counts)},
                      "best_single": {"arm": best_arm, "chosen_on": "val",
                                      "bal_acc_mean": float(best["bal_acc_mean"]),
                                      "bal_acc_std": float(best["bal_acc_std"])},
                      "combiners": stats, "vs_best_single": verdicts})


def versus_best(y_test, members: pd.DataFrame, predictions: dict, best_arm: str, seeds: list[int], classes,
                settings: EnsembleSettings) -> pd.DataFrame:
    """The compare stage's ``gan_vs_best`` of every combiner against the best single arm (paired, on test)."""
    judged = {best_arm: {s: members.loc[(members["arm"] == best_arm) & (members["seed"] == s), "pred"].iloc[0]
                         for s in seeds}}
    for combiner in COMBINERS:
        judged[f"ensemble_{combiner}"] = {s: predictions[(combiner, s)]["predicted"].map(
            {c: i for i, c in enumerate(classes)}).to_numpy() for s in seeds}
    vs_best = gan_vs_best(y_test, judged, [f"ensemble_{c}" for c in COMBINERS], classes, settings.bootstrap_samples,
                          settings.ci_level, settings.bootstrap_seed, verdict_classes=settings.verdict_classes,
                          min_test_count=settings.min_test_count, power=settings.power)
    vs_best = vs_best.rename(columns={"gan_arm": "combiner", "best_non_gan_arm": "best_single_arm",
                                      "gan_value": "ensemble_value", "best_value": "single_value"})
    vs_best["combiner"] = vs_best["combiner"].str.removeprefix("ensemble_")
    return vs_best


def member_table(arms, seeds, infos, val_proba, test_proba, y_val, y_test, classes, min_test_count: int = 0
                 ) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        for m, arm in enumerate(arms):
            pred = test_proba[seed][m].argmax(1)
            recall = {f"recall_{c}": float(np.mean(pred[y_test == k] == k)) if (y_test == k).any() else np.nan
                      for k, c in enumerate(classes)}
            rows.append({"arm": arm, "seed": seed, "version": str(infos[seed][m].get("version", "")),
                         "val_bal_acc": balanced_accuracy(y_val, val_proba[seed][m].argmax(1), len(classes)),
                         "bal_acc": balanced_accuracy(y_test, pred, len(classes), min_count=min_test_count), **recall,
                         "pred": pred})
    return pd.DataFrame(rows)


def summary_table(runs: pd.DataFrame, members: pd.DataFrame, best_arm: str, classes) -> pd.DataFrame:
    """Mean and std (ddof=1) over seeds per combiner, then the best single arm (chosen on val)."""
    metrics = ["bal_acc", "val_bal_acc", *[f"recall_{c}" for c in classes]]
    rows = []
    for combiner, group in runs.groupby("combiner", sort=False):
        rows.append({"model": combiner, "kind": "ensemble", "n_seeds": len(group),
                     "collapsed_seeds": int(group["collapsed"].sum()),
                     **mean_std(group, [*metrics, "macro_f1", "ece", "effective_members"])})
    best = members[members["arm"] == best_arm]
    rows.append({"model": best_arm, "kind": "best single arm (by val)", "n_seeds": len(best),
                 **mean_std(best, metrics)})
    return pd.DataFrame(rows)


def mean_std(frame: pd.DataFrame, columns: list[str]) -> dict:
    out = {}
    for column in columns:
        values = frame[column].astype(float)
        out[f"{column}_mean"] = float(values.mean())
        out[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return out


def summary_document(arms, seeds, n_val, n_test, best_arm, val_by_arm, summary, vs_best, weights,
                     collapse_threshold, classes) -> dict:
    """summary.json: the combiners' scores and weights, the best single arm, the verdicts against it."""
    stats = {r["model"]: {k: (int(v) if k in ("n_seeds", "collapsed_seeds") else v) for k, v in r.items()
                          if k not in ("model", "kind")}
             for r in summary.to_dict("records") if r["kind"] == "ensemble"}
    for combiner in COMBINERS:
        stats[combiner]["weights"] = {f"s{s}": dict(zip(arms, map(float, weights[s][combiner]))) for s in seeds}
    verdicts = {}
    for r in vs_best.to_dict("records"):
        verdicts.setdefault(r["combiner"], {})[r["metric"]] = {
            k: r[k] for k in ("diff", "ci_low", "ci_high", "verdict")}
    best = summary[summary["model"] == best_arm].iloc[0]
    return json_safe({
        "arms": arms, "seeds": seeds, "classes": list(classes), "n_val": n_val, "n_test": n_test,
        "weights_fitted_on": "val", "collapse_threshold": collapse_threshold,
        "best_single": {"arm": best_arm, "val_bal_acc_by_arm": {a: float(v) for a, v in val_by_arm.items()},
                        "test_bal_acc_mean": float(best["bal_acc_mean"]),
                        "test_bal_acc_std": float(best["bal_acc_std"])},
        "combiners": stats, "vs_best_single": verdicts})

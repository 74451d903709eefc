"""Tables and flat summary rows from the metrics documents (plain dicts, as the stages wrote them).

``compare``: metrics/compare.json (``arms``: per-arm seed statistics; ``gan_vs_best``: per GAN-derived
arm and metric the verdict against the best non-GAN arm, with ``mdd`` from the current compare code
and without it in older files; ``test_counts`` in newer files). ``runs``: (arm, seed) -> the
evaluate stage's metrics document. ``ensemble``: metrics/ensemble.json. ``fidelity``: method ->
metrics/fidelity/METHOD.json. A value a file does not carry is shown as a dash, never guessed.
"""

from __future__ import annotations

import math
import statistics

from dermagan.report.render import Table, table

DASH = "–"
BMA = "bal_acc"  # balanced accuracy (BMA), as the metrics files name it


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    return f"{value:.{digits}f}"


def signed(value, digits: int = 3) -> str:
    return DASH if value is None else f"{value:+.{digits}f}"


def mean_std(stats: dict, metric: str, digits: int = 3) -> str:
    """``0.601 ± 0.014`` (just the mean for one seed; a dash when the file lacks the metric)."""
    mean, std = stats.get(f"{metric}_mean"), stats.get(f"{metric}_std")
    if mean is None:
        return DASH
    if std is None or stats.get("n_seeds", 2) < 2:
        return fmt(mean, digits)
    return f"{fmt(mean, digits)} ± {fmt(std, digits)}"


# --- what compare.json says about the comparison -------------------------------------------------

def gan_arms(compare: dict) -> list[str]:
    return list(compare.get("gan_vs_best") or {})


def comparators(compare: dict) -> list[str]:
    """The non-GAN arm(s) the GAN-derived arms were judged against, in order of appearance."""
    found: list[str] = []
    for by_metric in (compare.get("gan_vs_best") or {}).values():
        for result in by_metric.values():
            if result.get("best_non_gan_arm") and result["best_non_gan_arm"] not in found:
                found.append(result["best_non_gan_arm"])
    return found


def verdicts_lack_mdd(compare: dict) -> bool:
    """True when some verdict carries no ``mdd`` (a compare.json written before the code computed it)."""
    return any(result.get("mdd") is None for by_metric in (compare.get("gan_vs_best") or {}).values()
               for result in by_metric.values())


def n_test_images(compare: dict, runs: dict | None = None) -> int | None:
    """Test images: compare.json's ``test_counts`` (newer files), else a run's ``test.n_images``."""
    counts = compare.get("test_counts")
    if counts:
        return int(sum(counts.values()))
    for doc in (runs or {}).values():
        n = (doc.get("test") or {}).get("n_images")
        if n is not None:
            return int(n)
    return None


def n_seeds(compare: dict) -> int:
    return max((int(s.get("n_seeds", 0)) for s in (compare.get("arms") or {}).values()), default=0)


def verdict_cell(result: dict | None, with_mdd: bool = True) -> str:
    """``+0.007 [-0.024, +0.040] no difference shown (MDD 0.040)``."""
    if not result:
        return DASH
    text = (f"{signed(result.get('diff'))} [{signed(result.get('ci_low'))}, {signed(result.get('ci_high'))}] "
            f"{result.get('verdict', DASH)}")
    if with_mdd and result.get("mdd") is not None:
        text += f" (MDD {fmt(result['mdd'])})"
    return text


# --- tables --------------------------------------------------------------------------------------

def arms_table(compare: dict, classes: tuple[str, ...], level: float, ece: dict[str, dict] | None = None) -> Table:
    """One row per arm: BMA and the recall of ``classes``, mean ± std over seeds; with ``ece`` (from
    :func:`calibration`) the mean ECE; and each GAN-derived arm's BMA verdict against its comparator."""
    gan, comps = gan_arms(compare), comparators(compare)
    against = comps[0] if len(comps) == 1 else "the best non-GAN arm"
    header = ["arm", "BMA", *[f"{c} recall" for c in classes], *(["ECE"] if ece is not None else []),
              f"vs {against}: BMA diff [{level:.0%} CI], verdict" + ("" if verdicts_lack_mdd(compare) else " (MDD)")]
    rows = []
    for arm, stats in (compare.get("arms") or {}).items():
        if arm in gan:
            judged = verdict_cell(compare["gan_vs_best"][arm].get(BMA))
        else:
            judged = "comparator" if arm in comps else DASH
        rows.append([arm, mean_std(stats, BMA),
                     *[mean_std(stats, f"recall_{c}", 2) for c in classes],
                     *([fmt((ece.get(arm) or {}).get("ece_mean"))] if ece is not None else []), judged])
    return table(header, rows)


def verdicts_table(compare: dict, level: float, power: float) -> Table:
    """Every GAN-derived arm x judged metric: diff [CI], verdict and the minimum detectable difference."""
    rows = [[arm, metric, r.get("best_non_gan_arm", DASH),
             f"{signed(r.get('diff'))} [{signed(r.get('ci_low'))}, {signed(r.get('ci_high'))}]",
             r.get("verdict", DASH), fmt(r.get("mdd"))]
            for arm, by_metric in (compare.get("gan_vs_best") or {}).items() for metric, r in by_metric.items()]
    return table(["GAN-derived arm", "metric", "comparator", f"diff [{level:.0%} CI]", "verdict",
                  f"MDD ({power:.0%} power)"], rows)


def calibration(runs: dict[tuple[str, int], dict]) -> dict[str, dict]:
    """Per arm over its seeds: ECE mean and std, ECE before temperature scaling, the fitted temperature."""
    values: dict[str, dict[str, list[float]]] = {}
    for (arm, _), doc in runs.items():
        block = (doc.get("test") or {}).get("calibration") or {}
        for key in ("ece", "ece_uncalibrated", "temperature"):
            if block.get(key) is not None:
                values.setdefault(arm, {}).setdefault(key, []).append(float(block[key]))
    out = {}
    for arm, by_key in values.items():
        ece = by_key.get("ece", [])
        out[arm] = {"ece_mean": statistics.fmean(ece) if ece else None,
                    "ece_std": statistics.stdev(ece) if len(ece) > 1 else None, "n_seeds": len(ece),
                    **{f"{k}_mean": statistics.fmean(by_key[k]) if by_key.get(k) else None
                       for k in ("ece_uncalibrated", "temperature")}}
    return out


def calibration_table(cal: dict[str, dict]) -> Table:
    rows = [[arm, mean_std(c, "ece"), fmt(c.get("ece_uncalibrated_mean")), fmt(c.get("temperature_mean"), 2),
             str(c["n_seeds"])] for arm, c in cal.items()]
    return table(["arm", "test ECE (mean ± std)", "ECE before temperature scaling", "temperature", "seeds"], rows)


def fidelity_table(fidelity: dict[str, dict]) -> Table:
    """Per method and class, in the domain feature space: FD against the real-val yardstick, k-NN
    precision/recall, the two-sample AUC [CI]; images kept by dedup."""
    rows = []
    for method, doc in fidelity.items():
        for dx, m in (doc.get("classes") or {}).items():
            domain = m.get("domain_dedup") or m.get("domain_generated") or {}
            yardstick = m.get("domain_real_val_reference") or {}
            two = m.get("two_sample") or {}
            auc = fmt(two.get("auc")) + (f" [{fmt(two.get('ci_low'))}, {fmt(two.get('ci_high'))}]" if two else "")
            rows.append([method, dx, f"{m.get('n_kept', DASH)} / {m.get('n_generated', DASH)}",
                         fmt(domain.get("fd_domain"), 2), fmt(yardstick.get("fd_domain"), 2),
                         fmt(domain.get("knn_precision_domain"), 2), fmt(domain.get("knn_recall_domain"), 2),
                         fmt(yardstick.get("knn_recall_domain"), 2), auc])
    return table(["method", "class", "kept / generated", "domain FD", "FD yardstick (real val)", "k-NN precision",
                  "k-NN recall", "recall yardstick", "two-sample AUC [CI]"], rows)


def cas_table(fidelity: dict[str, dict]) -> Table:
    """Classification Accuracy Score per method: trained on synthetic vs on real, scored on real val."""
    rows = []
    for method, doc in fidelity.items():
        cas = doc.get("cas") or {}
        if cas:
            rows.append([method, f"{fmt(cas.get('cas_synthetic'))} ± {fmt(cas.get('cas_synthetic_std'))}",
                         f"{fmt(cas.get('cas_real'))} ± {fmt(cas.get('cas_real_std'))}", fmt(cas.get("cas_ratio"), 2),
                         fmt(cas.get("chance"), 2)])
    return table(["method", "CAS (synthetic-trained)", "real-trained", "ratio", "chance"], rows)


def ensemble_table(ensemble: dict, classes: tuple[str, ...], level: float) -> Table:
    best = (ensemble.get("best_single") or {}).get("arm", "the best single arm")
    rows = []
    for name, stats in (ensemble.get("combiners") or {}).items():
        vs = (ensemble.get("vs_best_single") or {}).get(name, {}).get(BMA)
        rows.append([name, mean_std(stats, BMA), *[mean_std(stats, f"recall_{c}", 2) for c in classes],
                     fmt(stats.get("ece_mean")), f"{stats.get('collapsed_seeds', DASH)} / {stats.get('n_seeds', DASH)}",
                     verdict_cell(vs)])
    return table(["combiner", "BMA", *[f"{c} recall" for c in classes], "ECE", "collapsed seeds",
                  f"vs {best}: BMA diff [{level:.0%} CI], verdict"], rows)


# --- flat rows for `dvc metrics show` ------------------------------------------------------------

def summary_row(stats: dict, classes: tuple[str, ...]) -> dict:
    """A handful of flat keys (means over seeds unless ``_std``), so ``dvc metrics show`` stays narrow."""
    def value(key):
        v = stats.get(key)
        return None if v is None else round(float(v), 4)
    return {"bma": value("bal_acc_mean"), "bma_std": value("bal_acc_std"),
            **{f"recall_{c}": value(f"recall_{c}_mean") for c in classes}, "n_seeds": int(stats.get("n_seeds", 0))}


def summary_rows(compare: dict, ensemble: dict | None, classes: tuple[str, ...]) -> dict[str, dict]:
    """File stem -> row: every arm, then every ensemble combiner as ``ensemble_COMBINER``."""
    rows = {arm: summary_row(stats, classes) for arm, stats in (compare.get("arms") or {}).items()}
    for name, stats in ((ensemble or {}).get("combiners") or {}).items():
        rows[f"ensemble_{name}"] = summary_row(stats, classes)
    return rows

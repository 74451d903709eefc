"""Markdown tables of the profiles' results, generated from their metrics files (README, notes).

    python scripts/profile_tables.py melanoma            # profiles/melanoma vs seed 004's claims
    python scripts/profile_tables.py rosendahl [--in-domain studies/in-domain/compare.json]

Reads only pipeline outputs: ``profiles/NAME/metrics/compare.json`` (and the per-run metrics files
beside it); nothing here is typed in by hand except seed 004's published claims.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SEED_004 = {  # seed 004's README (SIIM-ISIC binary melanoma, its own test split): test ROC AUC
    "effnet": ("flipping, cropping, rotating", 0.83),
    "effnet_cyclegan_nols": ("CycleGAN baseline", 0.87),
    "effnet_cyclegan": ("CycleGAN + label smoothing", 0.89),
}


def read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def runs(metrics_dir: Path, arm: str) -> list[dict]:
    return [read(p)["test"] for p in sorted(Path(metrics_dir).glob(f"{arm}-s*.json"))]


def pm(arm: dict, key: str, digits: int = 3) -> str:
    mean, std = arm.get(f"{key}_mean"), arm.get(f"{key}_std")
    if mean is None or not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None and np.isfinite(std) else f"{mean:.{digits}f}"


def verdict_cell(v: dict | None) -> str:
    if not v:
        return "–"
    mdd = f"MDD {v['mdd']:.3f}" if v.get("mdd") is not None else "MDD not recorded"
    return f"{v['diff']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}], {v['verdict']} ({mdd})"


def melanoma(folder: Path) -> str:
    summary = read(folder / "metrics" / "compare.json")
    arms, vs = summary["arms"], summary.get("gan_vs_best", {})
    lines = ["| arm | seed 004 claim (its test) | test ROC AUC, mean ± SD (3 seeds) | per-run 95% CI (mean bounds) | "
             "sensitivity at 90% val specificity | test specificity there | BMA | ECE | AUC vs best non-GAN "
             "[95% CI], verdict (MDD) |", "|---|---|---|---|---|---|---|---|---|"]
    for name in arms:
        per_run = runs(folder / "metrics" / "runs", name)
        lo = np.mean([r["binary"]["auc_ci_low"] for r in per_run]) if per_run else np.nan
        hi = np.mean([r["binary"]["auc_ci_high"] for r in per_run]) if per_run else np.nan
        spec = np.mean([r["binary"]["specificity"] for r in per_run]) if per_run else np.nan
        ece = np.mean([r["calibration"]["ece"] for r in per_run]) if per_run else np.nan
        claim = SEED_004.get(name)
        lines.append(f"| {name} | {f'{claim[1]:.2f} ({claim[0]})' if claim else '–'} | {pm(arms[name], 'auc')} | "
                     f"{lo:.3f}–{hi:.3f} | {pm(arms[name], 'sens_at_spec')} | {spec:.3f} | "
                     f"{pm(arms[name], 'bal_acc')} | {ece:.3f} | {verdict_cell(vs.get(name, {}).get('auc'))} |")
    best = next(iter(vs.values()), {}).get("auc", {}).get("best_non_gan_arm", "–") if vs else "–"
    lines.append("")
    lines.append(f"Comparator (best non-GAN arm on val): `{best}`. Test: {summary['test_counts']}.")
    for name, verdicts in vs.items():
        extra = [f"{m} {verdict_cell(v)}" for m, v in verdicts.items() if m != "auc"]
        lines.append(f"- {name}: " + "; ".join(extra))
    return "\n".join(lines)


def rosendahl(folder: Path, in_domain: Path) -> str:
    ood, ind = read(folder / "metrics" / "compare.json"), read(in_domain)
    classes = [c for c in ("akiec", "df", "vasc") if f"recall_{c}_mean" in next(iter(ood["arms"].values()))]
    head = ["arm", "BMA in-domain", "BMA rosendahl"] + [f"{c} recall in / out" for c in classes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in ood["arms"]:
        a, b = ind["arms"].get(name, {}), ood["arms"][name]
        cells = [name, pm(a, "bal_acc"), pm(b, "bal_acc")]
        cells += [f"{pm(a, f'recall_{c}', 2)} / {pm(b, f'recall_{c}', 2)}" for c in classes]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Test images per class, in-domain: {ind.get('test_counts')}; rosendahl: {ood['test_counts']}.",
              f"Left out of the rosendahl BMA: {ood.get('bma_excluded') or 'none'} ({ood.get('bma_excluded_reason')}).",
              "", "| GAN arm | metric | in-domain diff [95% CI], verdict (MDD) | rosendahl diff [95% CI], verdict (MDD) |",
              "|---|---|---|---|"]
    for name, verdicts in ood.get("gan_vs_best", {}).items():
        for metric, v in verdicts.items():
            lines.append(f"| {name} | {metric} | {verdict_cell(ind.get('gan_vs_best', {}).get(name, {}).get(metric))} | "
                         f"{verdict_cell(v)} |")
    refs = {n: next(iter(v.values()))["best_non_gan_arm"] for n, v in ood.get("gan_vs_best", {}).items() if v}
    ref_in = {n: next(iter(v.values()))["best_non_gan_arm"] for n, v in ind.get("gan_vs_best", {}).items() if v}
    lines.append(f"\nComparators (chosen on val): in-domain {sorted(set(ref_in.values()))}, rosendahl "
                 f"{sorted(set(refs.values()))}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", choices=["melanoma", "rosendahl"])
    parser.add_argument("--root", type=Path, default=Path("profiles"))
    parser.add_argument("--in-domain", type=Path, default=Path("studies/in-domain/compare.json"),
                        help="the default pipeline's compare summary (rosendahl's in-domain side)")
    args = parser.parse_args()
    folder = args.root / args.profile
    print(melanoma(folder) if args.profile == "melanoma" else rosendahl(folder, args.in_domain))


if __name__ == "__main__":
    main()

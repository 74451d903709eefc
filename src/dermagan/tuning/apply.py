"""``dermagan tune ... --apply``: write a study's best values into the tuned-params file params.yaml names.

Only that file is written (``tuned_params`` for the classifier recipe, ``tuned_gan_params`` for
the generators); every value carries a ``# tuned`` comment or sits under a header naming the
study, and a key that the user's params.yaml also sets is refused (it would be set twice). The
user's params.yaml is read (never written) from its path to check that.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import yaml

from dermagan.atomic import atomic_file
from dermagan.config.load import TUNED_KEY, TUNED_KEYS, read_yaml
from dermagan.errors import DermaganError
from dermagan.gan.methods import STGAN_TUNED_BLOCK
from dermagan.tuning.gan import AMOUNT, stage2_overrides

STUDY_KEYS = ("study", "storage", "best_value", "best_trial", "trials", "wall_minutes", "pruning_saved_minutes")


def check_applicable(summary: dict) -> None:
    if not summary["best_params"]:
        raise DermaganError(f"study '{summary['study']}' has no completed feasible trial; nothing to apply")


def apply_classifier(params_path: Path, tuned_file: str | None, summary: dict) -> Path:
    """Write the classifier study's best values as the ``train`` block of ``tuned_file`` (relative to
    params.yaml's folder; params.yaml's ``tuned_params``)."""
    check_applicable(summary)
    if not tuned_file:
        raise DermaganError(f"{params_path}: no `{TUNED_KEY}` key naming the tuned-params file to write")
    block = "train"
    own = read_yaml(params_path).get(block) or {}
    both = sorted(set(own) & set(summary["best_params"]))
    if both:
        raise DermaganError(f"{params_path}: {block}.{both[0]} is searched by the study but also set in "
                            f"{params_path}; delete it there before applying (all: {both})")
    path = Path(params_path).parent / tuned_file
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    states = ", ".join(f"{n} {s}" for s, n in summary["states"].items())
    lines = [
        f"# Tuned values: written by `dermagan tune classifier --apply` on {stamp}. Do not edit by hand; re-tune.",
        f"# Study '{summary['study']}' ({summary['storage']}): {summary['trials']} trials ({states}),",
        f"# best real-only validation balanced accuracy {summary['best_value']:.4f} (trial {summary['best_trial']}"
        + (", enqueued from tune.<target>.enqueue: no sampled trial beat it)." if summary.get("best_enqueued") else ")."),
        f"{block}:",
    ]
    for key, value in summary["best_params"].items():
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        lines.append(f"  {key}: {text}  # tuned")
    lines.append("study:  # provenance (not a recipe key)")
    lines += [f"  {k}: {json.dumps(summary[k])}" for k in STUDY_KEYS]
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def apply_gan(params_path: Path, tuned_file: str | None, classes: list[str], summary: dict) -> Path:
    """Write a GAN study's best values into ``tuned_file`` (params.yaml's ``tuned_gan_params``).

    Stage-2 values go to ``gan.stgan_tuned.<class>`` (read by the train_stgan stage), the number of
    synthetic images to ``gan.amount_tuned.<method>.<class>`` (read by generate and
    validate_augmented). Other classes' entries already in the file are kept; every class of
    ``classes`` (params ``gan.classes``) gets an entry, since dvc.yaml reads ``gan.stgan_tuned.<class>``.
    """
    check_applicable(summary)
    key = TUNED_KEYS["gan"]
    if not tuned_file:
        raise DermaganError(f"{params_path}: no `{key}` key naming the tuned-GAN file to write")
    dx, method, best = summary["class"], summary["method"], dict(summary["best_params"])
    stage2 = stage2_overrides(best)
    own = ((read_yaml(params_path).get("gan") or {}).get("stgan") or {}).get("per_class", {}).get(dx) or {}
    both = sorted(set(own) & set(stage2))
    if both:
        raise DermaganError(f"{params_path}: gan.stgan.per_class.{dx}.{both[0]} is searched by the study but also set "
                            f"in {params_path}; delete it there before applying (all: {both})")
    path = Path(params_path).parent / tuned_file
    current = read_yaml(path) if path.is_file() else {}
    gan = current.get("gan") or {}
    tuned = dict(gan.get(STGAN_TUNED_BLOCK) or {})
    tuned[dx] = stage2
    for other in classes:
        tuned.setdefault(other, {})
    amounts = {m: dict(v or {}) for m, v in (gan.get("amount_tuned") or {}).items()}
    if AMOUNT in best:
        amounts.setdefault(method, {})[dx] = int(best[AMOUNT])
    studies = dict(current.get("study") or {})
    studies[dx] = {k: summary.get(k) for k in (*STUDY_KEYS, "feasible_trials")}
    studies[dx]["reference_val_recall"] = (summary.get("reference") or {}).get("val_recall")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Tuned GAN values: written by `dermagan tune gan --apply` (last: class {dx}, {stamp}). "
             "Do not edit by hand; re-tune.",
             "# gan.stgan_tuned.<class>: STGAN stage-2 settings; gan.amount_tuned.<method>.<class>: synthetic images added.",
             "# Objective: real-only val recall of the class (classifier probe, docs/tuning.md \"GAN tuning\");",
             "# constraint: val balanced accuracy >= the no-synthetic reference - tune.gan.tolerance.",
             "gan:", f"  {STGAN_TUNED_BLOCK}:"]
    lines += [f"    {c}: {flow(v)}" for c, v in sorted(tuned.items())]
    if not tuned:
        lines[-1] += " {}"
    lines.append("  amount_tuned:" + ("" if amounts else " {}"))
    lines += [f"    {m}: {flow(v)}" for m, v in sorted(amounts.items())]
    lines.append("study:  # provenance per class (not read by any stage)")
    lines += [f"  {c}: {json.dumps(v)}" for c, v in sorted(studies.items())]
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def flow(value) -> str:
    """One-line YAML flow mapping (never wrapped: it is written inside a block mapping)."""
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=True, width=float("inf")).strip().removesuffix(
        "...").strip()

"""Model cards: what a registered classifier is for, what it was trained on, and how it did.

Generated from the evaluate stage's metrics document (the real-only test split, plus external or
domain-shift sets where they exist) and the version's settings. The same Markdown becomes the
registered version's description, the run's ``model_card.md`` artifact and the export bundle's
``MODEL_CARD.md``. Plain values in; no Config.
"""

from __future__ import annotations

LIMITS = (
    "Input is downscaled to {size} x {size} px: fine structure visible at full resolution is lost.",
    "HAM10000 records no skin type (Fitzpatrick) and is mostly light skin from two sites (Vienna, Queensland): "
    "performance on other skin types and other dermoscopes is unknown.",
    "Rare classes have few test images, so their recall intervals are wide (see the table).",
    "Only the classes below exist for the model: a lesion of any other kind is forced into one of them.",
)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"


def _ci(block: dict, key: str) -> str:
    low, high = block.get(f"{key}_ci_low"), block.get(f"{key}_ci_high")
    return "" if low is None or high is None else f" [{_pct(low)}, {_pct(high)}]"


def _results(report: dict, title: str, min_count_note: bool = True) -> list[str]:
    lines = [f"### {title}", "", f"{report.get('n_images', '?')} images, {int(100 * report.get('ci_level', 0.95))}% "
             "bootstrap confidence intervals.", "",
             "| class | test images | recall | 95% CI |", "|---|---:|---:|---|"]
    for name, block in report["per_class"].items():
        lines.append(f"| {name} | {block.get('support', '?')} | {_pct(block.get('recall'))} |"
                     f"{_ci(block, 'recall') or ' n/a'} |")
    lines += ["", f"- balanced accuracy (mean recall): {_pct(report.get('bal_acc'))}{_ci(report, 'bal_acc')}"]
    excluded = report.get("bma_excluded") or []
    if excluded and min_count_note:
        lines.append(f"  (leaves out {', '.join(excluded)}: too few test images to estimate recall)")
    calibration = report.get("calibration") or {}
    if calibration.get("ece") is not None:
        lines.append(f"- expected calibration error (top label): {calibration['ece']:.3f}; temperature "
                     f"{calibration.get('temperature', 1.0):.3f}")
    binary = report.get("binary") or {}
    if binary.get("auc") is not None:
        lines.append(f"- ROC AUC: {binary['auc']:.3f}{_ci(binary, 'auc').replace('%', '')}; sensitivity "
                     f"{_pct(binary.get('sensitivity'))} at specificity {_pct(binary.get('specificity'))} "
                     "(threshold set on validation)")
    return lines + [""]


def render_model_card(document: dict, model: dict, dataset: dict, split: str) -> str:
    """Markdown card. ``document``: the evaluate stage's metrics file (``test``, optional ``external``);
    ``model``: registered_model, version, arm, extra, backbone, image_size, tta, classes, run_id;
    ``dataset``: name, licence, citation, non_commercial; ``split``: how test was held out."""
    size, classes = model["image_size"], ", ".join(model["classes"])
    non_commercial = dataset.get("non_commercial", False)
    lines = [
        f"# Model card: {model['registered_model']} version {model['version']}",
        "",
        f"{model['backbone']} classifier of dermoscopy images into {len(model['classes'])} classes ({classes}), "
        f"augmentation arm `{model['arm']}` (seed {document.get('seed', '?')}).",
        "",
        "## Intended use",
        "",
        "Research on class imbalance and synthetic augmentation in dermatology AI. **Not a medical device and "
        "not for diagnosis**: no output of this model should inform the care of a patient.",
        "",
        "## Training data",
        "",
        f"- Data: {dataset['name']}, licence {dataset['licence']}.",
        f"- Cite: {dataset['citation']}",
    ]
    if non_commercial:
        lines.append("- The weights were trained on non-commercial data and inherit that term: "
                     "**non-commercial use only**.")
    lines += [
        f"- Split: {split}. Validation chose the epoch and fitted the temperature; test was used once, here.",
        f"- Augmentation: {model.get('extra') or 'none'} (arm `{model['arm']}`); every score below is on real "
        "images only.",
        "",
        "## Input",
        "",
        f"An RGB dermoscopy image (JPEG or PNG, 8 bit). The short side is resized to {size} px (bicubic) and the "
        f"centre cropped to {size} x {size}; the network sees values in [0, 1] and normalises them itself. "
        f"Test-time augmentation: {model.get('tta', 'none')}.",
        "",
        "## Results",
        "",
    ]
    lines += _results(document["test"], "Test split (real only)")
    for name, report in (document.get("external") or {}).items():
        lines += _results(report, f"External set: {name}")
    lines += ["## Known limits", ""] + [f"- {text.format(size=size)}" for text in LIMITS]
    lines += ["", f"MLflow run: `{model.get('run_id', '?')}`.", ""]
    return "\n".join(lines)

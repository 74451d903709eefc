"""Move the ``champion`` alias: candidate chosen on validation, gated against the champion on test.

The default candidate is the evaluated version with the highest real-only validation balanced
accuracy (the ``val_bal_acc`` tag set at training), so the test split is never used to pick it.
The candidate then has to be not worse than the current champion on the test split: a paired
bootstrap over test images (the compare stage's functions) of the balanced-accuracy difference
(candidate − champion), using the per-image predictions the evaluate stage logged to each
version's run as ``test/predictions.json``. Promotion is refused only when the whole CI is below 0.

Also here: what the registry holds (``dermagan models``: :func:`version_rows`, :func:`format_versions`) and
:func:`registered_version`, which turns a ``models:/`` URI naming nothing into an error that says what exists.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from dermagan.errors import DermaganError
from dermagan.evaluate.compare import WORSE, bootstrap_indices, bootstrap_recalls, metric_values, verdict

CHAMPION = "champion"
SELECTION_TAG = "val_bal_acc"
TEST_TAG = "test_bal_acc"
PREDICTIONS_ARTIFACT = "test/predictions.json"
PREDICTION_COLUMNS = ("image_id", "actual", "predicted")


@dataclass(frozen=True)
class GateResult:
    """Paired bootstrap of test balanced accuracy, candidate − champion, over the shared test images."""

    diff: float
    ci_low: float
    ci_high: float
    level: float
    verdict: str
    n_images: int
    n_resamples: int


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    version: str
    score: float  # candidate's test balanced accuracy (tag)
    previous_version: str | None
    previous_score: float | None  # champion's test balanced accuracy (tag)
    message: str
    val_score: float | None = None  # candidate's validation balanced accuracy: what chose it
    diff: float | None = None  # test bal_acc, candidate − champion, on the joined test images
    ci_low: float | None = None
    ci_high: float | None = None
    level: float | None = None
    forced: bool = False


def parse_version(text: str | int | None) -> str | None:
    """A model version as MLflow stores it ('3'); refuses anything but a positive integer."""
    if text is None:
        return None
    value = str(text).strip()
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise DermaganError(f"--version must be a positive integer (a registered model version such as 3), "
                            f"got '{text}'")
    return str(int(value))


def existing_versions(client: MlflowClient, name: str) -> list[int]:
    """The version numbers registered under ``name`` (empty when there are none or the lookup fails)."""
    try:
        return sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    except (MlflowException, ValueError):
        return []


def model_version(client: MlflowClient, name: str, version: str):
    """``client.get_model_version`` with a DermaganError naming the model and version when it is not there."""
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        versions = existing_versions(client, name)
        known = (f"existing versions: {', '.join(map(str, versions))}" if versions
                 else f"'{name}' has no registered versions (is the name right?)")
        raise DermaganError(f"registered model '{name}' has no version {version} ({known}; "
                            f"MLflow said: {exc.message if hasattr(exc, 'message') else exc})") from exc


def _tag(client: MlflowClient, name: str, version: str, tag: str) -> float | None:
    value = model_version(client, name, version).tags.get(tag)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise DermaganError(f"{name} v{version}: tag '{tag}' is not a number: {value!r}") from exc


def version_score(client: MlflowClient, name: str, version: str) -> float:
    """The real-only test balanced accuracy recorded on a model version's tags (evaluated versions only)."""
    score = _tag(client, name, version, TEST_TAG)
    if score is None:
        raise DermaganError(f"{name} v{version} has no '{TEST_TAG}' tag; run `dermagan evaluate` for it first")
    return score


def validation_score(client: MlflowClient, name: str, version: str) -> float | None:
    """The real-only validation balanced accuracy tagged at training, or None if the tag is missing."""
    return _tag(client, name, version, SELECTION_TAG)


def current_champion(client: MlflowClient, name: str) -> str | None:
    """The version that holds the ``champion`` alias, or None."""
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def best_version(client: MlflowClient, name: str) -> str:
    """The evaluated version (has ``test_bal_acc``) with the highest ``val_bal_acc``; newest wins ties.

    Test scores play no part in the choice. Versions without a ``val_bal_acc`` tag are not candidates,
    nor are ensembles (tag ``kind=ensemble``): their weights were fitted on the same val split, so
    their val score is optimistic; promote one by naming it (``--version``), behind the same test gate.
    """
    versions = [v for v in client.search_model_versions(f"name='{name}'")
                if TEST_TAG in v.tags and SELECTION_TAG in v.tags and v.tags.get("kind") != "ensemble"]
    if not versions:
        raise DermaganError(f"no evaluated versions of '{name}' with a '{SELECTION_TAG}' tag in the registry; "
                            "run `dvc repro` first")
    return str(max(versions, key=lambda v: (float(v.tags[SELECTION_TAG]), int(v.version))).version)


def load_test_predictions(client: MlflowClient, name: str, version: str) -> pd.DataFrame:
    """Per-image test predictions (image_id, actual, predicted) the evaluate stage logged to the version's run."""
    run_id = model_version(client, name, version).run_id
    missing = (f"{name} v{version} has no '{PREDICTIONS_ARTIFACT}' artifact on its run {run_id}; "
               f"run `dermagan evaluate` for it first")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=PREDICTIONS_ARTIFACT, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            raise DermaganError(missing) from exc
        document = json.loads(Path(path).read_text())
    table = pd.DataFrame(document.get("data", []), columns=document.get("columns"))
    if not set(PREDICTION_COLUMNS) <= set(table.columns):
        raise DermaganError(f"{name} v{version}: '{PREDICTIONS_ARTIFACT}' lacks columns "
                            f"{sorted(set(PREDICTION_COLUMNS) - set(table.columns))}; re-run `dermagan evaluate` for it")
    if table["image_id"].duplicated().any():
        raise DermaganError(f"{name} v{version}: '{PREDICTIONS_ARTIFACT}' lists some test images twice")
    return table[list(PREDICTION_COLUMNS)].astype(str)


def paired_gate(candidate: pd.DataFrame, champion: pd.DataFrame, n_boot: int, level: float, seed: int,
                labels: tuple[str, str] = ("candidate", "champion")) -> GateResult:
    """Paired bootstrap CI of test balanced accuracy, candidate − champion, joined on image_id.

    Raises DermaganError when the two were evaluated on different test images (or labels). The resamples
    are drawn over the images sorted by image_id, so the result does not depend on the row order. The classes
    are the models' own, as their predictions name them (no fixed label set: balanced accuracy is the mean
    recall over the classes present in the test images, whatever their order).
    """
    ids_a, ids_b = set(candidate["image_id"]), set(champion["image_id"])
    if ids_a != ids_b:
        raise DermaganError(
            f"{labels[0]} and {labels[1]} were evaluated on different test sets ({len(ids_a)} vs {len(ids_b)} "
            f"images, {len(ids_a & ids_b)} shared); re-run `dermagan evaluate` for both on the same prepared "
            "split (or use --force)")
    joined = candidate.merge(champion, on="image_id", suffixes=("_a", "_b")).sort_values("image_id", kind="stable")
    if (joined["actual_a"] != joined["actual_b"]).any():
        raise DermaganError(f"{labels[0]} and {labels[1]} disagree on the true class of some test images; "
                            "re-run `dermagan evaluate` for both on the same prepared split (or use --force)")
    seen = set(joined["actual_a"]) | set(joined["predicted_a"]) | set(joined["predicted_b"])
    classes = tuple(sorted(seen))
    index = {c: i for i, c in enumerate(classes)}
    y_true = joined["actual_a"].map(index).to_numpy()
    pred_a, pred_b = joined["predicted_a"].map(index).to_numpy(), joined["predicted_b"].map(index).to_numpy()
    full = np.arange(len(joined))[None, :]
    resamples = bootstrap_indices(len(joined), n_boot, seed)

    def bal_acc(pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return metric_values(bootstrap_recalls(y_true, pred, idx, len(classes)), classes, ("bal_acc",))[:, 0]

    diff = float(bal_acc(pred_a, full)[0] - bal_acc(pred_b, full)[0])
    diffs = bal_acc(pred_a, resamples) - bal_acc(pred_b, resamples)
    valid = diffs[~np.isnan(diffs)]
    tail = (1 - level) / 2 * 100
    low, high = (float(v) for v in np.percentile(valid, [tail, 100 - tail])) if valid.size else (np.nan, np.nan)
    return GateResult(diff, low, high, level, verdict(low, high), len(joined), int(valid.size))


def promote(client: MlflowClient, name: str, version: str | None = None, force: bool = False, *,
            n_boot: int, level: float, seed: int) -> PromotionDecision:
    """Give ``version`` (default: the best by validation) the champion alias unless it is worse on test.

    Worse means the whole ``level`` paired-bootstrap CI (``n_boot`` resamples, ``seed``) of the test
    balanced-accuracy difference (candidate − champion) is below 0. With no champion the candidate is
    promoted; ``force`` skips the gate (and the need for predictions). Tags the promoted version with
    ``promoted_over`` and ``promotion_gate``.
    """
    chosen = version is None
    version = parse_version(version) or best_version(client, name)
    score = version_score(client, name, version)
    val_score = validation_score(client, name, version)
    val_text = "n/a" if val_score is None else f"{val_score:.3f}"
    why = f"candidate chosen by val bal_acc {val_text}" if chosen else f"candidate requested (val bal_acc {val_text})"
    previous = current_champion(client, name)
    previous_score = _tag(client, name, previous, TEST_TAG) if previous else None

    def decision(promoted: bool, message: str, gate: GateResult | None = None) -> PromotionDecision:
        return PromotionDecision(promoted, version, score, previous, previous_score, message, val_score,
                                 gate.diff if gate else None, gate.ci_low if gate else None,
                                 gate.ci_high if gate else None, gate.level if gate else None, force)

    if previous == version:
        return decision(False, f"v{version} is already {CHAMPION} ({why}; test bal_acc {score:.4f})")
    gate = None
    if previous is None:
        gate_tag, message = "no champion", f"promoted v{version} (there was no {CHAMPION}); {why}"
    elif force:
        gate_tag = f"skipped (--force) vs v{previous}"
        message = f"promoted v{version} over v{previous} with --force: the test-set gate was skipped; {why}"
    else:
        gate = paired_gate(load_test_predictions(client, name, version), load_test_predictions(client, name, previous),
                           n_boot, level, seed, labels=(f"v{version}", f"v{previous}"))
        interval = f"{gate.diff:+.3f} [{level:.0%} CI {gate.ci_low:+.3f}, {gate.ci_high:+.3f}]"
        if gate.verdict == WORSE:
            return decision(False, f"refused: v{version} is worse than {CHAMPION} v{previous} beyond the CI: "
                                   f"test bal_acc diff {interval} over {gate.n_images} test images; {why}; "
                                   f"{CHAMPION} unchanged (use --force to override)", gate)
        gate_tag = f"diff {gate.diff:+.3f} [{gate.ci_low:+.3f}, {gate.ci_high:+.3f}] vs v{previous}"
        message = (f"promoted v{version} over v{previous}: test bal_acc diff {interval} "
                   f"(not worse beyond the CI); {why}")
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "promoted_over", previous or "none")
    client.set_model_version_tag(name, version, "promotion_gate", gate_tag)
    return decision(True, message, gate)


# --- what the registry holds: `dermagan models`, and clear errors for a URI naming nothing ------------------

CLASSIFIER_MODEL = "dermagan-classifier"
NO_MODELS_HINT = "run the pipeline (`dvc repro`) to train and register models"
VERSION_COLUMNS = ("version", "arm", "seed", "val_bal_acc", "test_bal_acc", "aliases", "kind", "created")


def registered_model_names(client: MlflowClient) -> list[str]:
    """Every registered model's name, sorted (all result pages)."""
    names, token = [], None
    while True:
        page = client.search_registered_models(page_token=token)
        names += [m.name for m in page]
        token = page.token
        if not token:
            return sorted(names)


def registered_model(client: MlflowClient, name: str):
    """``client.get_registered_model`` with a DermaganError naming the models there are when ``name`` is not one."""
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        names = registered_model_names(client)
        there = f"registered models: {', '.join(names)}" if names else "no model is registered there yet"
        raise DermaganError(f"no registered model '{name}' in {mlflow.get_tracking_uri()} ({there}); "
                            f"{NO_MODELS_HINT}") from exc


def _models_command(name: str) -> str:
    return "dermagan models" + ("" if name == CLASSIFIER_MODEL else f" --name {name}")


def registered_version(client: MlflowClient, uri: str):
    """The ``ModelVersion`` that ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` names; None for any other
    URI (``runs:/...``, a folder, ``models:/NAME/latest``), which MLflow resolves itself.

    A model, alias or version that is not registered raises DermaganError saying what there is and what to run
    (``dermagan promote`` for a missing alias), instead of MLflow's bare "not found".
    """
    body = uri.removeprefix("models:/") if uri.startswith("models:/") else ""
    if "@" in body and "/" not in body:
        name, alias = body.split("@", 1)
        aliases = dict(getattr(registered_model(client, name), "aliases", None) or {})
        if alias not in aliases:
            listed = ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items()))
            others = f" (its aliases: {listed})" if aliases else ""
            raise DermaganError(f"{uri}: no version has the alias '{alias}'{others}; run `dermagan promote` (or pass "
                                f"--model models:/{name}/VERSION; `{_models_command(name)}` lists them)")
        return model_version(client, name, str(aliases[alias]))
    name, _, version = body.partition("/")
    if name and version.isascii() and version.isdigit():
        registered_model(client, name)
        return model_version(client, name, version)
    return None


def model_kind(uri: str, tags: dict) -> str:
    """``classifier`` or ``ensemble`` (MLmodel ``metadata.kind``), ``pickled-legacy`` for an ``mlflow.pytorch``
    classifier (``dermagan predict`` refuses it), ``generator`` for a (pickled) GAN generator, else ``other``.
    Reads only the version's MLmodel file (``mlflow.models.get_model_info``); nothing is loaded."""
    try:
        info = mlflow.models.get_model_info(uri)
    except Exception:  # noqa: BLE001 - a missing or unreadable MLmodel must not stop the listing
        return "unreadable"
    kind = (info.metadata or {}).get("kind")
    if kind:
        return str(kind)
    if "pytorch" in (info.flavors or {}):
        return "generator" if "method" in tags else "pickled-legacy"
    return "other"


def version_rows(client: MlflowClient, name: str, limit: int | None = None) -> list[dict]:
    """The versions of registered model ``name``, newest first (at most ``limit``): one dict per version with
    ``VERSION_COLUMNS`` (score tags as written, None when missing; ``arm`` falls back to a generator's
    ``method`` tag; ``created`` in local time, YYYY-MM-DD HH:MM)."""
    by_version: dict[str, list[str]] = {}
    for alias, version in (getattr(registered_model(client, name), "aliases", None) or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    versions = sorted(client.search_model_versions(f"name='{name}'"),
                      key=lambda v: (v.creation_timestamp or 0, int(v.version)), reverse=True)
    rows = []
    for v in versions[:limit]:
        tags = dict(v.tags or {})
        created = datetime.fromtimestamp(v.creation_timestamp / 1000) if v.creation_timestamp else None
        rows.append({"name": name, "version": int(v.version), "arm": tags.get("arm") or tags.get("method"),
                     "seed": tags.get("seed"), "val_bal_acc": tags.get(SELECTION_TAG),
                     "test_bal_acc": tags.get(TEST_TAG), "aliases": sorted(by_version.get(str(v.version), [])),
                     "kind": model_kind(f"models:/{name}/{v.version}", tags),
                     "created": created.strftime("%Y-%m-%d %H:%M") if created else None})
    return rows


def format_versions(name: str, rows: list[dict], limited: bool = False) -> str:
    """A title line and ``rows`` (from :func:`version_rows`) as a plain table aligned in columns ('-': no value)."""
    if not rows:
        return f"{name}: no versions"
    cells = [[",".join(r[c]) if isinstance(r[c], list) else str(r[c]) for c in VERSION_COLUMNS] for r in rows]
    cells = [[value if value not in ("", "None") else "-" for value in line] for line in cells]
    widths = [max(len(text) for text in column) for column in zip(VERSION_COLUMNS, *cells)]
    lines = ["  ".join(text.ljust(w) for text, w in zip(line, widths)).rstrip() for line in [VERSION_COLUMNS, *cells]]
    title = f"{name}: {'the ' if limited else ''}{len(rows)} {'newest ' if limited else ''}version(s), newest first"
    return "\n".join([title, *lines])

"""Register classifiers and move the ``champion`` alias only when the test metric improves."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from dermagan.errors import DermaganError

CHAMPION = "champion"
SELECTION_TAG = "test_bal_acc"


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    version: str
    score: float
    previous_version: str | None
    previous_score: float | None
    message: str


def version_score(client: MlflowClient, name: str, version: str) -> float:
    """The real-only test balanced accuracy recorded on a model version's tags."""
    mv = client.get_model_version(name, version)
    if SELECTION_TAG not in mv.tags:
        raise DermaganError(f"{name} v{version} has no '{SELECTION_TAG}' tag; run `dermagan evaluate` for it first")
    return float(mv.tags[SELECTION_TAG])


def current_champion(client: MlflowClient, name: str) -> str | None:
    """The version that holds the ``champion`` alias, or None."""
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def best_version(client: MlflowClient, name: str) -> str:
    """The evaluated version with the highest test balanced accuracy (newest wins ties)."""
    versions = [v for v in client.search_model_versions(f"name='{name}'") if SELECTION_TAG in v.tags]
    if not versions:
        raise DermaganError(f"no evaluated versions of '{name}' in the registry; run `dvc repro` first")
    return str(max(versions, key=lambda v: (float(v.tags[SELECTION_TAG]), int(v.version))).version)


def promote(client: MlflowClient, name: str, version: str | None, force: bool = False) -> PromotionDecision:
    """Give ``version`` (default: the best evaluated) the champion alias if it beats the holder."""
    version = str(version or best_version(client, name))
    score = version_score(client, name, version)
    previous = current_champion(client, name)
    previous_score = version_score(client, name, previous) if previous else None
    if previous == version:
        return PromotionDecision(False, version, score, previous, previous_score,
                                 f"v{version} is already {CHAMPION} (test bal_acc {score:.4f})")
    better = previous_score is None or score > previous_score
    if not better and not force:
        return PromotionDecision(False, version, score, previous, previous_score,
                                 f"refused: v{version} test bal_acc {score:.4f} is not higher than "
                                 f"{CHAMPION} v{previous} {previous_score:.4f} (use --force to override)")
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "promoted_over", previous or "none")
    note = "" if better else " (--force: skipped the must-beat-the-champion check)"
    prev_text = f"v{previous} {previous_score:.4f}" if previous else "none"
    return PromotionDecision(True, version, score, previous, previous_score,
                             f"promoted v{version} (test bal_acc {score:.4f}) over {prev_text}{note}")

"""promote: candidate by validation, paired-bootstrap test gate vs the champion, in a real sqlite registry.

Each version is a tiny real model logged and registered like the train stage, tagged ``val_bal_acc`` /
``test_bal_acc``, with per-image test predictions logged by the same ``mlflow.log_table`` call as the
evaluate stage.
"""

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import params_file
from sklearn.metrics import balanced_accuracy_score

from dermagan import cli
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.errors import DermaganError
from dermagan.tracking.registry import (CHAMPION, current_champion, load_test_predictions, paired_gate,
                                        promote)
from dermagan.tracking.setup import configure

NAME = "dermagan-classifier-test"
GATE = {"n_boot": 2000, "level": 0.95, "seed": 0}
N_TEST = 300


def make_test_set(n: int = N_TEST, start: int = 0) -> pd.DataFrame:
    """A fake test split: image ids and true classes, imbalanced like HAM10000 (most images are nv)."""
    rng = np.random.default_rng(123)
    weights = np.array([3, 5, 11, 1, 11, 67, 2], dtype=float)
    actual = rng.choice(CLASSES, size=n, p=weights / weights.sum())
    actual[: len(CLASSES)] = CLASSES  # every class present
    return pd.DataFrame({"image_id": [f"ISIC_{i:07d}" for i in range(start, start + n)], "actual": actual})


def planted(test: pd.DataFrame, accuracy: float, seed: int) -> pd.DataFrame:
    """Predictions right with probability ``accuracy`` for every class, else a random wrong class."""
    rng = np.random.default_rng(seed)
    predicted = []
    for actual in test["actual"]:
        wrong = [c for c in CLASSES if c != actual]
        predicted.append(actual if rng.random() < accuracy else wrong[rng.integers(len(wrong))])
    return test.assign(predicted=predicted)


def bal_acc(table: pd.DataFrame) -> float:
    return float(balanced_accuracy_score(table["actual"], table["predicted"]))


def register(client: mlflow.MlflowClient, val: float | None, predictions: pd.DataFrame | None,
             test: float | None = None) -> str:
    """Register a tiny real model version, tag it like train + evaluate, log its test predictions."""
    import torch

    with mlflow.start_run() as run:
        info = mlflow.pytorch.log_model(torch.nn.Linear(2, 7), name="model", registered_model_name=NAME,
                                        serialization_format="pickle")
    version = str(info.registered_model_version)
    if val is not None:
        client.set_model_version_tag(NAME, version, "val_bal_acc", f"{val:.4f}")
    if predictions is not None:
        mlflow.log_table(predictions, "test/predictions.json", run_id=run.info.run_id)  # as in evaluate
        client.set_model_version_tag(NAME, version, "test_bal_acc", f"{bal_acc(predictions) if test is None else test:.4f}")
    elif test is not None:
        client.set_model_version_tag(NAME, version, "test_bal_acc", f"{test:.4f}")
    return version


@pytest.fixture
def client(tracking):
    configure("promote-test")
    return mlflow.MlflowClient()


def tags(client, version: str) -> dict:
    return client.get_model_version(NAME, version).tags


def test_predictions_round_trip_through_the_registry(client):
    logged = planted(make_test_set(), 0.7, seed=1)
    version = register(client, 0.7, logged)
    loaded = load_test_predictions(client, NAME, version)
    pd.testing.assert_frame_equal(loaded, logged.astype(str))


def test_no_champion_promotes_the_best_by_validation_not_by_test(client):
    test = make_test_set()
    best_on_test = register(client, 0.60, planted(test, 0.85, seed=1))
    best_on_val = register(client, 0.70, planted(test, 0.70, seed=2))
    register(client, 0.90, None)  # highest val but never evaluated: not a candidate
    assert bal_acc(planted(test, 0.85, seed=1)) > bal_acc(planted(test, 0.70, seed=2))
    decision = promote(client, NAME, None, **GATE)
    assert decision.promoted and decision.version == best_on_val != best_on_test
    assert decision.val_score == pytest.approx(0.70) and decision.diff is None
    assert "there was no champion" in decision.message and "candidate chosen by val bal_acc 0.700" in decision.message
    assert current_champion(client, NAME) == best_on_val
    assert tags(client, best_on_val)["promoted_over"] == "none"
    assert tags(client, best_on_val)["promotion_gate"] == "no champion"
    assert {"val_bal_acc", "test_bal_acc"} <= set(tags(client, best_on_test))


def test_gate_refuses_a_candidate_worse_beyond_the_ci_and_keeps_the_alias(client):
    test = make_test_set()
    champion = register(client, 0.60, planted(test, 0.80, seed=1))
    promote(client, NAME, champion, **GATE)
    worse = register(client, 0.75, planted(test, 0.35, seed=2))  # best on val, much worse on test
    decision = promote(client, NAME, None, **GATE)
    assert decision.version == worse and not decision.promoted
    assert decision.ci_high < 0 and decision.diff == pytest.approx(
        bal_acc(planted(test, 0.35, seed=2)) - bal_acc(planted(test, 0.80, seed=1)))
    assert decision.message.startswith(f"refused: v{worse} is worse than champion v{champion} beyond the CI")
    assert f"{decision.diff:+.3f} [95% CI {decision.ci_low:+.3f}, {decision.ci_high:+.3f}]" in decision.message
    assert current_champion(client, NAME) == champion
    assert "promoted_over" not in tags(client, worse) and "promotion_gate" not in tags(client, worse)


def test_gate_promotes_a_slightly_worse_candidate_and_reports_diff_and_ci(client):
    test = make_test_set()
    old = planted(test, 0.70, seed=1)
    champion = register(client, 0.65, old)
    promote(client, NAME, champion, **GATE)
    new = old.copy()
    nv = new["actual"] == "nv"
    broken = new.index[nv & (new["actual"] == new["predicted"])][:8]  # 8 right nv answers made wrong,
    fixed = new.index[nv & (new["actual"] != new["predicted"])][:5]  # 5 wrong ones made right
    new.loc[broken, "predicted"], new.loc[fixed, "predicted"] = "mel", "nv"
    candidate = register(client, 0.701, new.sample(frac=1, random_state=0))  # row order must not matter
    decision = promote(client, NAME, None, **GATE)
    expected = bal_acc(new) - bal_acc(old)
    assert decision.promoted and decision.version == candidate and decision.previous_version == champion
    assert expected < 0 and decision.diff == pytest.approx(expected)
    assert decision.ci_low < 0 <= decision.ci_high
    interval = f"{decision.diff:+.3f} [95% CI {decision.ci_low:+.3f}, {decision.ci_high:+.3f}]"
    assert decision.message == (f"promoted v{candidate} over v{champion}: test bal_acc diff {interval} "
                                "(not worse beyond the CI); candidate chosen by val bal_acc 0.701")
    assert current_champion(client, NAME) == candidate
    assert tags(client, candidate)["promoted_over"] == champion
    assert tags(client, candidate)["promotion_gate"] == (
        f"diff {decision.diff:+.3f} [{decision.ci_low:+.3f}, {decision.ci_high:+.3f}] vs v{champion}")


def test_gate_is_deterministic_and_the_ci_shrinks_with_more_images():
    small, large = make_test_set(100), make_test_set(3000)
    a_small, b_small = planted(small, 0.7, 1), planted(small, 0.6, 2)
    first = paired_gate(a_small, b_small, 500, 0.95, 0)
    assert first == paired_gate(a_small.iloc[::-1], b_small, 500, 0.95, 0)
    wide = first.ci_high - first.ci_low
    narrow = paired_gate(planted(large, 0.7, 1), planted(large, 0.6, 2), 500, 0.95, 0)
    assert narrow.ci_high - narrow.ci_low < wide and first.n_images == 100 and narrow.n_resamples == 500
    # the gate uses the models' own labels (as their predictions name them), not HAM10000's
    rename = dict(zip(CLASSES, ("g", "a", "b", "c", "d", "e", "f")))
    renamed = paired_gate(a_small.replace(rename), b_small.replace(rename), 500, 0.95, 0)
    assert (renamed.n_images, renamed.n_resamples, renamed.verdict) == (first.n_images, 500, first.verdict)
    assert [renamed.diff, renamed.ci_low, renamed.ci_high] == pytest.approx([first.diff, first.ci_low, first.ci_high])


def test_different_test_sets_raise(client):
    champion = register(client, 0.6, planted(make_test_set(), 0.7, seed=1))
    promote(client, NAME, champion, **GATE)
    candidate = register(client, 0.7, planted(make_test_set(start=100), 0.7, seed=2))
    with pytest.raises(DermaganError, match=f"v{candidate} and v{champion} were evaluated on different test sets"):
        promote(client, NAME, candidate, **GATE)
    relabelled = planted(make_test_set(), 0.7, seed=2)
    relabelled.loc[0, "actual"] = "nv" if relabelled.loc[0, "actual"] != "nv" else "mel"
    other = register(client, 0.7, relabelled)
    with pytest.raises(DermaganError, match="disagree on the true class"):
        promote(client, NAME, other, **GATE)
    assert current_champion(client, NAME) == champion


def test_missing_predictions_raise_and_name_the_version(client):
    champion = register(client, 0.6, planted(make_test_set(), 0.7, seed=1))
    promote(client, NAME, champion, **GATE)
    no_table = register(client, 0.9, None, test=0.9)  # tagged as evaluated but no predictions logged
    with pytest.raises(DermaganError, match=f"v{no_table} has no 'test/predictions.json'.*dermagan evaluate"):
        promote(client, NAME, None, **GATE)
    unevaluated = register(client, 0.95, None)
    with pytest.raises(DermaganError, match="no 'test_bal_acc' tag"):
        promote(client, NAME, unevaluated, **GATE)
    assert current_champion(client, NAME) == champion


def test_force_skips_the_gate_and_says_so(client):
    test = make_test_set()
    champion = register(client, 0.6, planted(test, 0.8, seed=1))
    promote(client, NAME, champion, **GATE)
    worse = register(client, 0.5, None, test=0.2)  # no predictions: the gate is not even looked at
    forced = promote(client, NAME, worse, force=True, **GATE)
    assert forced.promoted and forced.forced and "--force" in forced.message and "gate was skipped" in forced.message
    assert "candidate requested (val bal_acc 0.500)" in forced.message
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == worse
    assert tags(client, worse)["promotion_gate"] == f"skipped (--force) vs v{champion}"
    again = promote(client, NAME, worse, **GATE)
    assert not again.promoted and "already champion" in again.message


def test_cli_passes_bootstrap_params_and_exits_1_on_refusal(client, tmp_path, capsys):
    params = params_file(tmp_path / "cfg", mlflow={"experiment": "promote-test"},
                         evaluate={"bootstrap_samples": 300, "ci_level": 0.9, "seed": 3})
    test = make_test_set()
    champion = register(client, 0.6, planted(test, 0.8, seed=1))
    assert cli.main(["promote", "--name", NAME, "--params", str(params)]) == 0
    register(client, 0.7, planted(test, 0.3, seed=2))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["promote", "--name", NAME, "--params", str(params)])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "there was no champion" in out and "refused" in out and "[90% CI " in out
    assert current_champion(client, NAME) == champion

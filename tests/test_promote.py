"""promote moves the champion alias only to a better model, in a real sqlite MLflow registry."""

import mlflow
import pytest

from dermagan.errors import DermaganError
from dermagan.tracking.registry import CHAMPION, current_champion, promote
from dermagan.tracking.setup import configure

NAME = "dermagan-classifier-test"


def register(client: mlflow.MlflowClient, test_bal_acc: float | None) -> str:
    """Register a tiny real model version and tag it like the evaluate stage does."""
    import torch

    with mlflow.start_run():
        info = mlflow.pytorch.log_model(torch.nn.Linear(2, 7), name="model", registered_model_name=NAME,
                                        serialization_format="pickle")
    version = str(info.registered_model_version)
    if test_bal_acc is not None:
        client.set_model_version_tag(NAME, version, "test_bal_acc", str(test_bal_acc))
    return version


@pytest.fixture
def client(tracking):
    configure("promote-test")
    return mlflow.MlflowClient()


def test_promote_refuses_worse_and_accepts_better(client):
    v1, v2, v3 = register(client, 0.50), register(client, 0.40), register(client, 0.60)
    first = promote(client, NAME, v1)
    assert first.promoted and current_champion(client, NAME) == v1
    worse = promote(client, NAME, v2)
    assert not worse.promoted and "refused" in worse.message and "0.4000" in worse.message and "0.5000" in worse.message
    assert current_champion(client, NAME) == v1
    better = promote(client, NAME, v3)
    assert better.promoted and better.previous_version == v1 and current_champion(client, NAME) == v3
    assert client.get_model_version(NAME, v3).tags["promoted_over"] == v1


def test_force_skips_the_check_and_says_so(client):
    v1, v2 = register(client, 0.7), register(client, 0.2)
    promote(client, NAME, v1)
    forced = promote(client, NAME, v2, force=True)
    assert forced.promoted and "--force" in forced.message
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == v2


def test_default_picks_best_evaluated_and_needs_metrics(client):
    register(client, 0.3)
    best = register(client, 0.8)
    unevaluated = register(client, None)
    assert promote(client, NAME, None).version == best
    with pytest.raises(DermaganError, match="no 'test_bal_acc' tag"):
        promote(client, NAME, unevaluated)

"""`dermagan models` lists what the registry holds, and a `models:/` URI that names nothing (no such model,
alias or version) is refused by predict and export with what exists and what to run: a real sqlite store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import textured_image
from dermagan.classify.models import create_classifier
from dermagan.classify.pyfunc_model import log_classifier
from dermagan.cli import main
from dermagan.errors import DermaganError
from dermagan.export.registered import resolve_version
from dermagan.tracking.registry import VERSION_COLUMNS, format_versions, registered_version, version_rows

NAME = "listing-test-classifier"


def register_folder(client, name: str, mlmodel: dict, tags: dict) -> str:
    """A version whose files are only an MLmodel document (enough to be listed; nothing here loads it)."""
    folder = Path("fake-model")
    folder.mkdir(exist_ok=True)
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), "model")
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
    return str(version.version)


@pytest.fixture
def registry(tracking: str) -> mlflow.MlflowClient:
    """NAME v1: a real classifier (tagged as train + evaluate tag it, the champion); v2: a pickled
    mlflow.pytorch model; v3: an ensemble; and a generator model with one pickled version."""
    mlflow.set_experiment("tests")
    torch.manual_seed(0)
    with mlflow.start_run():
        info = log_classifier(create_classifier("simple_cnn", ("a", "b"), 32).eval(), "simple_cnn", "none", 32, NAME,
                              min_side=8)
    client = mlflow.MlflowClient()
    for key, value in {"arm": "effnet_ros", "seed": "0", "val_bal_acc": "0.6123", "test_bal_acc": "0.5987"}.items():
        client.set_model_version_tag(NAME, info.registered_model_version, key, value)
    client.set_registered_model_alias(NAME, "champion", info.registered_model_version)
    pickled = {"flavors": {"pytorch": {"model_data": "data"}, "python_function": {"loader_module": "mlflow.pytorch"}}}
    register_folder(client, NAME, pickled, {"arm": "effnet", "seed": "1"})
    register_folder(client, NAME, {"flavors": {"python_function": {}}, "metadata": {"kind": "ensemble"}},
                    {"arm": "ensemble_bma", "seed": "0", "val_bal_acc": "0.7000"})
    client.create_registered_model("listing-test-generator")
    register_folder(client, "listing-test-generator", pickled, {"method": "stgan"})
    return client


def test_versions_are_listed_newest_first_with_scores_aliases_and_kind(registry):
    rows = version_rows(registry, NAME)
    assert [r["version"] for r in rows] == [3, 2, 1]
    assert [r["kind"] for r in rows] == ["ensemble", "pickled-legacy", "classifier"]
    first = rows[-1]
    assert (first["arm"], first["seed"], first["val_bal_acc"], first["test_bal_acc"]) == ("effnet_ros", "0",
                                                                                            "0.6123", "0.5987")
    assert first["aliases"] == ["champion"] and rows[0]["aliases"] == [] and rows[0]["test_bal_acc"] is None
    assert len(first["created"]) == len("2025-01-31 12:00")
    assert [r["version"] for r in version_rows(registry, NAME, limit=2)] == [3, 2]
    assert version_rows(registry, "listing-test-generator")[0]["kind"] == "generator"

    table = format_versions(NAME, rows).splitlines()
    assert table[0] == f"{NAME}: 3 version(s), newest first"
    assert table[1].split() == list(VERSION_COLUMNS)
    assert table[4].split()[:6] == ["1", "effnet_ros", "0", "0.6123", "0.5987", "champion"]
    assert table[2].split()[4] == "-"  # the ensemble has no test score tag
    starts = [table[1].index(c) for c in VERSION_COLUMNS]  # aligned: every value starts under its header
    for line in table[2:]:
        assert all(line[s - 1] == " " for s in starts[1:])


def test_models_command_prints_a_table_that_fits_a_terminal(registry, capsys):
    assert main(["models", "--name", NAME, "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{NAME}: the 2 newest version(s), newest first"
    assert len(out.splitlines()) == 4 and max(map(len, out.splitlines())) <= 120
    assert main(["models", "--all"]) == 0
    out = capsys.readouterr().out
    assert f"{NAME}: 3 version(s)" in out and "listing-test-generator: 1 version(s)" in out and "generator" in out
    assert main(["models", "--name", NAME, "--limit", "0"]) == 2
    assert "--limit 0" in capsys.readouterr().err


def test_models_names_the_registered_models_when_the_name_is_wrong(registry, capsys):
    assert main(["models", "--name", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no registered model 'nope'" in err and f"registered models: {NAME}, listing-test-generator" in err
    assert "dvc repro" in err


def test_models_refuses_a_missing_or_broken_store_without_creating_one(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "none" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    assert main(["models"]) == 2
    assert "no MLflow tracking database" in capsys.readouterr().err and not missing.parent.exists()
    broken = tmp_path / "broken.db"
    broken.write_text("not a database")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{broken}")
    assert main(["models"]) == 2
    assert "not a SQLite database" in capsys.readouterr().err


def test_predict_and_export_suggest_promote_for_a_missing_alias(registry, tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.fromarray(textured_image(np.random.default_rng(0), 32, 32)).save(image)
    uri = f"models:/{NAME}@staging"
    assert main(["predict", str(image), "--model", uri, "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{uri}: no version has the alias 'staging' (its aliases: champion -> v1); run `dermagan promote`" in err
    assert f"--model models:/{NAME}/VERSION; `dermagan models --name {NAME}` lists them" in err
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises(DermaganError, match=r"no version has the alias 'staging'.*dermagan promote"):
        resolve_version(registry, uri)
    assert str(resolve_version(registry, f"models:/{NAME}@champion").version) == "1"


def test_a_uri_naming_no_registered_model_or_version_says_what_exists(registry):
    with pytest.raises(DermaganError, match=rf"no registered model 'nope' .*registered models: {NAME}.*dvc repro"):
        registered_version(registry, "models:/nope@champion")
    with pytest.raises(DermaganError, match=r"has no version 9 \(existing versions: 1, 2, 3"):
        resolve_version(registry, f"models:/{NAME}/9")
    assert str(registered_version(registry, f"models:/{NAME}/2").version) == "2"
    assert registered_version(registry, "runs:/abc/model") is None  # MLflow resolves the rest itself


def test_the_registered_model_defaults_to_the_params_files_name(registry, tmp_path, capsys):
    """Without --name/--model, models, promote's target and predict take mlflow.registered_model from --params
    (a profile's own model via profiles/NAME/params.yaml); with no params file, dermagan-classifier."""
    repo = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["mlflow"]["registered_model"] = NAME
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "own" / "params").mkdir()
    for key in ("tuned_params", "tuned_gan_params"):
        (tmp_path / "own" / params[key]).write_text((repo / params[key]).read_text())
    assert main(["models", "--params", "own/params.yaml"]) == 0
    assert capsys.readouterr().out.startswith(f"{NAME}: 3 version(s)")
    image = tmp_path / "a.png"
    Image.fromarray(textured_image(np.random.default_rng(0), 32, 32)).save(image)
    assert main(["predict", str(image), "--params", "own/params.yaml", "--out", str(tmp_path / "p.csv")]) == 0
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "image_id,pred_dx,prob_a,prob_b"
    assert main(["models"]) == 2  # no params.yaml here: the default name, which this store lacks
    assert "no registered model 'dermagan-classifier'" in capsys.readouterr().err

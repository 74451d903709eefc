"""Ensembles of trained arms: BMA / tempered BMA / stacking weights, the ensemble stage on tiny real
classifiers, the registered pyfunc (load, `dermagan predict`) and `dermagan promote` on it."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from dermagan import cli
from dermagan.classify.inference import predict_proba, to_float_batch
from dermagan.classify.models import create_classifier
from dermagan.classify.predict import list_images, load_folder
from dermagan.classify.pyfunc_model import log_classifier
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.data.prepared import SplitArrays, read_split, write_split
from dermagan.ensemble.model import EnsembleModel
from dermagan.ensemble.serving import load_classifier
from dermagan.ensemble.weights import (
    average_weights,
    bma_weights,
    combine,
    effective_members,
    is_collapsed,
    log_likelihoods,
    mixture_log_likelihood,
    stacked_weights,
)
from dermagan.classify.artifact import load_trained
from dermagan.config import build_config, load_params
from dermagan.ensemble.fit import COMBINERS
from dermagan.errors import DermaganError
from dermagan.stages.compare import read_predictions
from dermagan.stages.ensemble import run_ensemble
from dermagan.tracking.registry import current_champion, load_test_predictions, promote
from dermagan.tracking.setup import configure

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
NAME = "dermagan-classifier-ensemble-test"
SIZE = 16
ARMS = ("untrained", "left", "right")
SEEDS = (0, 1)
# Members: an untrained CNN (near-uniform probabilities) and two specialists, each trained on 4 of the 7
# classes. Exact BMA collapses onto the untrained one (a specialist gives ~0 to the classes it never saw,
# and one such val image outweighs everything); stacking mixes the two specialists.
TRAINED_ON = {"untrained": (), "left": (0, 1, 2, 3), "right": (3, 4, 5, 6)}
STEPS = 15


# --- weights: hand computations ------------------------------------------------------------------

def hand_case() -> tuple[np.ndarray, np.ndarray]:
    """3 models, 4 val images, 2 classes, labels 0, 1, 0, 1.

    p(true class): model 1: 0.9, 0.8, 0.6, 0.7 (product 0.3024); model 2: 0.5 x 4 (0.0625);
    model 3: 0.6, 0.9, 0.3, 0.8 (0.1296 = 0.6^4).
    """
    y = np.array([0, 1, 0, 1])
    true = np.array([[0.9, 0.8, 0.6, 0.7], [0.5, 0.5, 0.5, 0.5], [0.6, 0.9, 0.3, 0.8]])
    proba = np.empty((3, 4, 2))
    proba[:, np.arange(4), y] = true
    proba[:, np.arange(4), 1 - y] = 1 - true
    return proba, y


def test_bma_weights_equal_the_hand_computation_and_sum_to_1():
    proba, y = hand_case()
    np.testing.assert_allclose(log_likelihoods(proba, y), np.log([0.3024, 0.0625, 0.1296]))
    # w_m = L_m / (0.3024 + 0.0625 + 0.1296) = L_m / 0.4945
    weights = bma_weights(proba, y)
    np.testing.assert_allclose(weights, [0.3024 / 0.4945, 0.0625 / 0.4945, 0.1296 / 0.4945], rtol=1e-12)
    np.testing.assert_allclose(weights, [0.611527, 0.126390, 0.262083], atol=1e-6)
    assert weights.sum() == pytest.approx(1.0)
    # prior 1:2:1 -> w ∝ 0.3024, 0.125, 0.1296 (sum 0.557)
    np.testing.assert_allclose(bma_weights(proba, y, prior=[1, 2, 1]), [0.3024 / 0.557, 0.125 / 0.557, 0.1296 / 0.557])


def test_tempered_bma_equals_the_hand_computation():
    proba, y = hand_case()
    # temperature n_val = 4: w ∝ L^(1/4), the geometric-mean likelihood per image: 0.3024^0.25, 0.5, 0.6
    g1 = 0.3024 ** 0.25
    assert g1 == pytest.approx(0.741559, abs=1e-6)
    weights = bma_weights(proba, y, temperature=4)
    np.testing.assert_allclose(weights, np.array([g1, 0.5, 0.6]) / (g1 + 1.1), rtol=1e-12)
    assert weights.sum() == pytest.approx(1.0) and not is_collapsed(weights)


def test_exact_bma_collapses_with_many_images_without_overflow_and_tempered_does_not():
    n = 3000
    y = np.zeros(n, dtype=int)
    proba = np.empty((2, n, 2))
    proba[0, :, 0], proba[1, :, 0] = 0.70, 0.68  # p(true class) of every image
    proba[:, :, 1] = 1 - proba[:, :, 0]
    assert log_likelihoods(proba, y).max() < -1000  # exp(LL) underflows to 0: naive weights would be 0/0
    exact = bma_weights(proba, y)
    gap = n * np.log(0.70 / 0.68)
    assert np.isfinite(exact).all() and exact.sum() == pytest.approx(1.0)
    assert exact[1] == pytest.approx(np.exp(-gap) / (1 + np.exp(-gap)), rel=1e-6)
    assert is_collapsed(exact) and effective_members(exact) == pytest.approx(1.0)
    tempered = bma_weights(proba, y, temperature=n)
    np.testing.assert_allclose(tempered, [0.70 / 1.38, 0.68 / 1.38], rtol=1e-9)
    assert not is_collapsed(tempered)


def test_stacked_weights_maximise_val_log_likelihood_over_the_simplex():
    rng = np.random.default_rng(0)
    n, k = 60, 3
    y = rng.integers(0, k, n)
    proba = rng.dirichlet(np.ones(k), size=(3, n))
    # complementary members: model 0 is right on the first third, model 1 on the second, model 2 weakly everywhere
    for m, part in ((0, slice(0, 20)), (1, slice(20, 40))):
        proba[m, part] = 0.05
        proba[m, np.arange(n)[part], y[part]] = 0.9
    proba[2] = 0.5 * proba[2] + 0.5 * np.eye(k)[y] * 0.6 + 0.5 * 0.4 / k
    proba /= proba.sum(-1, keepdims=True)
    weights = stacked_weights(proba, y, iters=5000, tol=1e-14)
    assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()
    np.testing.assert_array_equal(weights, stacked_weights(proba, y, iters=5000, tol=1e-14))  # deterministic
    best = mixture_log_likelihood(proba, y, weights)
    assert best > mixture_log_likelihood(proba, y, average_weights(3)) + 1e-6
    for vertex in np.eye(3):
        assert best > mixture_log_likelihood(proba, y, vertex) + 1e-6
    grid = [np.array([a, b, 1 - a - b]) / 1.0 for a, b in itertools.product(np.linspace(0, 1, 51), repeat=2)
            if a + b <= 1 + 1e-12]
    assert best >= max(mixture_log_likelihood(proba, y, np.clip(w, 0, None) / np.clip(w, 0, None).sum())
                       for w in grid) - 1e-9


def test_combine_is_the_weighted_average_and_checks_its_inputs():
    proba, _ = hand_case()
    np.testing.assert_allclose(combine(proba, [0.5, 0.25, 0.25]), 0.5 * proba[0] + 0.25 * proba[1] + 0.25 * proba[2])
    np.testing.assert_allclose(combine(proba, average_weights(3)), proba.mean(0))
    with pytest.raises(DermaganError, match="summing to 1"):
        combine(proba, [0.5, 0.5, 0.5])
    with pytest.raises(DermaganError, match="temperature"):
        bma_weights(proba, np.array([0, 1, 0, 1]), temperature=0)


# --- tiny real runs ------------------------------------------------------------------------------

def split(n_per_class: int, seed: int, prefix: str) -> SplitArrays:
    """Images whose colour encodes the class (plus noise), so a small CNN learns something."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), n_per_class)
    palette = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60], [200, 60, 200],
                        [60, 200, 200], [130, 130, 130]])
    images = np.clip(palette[labels][:, None, None, :] + rng.normal(0, 90, (len(labels), SIZE, SIZE, 3)), 0, 255)
    return SplitArrays(images.astype(np.uint8), labels.astype(np.int64),
                       np.array([f"{prefix}_{i:04d}" for i in range(len(labels))]))


def save_member(models_dir: Path, arm: str, seed: int, train: SplitArrays) -> None:
    """A real simple_cnn trained a few steps on its classes, saved as train.py saves it (model.pt, mlflow.json)."""
    torch.manual_seed(100 * seed + ARMS.index(arm))
    model = create_classifier("simple_cnn", CLASSES, SIZE)
    keep = np.isin(train.labels, TRAINED_ON[arm])
    x = to_float_batch(torch.from_numpy(train.images[keep]).permute(0, 3, 1, 2))
    y = torch.from_numpy(train.labels[keep])
    optimiser = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(STEPS if keep.any() else 0):
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
    model.eval()
    if arm == "left":
        model.temperature.fill_(1.7)  # a fitted temperature travels with the member
    folder = models_dir / f"{arm}-s{seed}"
    folder.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "backbone": "simple_cnn", "tta": "none", "classes": list(CLASSES),
                "image_size": SIZE}, folder / "model.pt")
    (folder / "mlflow.json").write_text(json.dumps({"run_id": "none", "arm": arm, "seed": seed,
                                                    "version": f"{ARMS.index(arm) + 1}{seed}"}))


def make_params(root: Path):
    """The repository's params.yaml with these arms, seeds, evaluation and MLflow settings."""
    params = load_params(REPO / "params.yaml")
    params.update({"arms": {arm: {"extra": None} for arm in ARMS},
                   "evaluate": {"bootstrap_samples": 300, "ci_level": 0.95, "seed": 0, "batch_size": 64,
                                "calibration_bins": 10},
                   "mlflow": {"experiment": "ensemble-test", "registered_model": NAME},
                   "ensemble": {"register": "auto", "stacking": {"iters": 500, "tol": 1e-10}}})
    params["train"] = {**params["train"], "seeds": list(SEEDS), "device": "cpu"}
    return build_config(params)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Prepared splits, 3 arms x 2 seeds of trained members, a sqlite MLflow store, one ensemble stage run."""
    root = tmp_path_factory.mktemp("ensemble")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        prepared = root / "prepared"
        prepared.mkdir()
        train = split(6, 0, "TR")
        write_split(prepared, "train", train)
        write_split(prepared, "val", split(5, 1, "VA"))
        write_split(prepared, "test", split(5, 2, "TE"))
        for arm, seed in itertools.product(ARMS, SEEDS):
            save_member(root / "models", arm, seed, train)
        params = make_params(root)
        document = run_ensemble(params, list(ARMS), list(SEEDS), prepared, root / "models", root / "report",
                                root / "metrics" / "ensemble.json", root / "predictions")
        yield {"root": root, "prepared": prepared, "params": params, "document": document}


def members_proba(root: Path, seed: int, images: np.ndarray) -> np.ndarray:
    return np.stack([predict_proba(load_trained(root / "models" / f"{arm}-s{seed}")[0], images, 64,
                                   torch.device("cpu")) for arm in ARMS])


def test_stage_writes_reports_predictions_and_metrics(world):
    root, document = world["root"], world["document"]
    for name in ("report.md", "runs.csv", "members.csv", "combiners.csv", "weights.csv", "vs_best_single.csv",
                 "summary.json", "weights.png", "ensemble.png"):
        assert (root / "report" / name).is_file(), name
    assert json.loads((root / "metrics" / "ensemble.json").read_text()) == json.loads(
        (root / "report" / "summary.json").read_text())
    assert set(document["combiners"]) == set(COMBINERS)
    for combiner, stats in document["combiners"].items():
        assert 0 <= stats["bal_acc_mean"] <= 1 and stats["bal_acc_std"] >= 0
        assert {f"recall_{c}_mean" for c in CLASSES} <= set(stats)
        for seed in SEEDS:
            assert sum(stats["weights"][f"s{seed}"].values()) == pytest.approx(1.0)
    # per-combiner per-seed test predictions, in the evaluate stage's format (the compare stage reads them)
    names = [f"ensemble_{c}" for c in COMBINERS]
    assert sorted(p.name for p in (root / "predictions").iterdir()) == sorted(
        [".dermagan-output", *(f"{n}-s{s}.csv" for n in names for s in SEEDS)])  # + the output marker
    columns = pd.read_csv(root / "predictions" / "ensemble_bma-s0.csv").columns
    assert list(columns) == ["image_id", "actual", "predicted"]
    y_true, predicted = read_predictions(root / "predictions", names, list(SEEDS))
    np.testing.assert_array_equal(y_true, read_split(world["prepared"], "test").labels)
    # the combiner's test predictions are argmax of the weighted members' test probabilities
    test = read_split(world["prepared"], "test")
    for combiner, seed in itertools.product(COMBINERS, SEEDS):
        w = [document["combiners"][combiner]["weights"][f"s{seed}"][arm] for arm in ARMS]
        expected = combine(members_proba(root, seed, test.images), np.array(w) / np.sum(w)).argmax(1)
        np.testing.assert_array_equal(predicted[f"ensemble_{combiner}"][seed], expected)
    # the best single arm is chosen on val
    members = pd.read_csv(root / "report" / "members.csv")
    assert document["best_single"]["arm"] == members.groupby("arm")["val_bal_acc"].mean().idxmax()
    vs = pd.read_csv(root / "report" / "vs_best_single.csv")
    assert set(vs["combiner"]) == set(COMBINERS) and (vs["best_single_arm"] == document["best_single"]["arm"]).all()
    assert (vs["ci_low"] <= vs["diff"] + 1e-12).all() and (vs["diff"] <= vs["ci_high"] + 1e-12).all()
    # exact BMA collapses (onto the untrained member); auto then registers the stacked weights
    assert document["combiners"]["bma"]["collapsed_seeds"] == len(SEEDS)
    assert document["combiners"]["stacked"]["collapsed_seeds"] == 0
    assert document["registered"]["combiner"] == "stacked" and "collapsed" in document["registered"]["reason"]
    report = (root / "report" / "report.md").read_text()
    assert "fitted on the real val split only" in report and document["registered"]["model_uri"] in report


def test_weights_are_fitted_on_val_only(world, tmp_path):
    """Permuting the test labels changes the test scores but not one weight; stacking beats averaging on val."""
    root = world["root"]
    prepared = tmp_path / "prepared"
    shutil.copytree(world["prepared"], prepared)
    test = read_split(prepared, "test")
    write_split(prepared, "test", SplitArrays(test.images, np.random.default_rng(5).permutation(test.labels),
                                              test.image_ids))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        document = run_ensemble(world["params"], list(ARMS), list(SEEDS), prepared, root / "models",
                                tmp_path / "report", tmp_path / "ensemble.json", tmp_path / "predictions")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "report" / "weights.csv"),
                                  pd.read_csv(root / "report" / "weights.csv"))
    for key in ("arm", "val_bal_acc_by_arm"):  # the best single arm is chosen on val: unchanged
        assert document["best_single"][key] == world["document"]["best_single"][key]
    assert document["registered"]["combiner"] == world["document"]["registered"]["combiner"]
    assert document["combiners"]["average"]["bal_acc_mean"] != world["document"]["combiners"]["average"]["bal_acc_mean"]
    val = read_split(prepared, "val")
    for seed in SEEDS:
        proba = members_proba(root, seed, val.images)
        w = {c: np.array([world["document"]["combiners"][c]["weights"][f"s{seed}"][a] for a in ARMS])
             for c in COMBINERS}
        assert mixture_log_likelihood(proba, val.labels, w["stacked"] / w["stacked"].sum()) >= \
            mixture_log_likelihood(proba, val.labels, average_weights(3)) - 1e-9
        np.testing.assert_allclose(w["bma"], bma_weights(proba, val.labels), atol=1e-9)
        np.testing.assert_allclose(w["bma_tempered"], bma_weights(proba, val.labels, temperature=len(val.labels)),
                                   atol=1e-9)


def user_folder(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(9)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (32 + i, 36, 3), dtype=np.uint8)).save(folder / f"img_{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


def test_registered_pyfunc_loads_and_predict_cli_gives_the_weighted_members(world, tmp_path, capsys):
    root, registered = world["root"], world["document"]["registered"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        configure("ensemble-test")
        client = mlflow.MlflowClient()
        version = client.get_model_version(NAME, registered["version"])
        assert version.tags["kind"] == "ensemble" and "weights fitted on real val" in version.tags["trained_on"]
        assert len(version.tags) <= 8  # what a reader needs; the rest is in the description
        assert "optimistic" in version.description and "| member | weight |" in version.description
        assert float(version.tags["val_bal_acc"]) == pytest.approx(registered["val_bal_acc"], abs=1e-4)
        assert float(version.tags["test_bal_acc"]) == pytest.approx(registered["test_bal_acc"], abs=1e-4)
        model = mlflow.pyfunc.load_model(registered["model_uri"])
        assert isinstance(model.unwrap_python_model(), EnsembleModel)
        assert model.metadata.metadata["image_size"] == SIZE and model.metadata.metadata["classes"] == list(CLASSES)
        weights = np.array(model.metadata.metadata["weights"])
        assert weights.sum() == pytest.approx(1.0)
        x = np.random.default_rng(0).random((3, 3, SIZE, SIZE), dtype=np.float32)
        out = model.predict(x)
        assert list(out.columns) == list(CLASSES)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-6)
        with pytest.raises(Exception, match="in \\[0, 1\\]"):
            model.predict(x * 255)

        folder = user_folder(tmp_path / "photos")
        out_csv = tmp_path / "preds.csv"
        assert cli.main(["predict", str(folder), "--model", registered["model_uri"], "--out", str(out_csv)]) == 0
        frame = pd.read_csv(out_csv)
        assert frame["image_id"].tolist() == [f"img_{i}" for i in range(5)]
        images, ids, skipped = load_folder(list_images(folder), SIZE)
        expected = combine(members_proba(root, registered["seed"], images), weights)
        np.testing.assert_allclose(frame[[f"prob_{c}" for c in CLASSES]].to_numpy(), expected, atol=1e-5)
        assert frame["pred_dx"].tolist() == [CLASSES[i] for i in expected.argmax(1)]
        assert "1 unreadable file(s) skipped" in capsys.readouterr().out

        code = cli.main(["predict", str(folder), "--model", f"models:/{NAME}/999", "--out", str(tmp_path / "x.csv")])
        err = capsys.readouterr().err
        assert code == 2 and f"'{NAME}' has no version 999" in err and "Traceback" not in err
        assert not (tmp_path / "x.csv").exists()


def test_promote_treats_the_ensemble_version_like_any_other(world, tmp_path, capsys):
    """A torch classifier version (logged as the train stage logs it) is champion; the ensemble version goes
    through the paired gate (its test predictions load) and through `promote --version --force`."""
    root, registered = world["root"], world["document"]["registered"]
    ens = registered["version"]
    gate = {"n_boot": 300, "level": 0.95, "seed": 0}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        configure("ensemble-test")
        client = mlflow.MlflowClient()
        member, _ = load_trained(root / "models" / "right-s0")
        test = read_split(world["prepared"], "test")
        predicted = predict_proba(member, test.images, 64, torch.device("cpu")).argmax(1)
        table = pd.DataFrame({"image_id": test.image_ids, "actual": [CLASSES[i] for i in test.labels],
                              "predicted": [CLASSES[i] for i in predicted]})
        with mlflow.start_run() as run:
            info = log_classifier(member, "simple_cnn", "none", SIZE, NAME, min_side=8)
            mlflow.log_table(table, "test/predictions.json")
        torch_version = str(info.registered_model_version)
        from sklearn.metrics import balanced_accuracy_score

        torch_test = balanced_accuracy_score(test.labels, predicted)
        client.set_model_version_tag(NAME, torch_version, "val_bal_acc", "0.5000")
        client.set_model_version_tag(NAME, torch_version, "test_bal_acc", f"{torch_test:.4f}")
        assert promote(client, NAME, torch_version, **gate).promoted
        # `dermagan predict` loads a classifier version as the nn.Module (from its weights file)
        assert isinstance(load_classifier(f"models:/{NAME}/{torch_version}"), torch.nn.Module)

        loaded = load_test_predictions(client, NAME, ens)
        pd.testing.assert_frame_equal(loaded, pd.read_csv(
            root / "predictions" / f"ensemble_{registered['combiner']}-s{registered['seed']}.csv", dtype=str))
        decision = promote(client, NAME, ens, **gate)  # the paired gate runs on both versions' predictions
        ens_test = balanced_accuracy_score(loaded["actual"], loaded["predicted"])
        assert decision.diff == pytest.approx(ens_test - torch_test)
        assert decision.ci_low <= decision.diff <= decision.ci_high
        assert decision.promoted == (decision.ci_high >= 0)

        promote(client, NAME, torch_version, force=True, **gate)
        params = tmp_path / "params.yaml"  # the repository's params (tuned values inlined), this experiment
        full = {k: v for k, v in load_params(REPO / "params.yaml").items()
                if k not in ("tuned", "tuned_params", "tuned_gan_params")}
        full["mlflow"] = {**full["mlflow"], "experiment": "ensemble-test"}
        full["evaluate"] = {**full["evaluate"], "bootstrap_samples": 300, "ci_level": 0.95, "seed": 0}
        params.write_text(yaml.safe_dump(full))
        assert cli.main(["promote", "--name", NAME, "--version", ens, "--force", "--params", str(params)]) == 0
        assert f"promoted v{ens} over v{torch_version} with --force" in capsys.readouterr().out
        assert current_champion(client, NAME) == ens
        out_csv = tmp_path / "champion.csv"
        folder = user_folder(tmp_path / "photos")
        assert cli.main(["predict", str(folder), "--model", f"models:/{NAME}@champion", "--out", str(out_csv)]) == 0
        assert len(pd.read_csv(out_csv)) == 5

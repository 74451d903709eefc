"""External test sets scored beside (never instead of) the internal test: evaluate writes an ``external``
block and per-set predictions, compare reports each set's arms table and verdicts with the comparator
chosen on val (the set chooses nothing), ensemble scores every combiner there with its val-fitted
weights; without external sets nothing changes."""

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

from conftest import make_ham_folder
from dermagan.classify.inference import to_float_batch
from dermagan.classify.models import create_classifier
from dermagan.cli import _default_paths, build_parser
from dermagan.config.layout import LAYOUT
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.data.external import ExternalConfig, prepare_external
from dermagan.data.prepare import PrepareConfig, prepare_dataset
from dermagan.data.prepared import SplitArrays, read_split, write_classes, write_split
from dermagan.errors import DermaganError
from dermagan.evaluate.external import UNDEFINED, eval_root, predictions_file, run_predictions_file
from dermagan.evaluate.metrics import balanced_accuracy, classification_metrics
from dermagan.stages.compare import run_compare
from dermagan.stages.evaluate import run_evaluate
from params_util import make_config
from test_binary_metrics import binary_params
from test_external import BINARY, BINARY_MAP, make_external

torch.set_num_threads(1)
SIZE = 16


# --- evaluate ------------------------------------------------------------------------------------------------

def save_model(folder: Path, prepared: Path, classes: tuple[str, ...], steps: int = 10) -> Path:
    """A real simple_cnn trained a few steps on the prepared train split, saved as the train stage saves it."""
    torch.manual_seed(0)
    model = create_classifier("simple_cnn", classes, SIZE)
    train = read_split(prepared, "train")
    x = to_float_batch(torch.from_numpy(train.images).permute(0, 3, 1, 2))
    y = torch.from_numpy(train.labels)
    optimiser = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
    model.eval()
    model.temperature.fill_(1.3)  # a fitted temperature: external sets are served through it too
    folder.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "backbone": "simple_cnn", "tta": "hflip", "classes": list(classes),
                "image_size": SIZE}, folder / "model.pt")
    (folder / "mlflow.json").write_text(json.dumps({"run_id": "not-in-this-store", "version": "1",
                                                    "registered_model": "external-scoring-test"}))
    return folder


def make_world(root: Path, classes: tuple[str, ...], label_map: dict | None, rows: list[tuple[str, str]]):
    """Prepared splits, one prepared external set ``clinic`` (``rows``), an empty external folder, a model."""
    raw = make_ham_folder(root / "raw", per_class=6)
    prepared = root / "prepared"
    prepare_dataset(raw, prepared, root / "eda", PrepareConfig(SIZE, 0.2, 0.2, 0, classes, label_map=label_map))
    config = ExternalConfig(image_size=SIZE, classes=classes, min_image_side=SIZE, label_map=label_map)
    external = root / "external"
    prepare_external({"clinic": make_external(root / "clinic", rows)}, prepared, raw, external, config)
    empty = root / "external_empty"
    prepare_external({}, prepared, raw, empty, config)
    return {"root": root, "prepared": prepared, "external": external, "empty": empty,
            "model": save_model(root / "model", prepared, classes)}


@pytest.fixture(scope="module")
def ham_world(tmp_path_factory):
    """The default seven-class task; the external set has no vasc image."""
    rows = [(f"EXT_{i}", dx) for i, dx in enumerate(["mel", "nv", "bcc", "df", "akiec", "bkl"] * 2)]
    return make_world(tmp_path_factory.mktemp("ham_world"), CLASSES, None, rows)


def evaluate(world: dict, cfg, out: Path, external_dir: Path | None) -> dict:
    paths = {"metrics": out / "metrics.json", "plots": out / "plots", "predictions": out / "predictions.csv",
             "roc": out / "roc.csv"}
    document = run_evaluate(cfg, "effnet", 0, world["prepared"], world["model"], paths["metrics"], paths["plots"],
                            paths["predictions"], paths["roc"], external_dir=external_dir)
    return {"document": document, **paths}


def ham_config(external: dict):
    return make_config({"evaluate": {"bootstrap_samples": 100, "external": external}, "train": {"device": "cpu"},
                        "mlflow": {"experiment": "external-scoring"}})


def test_evaluate_scores_the_external_set_like_test(tracking, tmp_path, ham_world):
    cfg = ham_config({"clinic": "imports/external/clinic"})
    out = evaluate(ham_world, cfg, tmp_path, ham_world["external"])
    document = json.loads(out["metrics"].read_text())
    assert document == json.loads(json.dumps(out["document"]))
    block, test = document["external"]["clinic"], document["test"]
    assert list(document["external"]) == ["clinic"]
    assert set(block) == set(test)  # the same report structure as test
    assert block["n_images"] == 12 and block["per_class"]["vasc"]["support"] == 0
    assert block["calibration"]["temperature"] == pytest.approx(1.3)
    predictions = pd.read_csv(predictions_file(out["plots"], "clinic"))
    assert list(predictions.columns) == ["image_id", "actual", "predicted"]
    assert predictions["image_id"].tolist() == [f"EXT_{i}" for i in range(12)]
    y = predictions["actual"].map(CLASSES.index).to_numpy()
    pred = predictions["predicted"].map(CLASSES.index).to_numpy()
    assert block["bal_acc"] == pytest.approx(balanced_accuracy(y, pred, len(CLASSES)))
    # the internal test block is what evaluating without the external set gives
    without = evaluate(ham_world, ham_config({}), tmp_path / "without", None)["document"]
    assert without["test"] == document["test"] and "external" not in without
    # logged beside test in the one MLflow run
    run = mlflow.search_runs(experiment_names=["external-scoring"], order_by=["start_time ASC"]).iloc[0]
    assert run["metrics.external/clinic/bal_acc"] == pytest.approx(block["bal_acc"])
    assert run["metrics.test/bal_acc"] == pytest.approx(test["bal_acc"])
    artifacts = mlflow.MlflowClient().list_artifacts(run["run_id"], "external")
    assert [Path(a.path).name for a in artifacts] == ["clinic.csv"]
    # ... with the test split and the external set as its dataset inputs (one run per evaluation: the card too)
    inputs = mlflow.MlflowClient().get_run(run["run_id"]).inputs.dataset_inputs
    contexts = {d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"] for d in inputs}
    assert contexts == {"ham10000-test": "test", "clinic": "external"}
    assert len(mlflow.search_runs(experiment_names=["external-scoring"])) == 2


def test_without_external_sets_the_outputs_do_not_change(tracking, tmp_path, ham_world):
    cfg = ham_config({})
    with_empty = evaluate(ham_world, cfg, tmp_path / "empty", ham_world["empty"])
    none = evaluate(ham_world, cfg, tmp_path / "none", None)
    missing = evaluate(ham_world, cfg, tmp_path / "missing", tmp_path / "not-prepared")  # nothing to score
    for out in (with_empty, none, missing):
        assert "external" not in json.loads(out["metrics"].read_text())
        assert not (out["plots"] / "external").exists()
    assert with_empty["metrics"].read_text() == none["metrics"].read_text() == missing["metrics"].read_text()
    assert with_empty["predictions"].read_text() == none["predictions"].read_text()


def test_external_folder_must_hold_the_sets_params_name(tracking, tmp_path, ham_world):
    with pytest.raises(DermaganError, match=r"holds external test set\(s\) \['clinic'\].*names \[\].*prepare-external"):
        evaluate(ham_world, ham_config({}), tmp_path / "stale", ham_world["external"])
    with pytest.raises(DermaganError, match="prepare-external"):
        evaluate(ham_world, ham_config({"clinic": "x"}), tmp_path / "missing", tmp_path / "not-prepared")
    assert not (tmp_path / "stale" / "metrics.json").exists()


def test_binary_task_scores_the_external_set_at_the_val_threshold(tracking, tmp_path, tmp_path_factory):
    rows = [(f"EXT_{i}", dx) for i, dx in enumerate(["mel", "nv", "bcc", "df", "akiec", "bkl", "vasc"] * 2)]
    world = make_world(tmp_path_factory.mktemp("binary_world"), BINARY, BINARY_MAP, rows)
    params = binary_params({"evaluate": {"bootstrap_samples": 100, "verdict_classes": None,
                                         "external": {"clinic": "x"}},
                            "train": {"device": "cpu"}, "mlflow": {"experiment": "external-binary"}})
    params["data"]["label_map"] = BINARY_MAP
    out = evaluate(world, make_config(params), tmp_path, world["external"])
    test, block = out["document"]["test"]["binary"], out["document"]["external"]["clinic"]["binary"]
    assert block["threshold"] == test["threshold"] and block["threshold_from"] == "val"
    assert block["n_val"] == test["n_val"] and block["n_positive"] + block["n_negative"] == 14
    predictions = pd.read_csv(predictions_file(out["plots"], "clinic"))
    assert list(predictions.columns) == ["image_id", "actual", "predicted", "p_malignant"]


def test_cli_defaults_are_the_layouts():
    for tokens in (["evaluate", "--arm", "effnet", "--seed", "0"], ["compare"], ["ensemble"]):
        args = build_parser().parse_args(tokens)
        args.config = None
        _default_paths(args)
        assert args.external == LAYOUT.external
    assert args.command == "ensemble"
    args = build_parser().parse_args(["compare"])
    _default_paths(args)
    assert args.eval_dir == eval_root() == LAYOUT.eval_plots("effnet", 0).parent == Path("reports/eval")
    assert run_predictions_file(eval_root(), "effnet", 2, "isic") == Path("reports/eval/effnet-s2/external/isic.csv")
    assert predictions_file(LAYOUT.eval_plots("effnet", 2), "isic") == run_predictions_file(eval_root(), "effnet", 2,
                                                                                            "isic")


# --- compare -------------------------------------------------------------------------------------------------

RECIPE = {"class_weight_power": 1.0, "sampler": "shuffle"}
ARM_PARAMS = {"effnet": {"extra": None}, "effnet_other": {"extra": None},
              "effnet_dcgan": {"class_weight_power": 0.0, "sampler": "class_balanced", "extra": "dcgan/dedup"}}
N = len(CLASSES)
EXTERNAL_CLASSES = [c for c in range(N) if CLASSES[c] != "vasc"]  # the external set has no vasc image


def _predict(y_true: np.ndarray, miss: dict[int, float], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y_pred = y_true.copy()
    for c, rate in miss.items():
        where = np.flatnonzero(y_true == c)
        y_pred[rng.choice(where, int(rate * len(where)), replace=False)] = (c + 1) % N
    return y_pred


def _block(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """A metrics block computed from predictions, as the evaluate stage does (CIs made up)."""
    block = classification_metrics(y_true, np.eye(N)[y_pred], CLASSES)
    block["bal_acc_ci_low"], block["bal_acc_ci_high"] = block["bal_acc"] - 0.05, block["bal_acc"] + 0.05
    for values in block["per_class"].values():
        values["recall_ci_low"], values["recall_ci_high"] = max(values["recall"] - 0.1, 0), None
    block["n_images"] = len(y_true)
    return block


def _frame(prefix: str, y_true: np.ndarray, y_pred: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"image_id": [f"{prefix}_{i:05d}" for i in range(len(y_true))],
                         "actual": [CLASSES[i] for i in y_true], "predicted": [CLASSES[i] for i in y_pred]})


# test: effnet_other is far better than effnet, but effnet is better on val; on the external set effnet_other
# is better still: neither may make it the comparator
MISS_TEST = {"effnet": {3: 0.6, 4: 0.3}, "effnet_other": {}, "effnet_dcgan": {3: 0.2, 4: 0.5}}
MISS_EXTERNAL = {"effnet": {0: 0.7, 3: 0.5}, "effnet_other": {}, "effnet_dcgan": {0: 0.1, 3: 0.6}}
VAL = {"effnet": [0.5, 0.7, 0.6], "effnet_other": [0.4, 0.5, 0.45], "effnet_dcgan": [0.9, 0.9, 0.9]}


@pytest.fixture
def compare_world(tmp_path: Path) -> dict:
    """Every run's metrics (test + external.clinic), test predictions, external predictions in its evaluate
    figures folder, training histories, and a prepared external folder naming the set."""
    dirs = {k: tmp_path / k for k in ("metrics", "predictions", "eval", "train", "external")}
    for folder in dirs.values():
        folder.mkdir()
    y_test = np.repeat(np.arange(N), 10)
    y_ext = np.repeat(EXTERNAL_CLASSES, 10)
    for arm, seed in itertools.product(ARM_PARAMS, (0, 1)):
        test_pred, ext_pred = _predict(y_test, MISS_TEST[arm], seed), _predict(y_ext, MISS_EXTERNAL[arm], 10 + seed)
        document = {"arm": arm, "seed": seed, "model_version": "1", "test": _block(y_test, test_pred),
                    "external": {"clinic": _block(y_ext, ext_pred)}}
        (dirs["metrics"] / f"{arm}-s{seed}.json").write_text(json.dumps(document))
        _frame("ISIC", y_test, test_pred).to_csv(dirs["predictions"] / f"{arm}-s{seed}.csv", index=False)
        path = run_predictions_file(dirs["eval"], arm, seed, "clinic")
        path.parent.mkdir(parents=True)
        _frame("EXT", y_ext, ext_pred).to_csv(path, index=False)
        pd.DataFrame({"epoch": [1, 2, 3], "val_bal_acc": VAL[arm]}).to_csv(dirs["train"] / f"{arm}-s{seed}.csv",
                                                                          index=False)
    write_classes(dirs["external"], CLASSES)
    write_split(dirs["external"], "clinic", SplitArrays(np.zeros((len(y_ext), 2, 2, 3), np.uint8), y_ext,
                                                        np.array([f"EXT_{i:05d}" for i in range(len(y_ext))])))
    params = {"arms": ARM_PARAMS, "train": {**RECIPE, "seeds": [0, 1]},
              "evaluate": {"bootstrap_samples": 200, "ci_level": 0.95, "seed": 0, "external": {"clinic": "x"}},
              "mlflow": {"experiment": "external-compare"}}
    return {"dirs": dirs, "params": params, "root": tmp_path}


def _compare(world: dict, out: str, external: bool, histories: bool = True) -> tuple[str, dict]:
    d, params = world["dirs"], world["params"]
    if not external:
        params = {**params, "evaluate": {**params["evaluate"], "external": {}}}
    markdown = run_compare(make_config(params), d["metrics"], world["root"] / out, d["predictions"],
                           d["train"] if histories else None, external_dir=d["external"] if external else None,
                           eval_dir=d["eval"])
    return markdown, json.loads((world["root"] / out / "summary.json").read_text(), parse_constant=pytest.fail)


def test_compare_reports_the_external_set_beside_the_internal_test(tracking, compare_world):
    markdown, summary = _compare(compare_world, "with", external=True)
    plain_markdown, plain = _compare(compare_world, "without", external=False)
    root = compare_world["root"]
    # beside, never instead of: the internal report and summary are unchanged
    assert "external" not in plain
    assert {k: v for k, v in summary.items() if k != "external"} == plain
    assert markdown.startswith(plain_markdown)
    pd.testing.assert_frame_equal(pd.read_csv(root / "with" / "gan_vs_best.csv"),
                                  pd.read_csv(root / "without" / "gan_vs_best.csv"))
    # the external set's own arms table and verdicts (with mdd)
    clinic = summary["external"]["clinic"]
    assert clinic["n_images"] == 60 and clinic["test_counts"]["vasc"] == 0
    assert set(clinic["arms"]) == set(ARM_PARAMS) and clinic["arms"]["effnet"]["recall_vasc_mean"] is None
    verdicts = clinic["gan_vs_best"]["effnet_dcgan"]
    assert set(verdicts) == {"bal_acc", "recall_akiec", "recall_bcc", "recall_df", "recall_mel", "recall_vasc"}
    assert verdicts["recall_akiec"]["verdict"] == "better" and verdicts["recall_akiec"]["diff"] == pytest.approx(0.6)
    assert verdicts["recall_vasc"]["verdict"] == UNDEFINED and verdicts["recall_vasc"]["mdd"] is None
    assert verdicts["bal_acc"]["mdd"] > 0
    # the reference arm is chosen on val, never on the external set (where effnet_other is the best)
    assert {v["best_non_gan_arm"] for v in verdicts.values()} == {"effnet"}
    assert clinic["arms"]["effnet_other"]["bal_acc_mean"] > clinic["arms"]["effnet"]["bal_acc_mean"]
    folder = root / "with" / "external" / "clinic"
    for name in ("arms.csv", "runs.csv", "gan_vs_best.csv"):
        assert (folder / name).is_file(), name
    table = pd.read_csv(folder / "gan_vs_best.csv")
    assert set(table["best_non_gan_arm"]) == {"effnet"} and "mdd" in table.columns
    section = markdown[len(plain_markdown):]
    assert "## External test set `clinic` (60 images)" in section and "this set chooses nothing" in section
    assert "chosen on validation, not on test" in section and "MDD (80% power)" in section
    assert "Undefined on this set (a class it lacks): recall_vasc" in section
    assert (root / "with" / "comparison.md").read_text() == markdown
    run = mlflow.search_runs(experiment_names=["external-compare"], order_by=["start_time ASC"]).iloc[0]
    assert run["metrics.compare/external/clinic/effnet/bal_acc_mean"] == pytest.approx(
        clinic["arms"]["effnet"]["bal_acc_mean"])
    assert run["metrics.compare/external/clinic/effnet_dcgan/vs_best/bal_acc/mdd"] == pytest.approx(
        verdicts["bal_acc"]["mdd"])


def test_without_histories_the_external_comparator_is_the_internal_tests(tracking, compare_world):
    _, summary = _compare(compare_world, "test_rule", external=True, histories=False)
    internal = {m: v["best_non_gan_arm"] for m, v in summary["gan_vs_best"]["effnet_dcgan"].items()}
    external = {m: v["best_non_gan_arm"] for m, v in summary["external"]["clinic"]["gan_vs_best"]["effnet_dcgan"].items()}
    assert external == internal


def test_compare_refuses_a_run_evaluated_without_the_set(tracking, compare_world):
    path = compare_world["dirs"]["metrics"] / "effnet_other-s1.json"
    document = json.loads(path.read_text())
    del document["external"]
    path.write_text(json.dumps(document))
    with pytest.raises(DermaganError, match=r"effnet_other-s1.*no external\.clinic block.*evaluate@effnet_other-1"):
        _compare(compare_world, "stale", external=True)
    assert not (compare_world["root"] / "stale").exists()


def test_compare_refuses_external_predictions_that_disagree_with_the_metrics(tracking, compare_world):
    path = run_predictions_file(compare_world["dirs"]["eval"], "effnet", 0, "clinic")
    frame = pd.read_csv(path)
    frame["predicted"] = frame["actual"]
    frame.to_csv(path, index=False)
    with pytest.raises(DermaganError, match="external set 'clinic' in its predictions file and metrics file disagree"):
        _compare(compare_world, "stale", external=True)


# --- ensemble ------------------------------------------------------------------------------------------------

def test_ensemble_scores_every_combiner_on_the_external_set_with_the_val_weights(tmp_path):
    import test_ensemble as te
    from dermagan.ensemble.fit import COMBINERS
    from dermagan.ensemble.weights import combine
    from dermagan.stages.ensemble import run_ensemble

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        mp.chdir(tmp_path)
        prepared, external = tmp_path / "prepared", tmp_path / "external"
        prepared.mkdir()
        external.mkdir()
        train = te.split(6, 0, "TR")
        for name, arrays in (("train", train), ("val", te.split(5, 1, "VA")), ("test", te.split(5, 2, "TE"))):
            write_split(prepared, name, arrays)
        clinic = te.split(4, 3, "EX")
        keep = clinic.labels != CLASSES.index("vasc")
        write_split(external, "clinic", SplitArrays(clinic.images[keep], clinic.labels[keep], clinic.image_ids[keep]))
        write_classes(external, CLASSES)
        for arm, seed in itertools.product(te.ARMS, te.SEEDS):
            te.save_member(tmp_path / "models", arm, seed, train)

        def ensemble(name: str, sets: dict, external_dir):
            params = te.load_params(te.REPO / "params.yaml")  # test_ensemble's params, with evaluate.external
            params.update({"arms": {arm: {"extra": None} for arm in te.ARMS},
                           "evaluate": {"bootstrap_samples": 300, "ci_level": 0.95, "seed": 0, "batch_size": 64,
                                        "calibration_bins": 10, "external": sets},
                           "mlflow": {"experiment": "ensemble-external-test", "registered_model": te.NAME},
                           "ensemble": {"register": "auto", "stacking": {"iters": 500, "tol": 1e-10}}})
            params["train"] = {**params["train"], "seeds": list(te.SEEDS), "device": "cpu"}
            return run_ensemble(te.build_config(params), list(te.ARMS), list(te.SEEDS), prepared, tmp_path / "models",
                                tmp_path / name, tmp_path / f"{name}.json", tmp_path / f"{name}_predictions",
                                external_dir=external_dir)

        document = ensemble("with", {"clinic": "x"}, external)
        plain = ensemble("without", {}, None)
    assert "external" not in plain and not (tmp_path / "without" / "external").exists()
    for key in ("combiners", "best_single", "vs_best_single"):  # the internal results are unchanged
        assert document[key] == plain[key]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "with" / "weights.csv"),
                                  pd.read_csv(tmp_path / "without" / "weights.csv"))
    assert json.loads((tmp_path / "with.json").read_text())["external"] == document["external"]
    entry = document["external"]["clinic"]
    assert entry["n_images"] == int(keep.sum()) and entry["counts"]["vasc"] == 0
    assert set(entry["combiners"]) == set(COMBINERS)
    assert entry["best_single"]["arm"] == document["best_single"]["arm"]  # chosen on val, not here
    # each combiner's external predictions = argmax of its val-fitted weights applied to the members
    runs = pd.read_csv(tmp_path / "with" / "external" / "clinic" / "runs.csv")
    y = clinic.labels[keep]
    for combiner, seed in itertools.product(COMBINERS, te.SEEDS):
        w = np.array([document["combiners"][combiner]["weights"][f"s{seed}"][arm] for arm in te.ARMS])
        pred = combine(te.members_proba(tmp_path, seed, clinic.images[keep]), w / w.sum()).argmax(1)
        row = runs[(runs["combiner"] == combiner) & (runs["seed"] == seed)].iloc[0]
        assert row["bal_acc"] == pytest.approx(balanced_accuracy(y, pred, len(CLASSES)))
        assert np.isnan(row["recall_vasc"])
    assert {v["verdict"] for c in entry["vs_best_single"].values() for m, v in c.items() if m == "recall_vasc"} == {
        UNDEFINED}
    for name in ("combiners.csv", "members.csv", "vs_best_single.csv"):
        assert (tmp_path / "with" / "external" / "clinic" / name).is_file(), name
    report = (tmp_path / "with" / "report.md").read_text()
    assert report.startswith((tmp_path / "without" / "report.md").read_text().split("## Registered")[0])
    assert "## External test set `clinic`" in report and "the same val-fitted weights" in report

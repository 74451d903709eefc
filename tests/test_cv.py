"""``dermagan cv``: lesion-grouped K-fold of one arm on train + val, its report, MLflow runs and resume.

Tiny data made here: 16 px images whose colour gives the class away, two images per lesion, and
``simple_cnn`` trained for one short epoch per fold.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from dermagan.cli import main
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.data.prepared import SplitArrays, read_split_table, write_classes, write_split
from dermagan.errors import DermaganError
from dermagan.stages.cv import run_cv
from dermagan.tuning.classifier import folds
from dermagan.tuning.cv import fold_train_set
from params_util import full_params, make_config

torch.set_num_threads(1)

SIZE, K = 16, 3
COLOURS = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30], [230, 30, 230],
                    [30, 230, 230], [128, 128, 128]])


def write_prepared(root: Path, per_class: dict[str, int] | None = None, seed: int = 0) -> Path:
    """train/val/test .npz + splits.csv; every lesion has two images."""
    per_class = per_class or {"train": 8, "val": 4, "test": 2}
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, n = [], 0
    for split, count in per_class.items():
        labels = np.repeat(np.arange(len(CLASSES)), count)
        noise = rng.integers(-25, 25, (len(labels), SIZE, SIZE, 3))
        images = np.clip(COLOURS[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        ids = np.array([f"ISIC_{n + i:07d}" for i in range(len(labels))])
        rows += [{"image_id": image_id, "lesion_id": f"HAM_{split}_{CLASSES[label]}_{i // 2}",
                  "dx": CLASSES[label], "split": split} for i, (image_id, label) in enumerate(zip(ids, labels))]
        write_split(root, split, SplitArrays(images, labels.astype(np.int64), ids))
        n += len(labels)
    pd.DataFrame(rows).to_csv(root / "splits.csv", index=False)
    write_classes(root, CLASSES)
    return root


def make_params(lr: float = 3e-3) -> dict:
    """What these tests change in params.yaml (see make_config)."""
    train = {"pretrained": None, "patience": 100, "step_size": 1, "gamma": 0.5, "temperature_scaling": False,
             "seeds": [0], "device": "cpu", "max_batches_per_epoch": 2, "backbone": "simple_cnn", "epochs": 1,
             "batch_size": 16, "lr": lr, "weight_decay": 0.0, "lr_schedule": "none", "warmup_epochs": 0.0,
             "label_smoothing": 0.0, "class_weight_power": 0.0, "sampler": "shuffle", "augment": False,
             "augment_strength": 0.0, "dropout": 0.0, "drop_path": 0.0, "tta": "none"}
    return {
        "prepare": {"image_size": SIZE, "min_image_side": SIZE},
        "train": train,
        "augment": {"hflip": True, "vflip": True, "rot90": True, "rotation_degrees": 30, "crop_scale": [0.6, 1.0],
                    "brightness": 0.2, "contrast": 0.2, "saturation": 0.2},
        "arms": {"cnn": {"extra": None}, "cnn_ros": {"extra": "oversample"},
                 "cnn_gan": {"extra": "stgan/dedup"}, "cnn_experts": {"extra": None, "experts": {"method": "stgan"}}},
        "gan": {"classes": ["df", "vasc"], "amount": {"mode": "count", "value": 5}, "seed": 0},
        "mlflow": {"experiment": "cv-test"},
        "cv": {"folds": K, "seed": 0},
    }


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    root = write_prepared(tmp_path / "prepared")
    (root / "test.npz").unlink()  # cv must never need (or read) the test split
    return root


def pool_table(prepared: Path) -> pd.DataFrame:
    table = read_split_table(prepared).set_index("image_id")
    return table[table["split"] != "test"]


def test_folds_never_share_a_lesion_and_every_image_is_validated_once(prepared):
    pool = pool_table(prepared)
    assert pool["lesion_id"].value_counts().min() == 2  # grouping matters: every lesion has two images
    seen = []
    for train, val in folds(prepared, "kfold", K, seed=0):
        tr = set(pool.loc[train.image_ids.astype(str), "lesion_id"])
        va = set(pool.loc[val.image_ids.astype(str), "lesion_id"])
        assert tr.isdisjoint(va)
        assert tr | va == set(pool["lesion_id"])
        assert len(train) + len(val) == len(pool)
        seen += list(val.image_ids.astype(str))
    assert sorted(seen) == sorted(pool.index)  # each train+val image in exactly one validation fold


def test_oversample_copies_come_from_the_folds_train_part_only(prepared):
    gan = make_config(make_params()).gan.plain()
    for f, (train, val) in enumerate(folds(prepared, "kfold", K, seed=0)):
        full = fold_train_set(train, "oversample", gan, CLASSES)
        assert len(full) == len(train) + 10  # 5 copies of df and of vasc
        assert np.array_equal(full.images[: len(train)], train.images)  # the real part is unchanged
        copies = full.image_ids[len(train):].astype(str)
        assert all(c.startswith("copy:") for c in copies)
        sources = np.array([c.removeprefix("copy:") for c in copies])
        train_ids, val_ids = train.image_ids.astype(str), set(val.image_ids.astype(str))
        assert set(sources) <= set(train_ids) and not set(sources) & val_ids
        position = {i: k for k, i in enumerate(train_ids)}
        for k, source in enumerate(sources):  # a copy is its source's pixels and label
            j = position[source]
            assert np.array_equal(full.images[len(train) + k], train.images[j])
            assert full.labels[len(train) + k] == train.labels[j]
        counts = np.bincount(full.labels[len(train):], minlength=len(CLASSES))
        assert counts[CLASSES.index("df")] == counts[CLASSES.index("vasc")] == 5 and counts.sum() == 10
        assert fold_train_set(train, None, gan, CLASSES) is train


def test_gan_and_expert_arms_are_refused_before_any_data_is_read(tmp_path):
    params = make_config(make_params())
    missing = tmp_path / "nothing-here"
    with pytest.raises(DermaganError, match=r"arm 'cnn_gan' trains on GAN images .*stgan/dedup.*whole train "
                                            r"split.*validation folds"):
        run_cv(params, "cnn_gan", missing)
    with pytest.raises(DermaganError, match=r"arm 'cnn_experts' uses class experts.*whole train split"):
        run_cv(params, "cnn_experts", missing)
    with pytest.raises(DermaganError, match="unknown arm 'nope'"):
        run_cv(params, "nope", missing)
    with pytest.raises(DermaganError, match="at least 2 folds"):
        run_cv(params, "cnn", missing, n_folds=1)


def test_cv_writes_the_report_and_a_parent_run_with_nested_fold_runs(prepared, tracking, tmp_path, capsys):
    summary = run_cv(make_config(make_params()), "cnn", prepared, checkpoints=tmp_path / "checkpoints")
    out = tmp_path / "reports" / "cv" / f"cnn-k{K}"  # default: reports/cv/<arm>-k<K> (cwd is tmp_path)
    table = pd.read_csv(out / "folds.csv")
    assert list(table["fold"]) == list(range(K))
    assert {"n_train", "n_val", "lesions_val", "bal_acc", "best_epoch", *(f"recall_{c}" for c in CLASSES)} \
        <= set(table.columns)
    pool = pool_table(prepared)
    assert table["n_val"].sum() == len(pool) and table["lesions_val"].sum() == pool["lesion_id"].nunique()
    assert (table["n_train"] + table["n_val"] == len(pool)).all() and (table["n_extra"] == 0).all()
    assert table["best_epoch"].tolist() == [1] * K
    doc = json.loads((out / "summary.json").read_text())
    assert doc == summary | {"recall_mean": doc["recall_mean"]}  # (the file holds the same numbers)
    assert doc["folds"] == K and doc["seed"] == 0 and doc["arm"] == "cnn" and doc["complete"]
    assert doc["bal_acc_per_fold"] == pytest.approx(table["bal_acc"].tolist())
    assert doc["bal_acc_mean"] == pytest.approx(table["bal_acc"].mean())
    assert doc["bal_acc_std"] == pytest.approx(table["bal_acc"].std(ddof=1))
    assert doc["recipe"]["backbone"] == "simple_cnn" and doc["resumed_folds"] == []
    assert (out / "folds.png").stat().st_size > 0
    assert not (tmp_path / "checkpoints" / "cv" / f"cnn-k{K}").exists()  # resume files go once done
    printed = capsys.readouterr().out
    assert all(f"fold {f} ({f + 1} of {K}): bal_acc" in printed for f in range(K))

    client = mlflow.MlflowClient()
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.info.run_name == f"cnn-k{K}"
    assert parent.data.tags["stage"] == "cv" and parent.data.tags["arm"] == "cnn"
    assert parent.data.tags["folds"] == str(K)
    assert parent.data.metrics["cv/bal_acc_mean"] == pytest.approx(doc["bal_acc_mean"])
    assert parent.data.metrics["cv/bal_acc_std"] == pytest.approx(doc["bal_acc_std"])
    assert "figures/cv_folds.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["fold"] for r in children) == [str(f) for f in range(K)]
    for run in children:
        f = int(run.data.tags["fold"])
        assert run.data.tags["stage"] == "cv-fold"
        assert run.data.metrics["bal_acc"] == pytest.approx(table.loc[f, "bal_acc"])
        assert run.data.params["n_val"] == str(table.loc[f, "n_val"])
        assert "val/bal_acc" in run.data.metrics  # the fold's per-epoch curve


def test_a_stopped_run_resumes_and_skips_finished_folds(prepared, tracking, tmp_path, capsys):
    params, checkpoints, out = make_config(make_params()), tmp_path / "checkpoints", tmp_path / "report"
    resume = checkpoints / "cv" / f"cnn_ros-k{K}"
    partial = run_cv(params, "cnn_ros", prepared, out, checkpoints, max_folds=1)
    assert not partial["complete"] and partial["finished_folds"] == 1 and not out.exists()
    assert sorted(p.name for p in resume.glob("fold*")) == ["fold0.json"]  # no epoch checkpoint left behind
    fold0 = json.loads((resume / "fold0.json").read_text())
    assert fold0["n_extra"] == 10 and fold0["fold"] == 0

    # another configuration: the finished fold is not reused
    changed = make_config(make_params(lr=1e-3))
    run_cv(changed, "cnn_ros", prepared, out, checkpoints, max_folds=1)
    assert "another configuration (changed: ['recipe'])" in capsys.readouterr().out
    assert json.loads((resume / "fold0.json").read_text())["seconds"] != fold0["seconds"]
    # ... and back to the first configuration: starts over again, stops after fold 0
    run_cv(params, "cnn_ros", prepared, out, checkpoints, max_folds=1)
    fold0 = json.loads((resume / "fold0.json").read_text())
    capsys.readouterr()

    # the command line continues it (reads params from a file, like `dermagan cv --arm ... --folds ...`)
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(full_params(make_params())))
    code = main(["cv", "--params", str(tmp_path / "params.yaml"), "--arm", "cnn_ros", "--folds", str(K),
                 "--prepared", str(prepared), "--out", str(out), "--checkpoints", str(checkpoints)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "resuming: fold(s) [0] finished earlier" in printed and "fold 0 (1 of 3): bal_acc" in printed
    assert "finished earlier" in printed.split("fold 0 (1 of 3)")[1].splitlines()[0]
    doc = json.loads((out / "summary.json").read_text())
    assert doc["resumed_folds"] == [0] and doc["complete"]
    assert doc["bal_acc_per_fold"][0] == pytest.approx(fold0["bal_acc"])
    table = pd.read_csv(out / "folds.csv")
    assert (table["n_extra"] == 10).all()
    assert not resume.exists()

    client = mlflow.MlflowClient()
    parent = client.get_run(doc["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["cv_state"] == "complete"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["fold"] for r in children) == ["0", "1", "2"]  # fold 0 logged once, not again
    assert fold0["run_id"] in {r.info.run_id for r in children}
    abandoned = client.search_runs([parent.info.experiment_id], "tags.cv_state LIKE 'abandoned%'")
    assert len(abandoned) == 2  # the two runs whose configuration was replaced


@pytest.mark.slow  # two CLI processes (imports alone take ~10 s each here)
def test_a_killed_run_keeps_its_finished_folds(prepared, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    params = full_params(make_params())
    params["train"]["epochs"] = 30  # a few seconds per fold, so the kill lands inside one
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "OMP_NUM_THREADS": "1",
           "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1", "MLFLOW_ENABLE_ASYNC_LOGGING": "false"}
    cmd = [str(Path(sys.executable).parent / "dermagan"), "cv", "--arm", "cnn", "--prepared", str(prepared)]
    resume = tmp_path / "checkpoints" / "cv" / f"cnn-k{K}"
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and first.poll() is None:
            time.sleep(0.02)
            # fold 0 finished and fold 1 has written an epoch checkpoint: kill it inside fold 1
            if (resume / "fold0.json").exists() and (resume / "fold1.pt").exists():
                os.kill(first.pid, signal.SIGKILL)
                break
        first.wait(30)
        output = first.stdout.read().decode()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == -signal.SIGKILL, output[-3000:]
    assert not (resume / "fold2.json").exists()
    fold0 = json.loads((resume / "fold0.json").read_text())
    parent = json.loads((resume / "state.json").read_text())["parent_run_id"]

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming: fold(s) [0] finished earlier" in second.stdout
    fold1 = next(line for line in second.stdout.splitlines() if "fold 1 (2 of 3)" in line)
    assert "resumed from its checkpoint at epoch" in fold1  # fold 1 went on from its last epoch
    doc = json.loads((tmp_path / "reports" / "cv" / f"cnn-k{K}" / "summary.json").read_text())
    assert doc["resumed_folds"] == [0] and doc["bal_acc_per_fold"][0] == pytest.approx(fold0["bal_acc"])
    assert doc["mlflow_run_id"] == parent  # the killed run's parent run is finished, not a new one
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    assert client.get_run(parent).info.status == "FINISHED"
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.data.tags["fold"] for r in children) == ["0", "1", "2"]

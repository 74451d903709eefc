"""Optuna tuning: objective + pruning, nested MLflow runs, resume after a kill, the tuned-params
file, lesion-grouped K-fold, PostgreSQL with two workers, and optuna-dashboard.

Everything runs on tiny data the tests write themselves: 16 px images whose colour gives the class
away, so a usable learning rate scores far above a useless one after one epoch (that is what makes
the median pruner's decisions predictable), and ``simple_cnn`` trains a trial in well under a second.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from optuna.trial import TrialState

from dermagan.classify.recipe import train_config
from dermagan.config import Config, build_config, load_params
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.data.prepared import SplitArrays, read_split_table, write_classes, write_split
from dermagan.errors import DermaganError
from dermagan.stages.tune import apply_best, run_tune, tune_block
from dermagan.tuning.classifier import folds
from dermagan.tuning.targets import study_config
from dermagan.tuning.study import PARENT_ATTR, make_storage

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
SIZE = 16
GOOD_LR, BAD_LR = 3e-3, 1e-6
EARLIER_STUDY = {"lr": 1e-3, "weight_decay": 0.0}  # the tuned-params file of the tests' Configs
# one clearly different colour per class (7 classes)
COLOURS = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30], [230, 30, 230],
                    [30, 230, 230], [128, 128, 128]])
QUIET = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1",
         "GX_ANALYTICS_ENABLED": "False", "DVC_NO_ANALYTICS": "1", "MLFLOW_ENABLE_ASYNC_LOGGING": "false"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is fastest and leaves the other core alone."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- tiny data and params -----------------------------------------------------------------------

def write_prepared(root: Path, train: int = 8, val: int = 4, test: int = 2, seed: int = 0) -> Path:
    """A prepared folder (train/val/test .npz + splits.csv) where every lesion has two images."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, n = [], 0
    for split, per_class in (("train", train), ("val", val), ("test", test)):
        labels = np.repeat(np.arange(len(CLASSES)), per_class)
        noise = rng.integers(-25, 25, (len(labels), SIZE, SIZE, 3))
        images = np.clip(COLOURS[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        ids = np.array([f"ISIC_{n + i:07d}" for i in range(len(labels))])
        for i, (image_id, label) in enumerate(zip(ids, labels)):
            rows.append({"image_id": image_id, "lesion_id": f"HAM_{split}_{CLASSES[label]}_{i // 2}",
                         "dx": CLASSES[label], "split": split})
        write_split(root, split, SplitArrays(images, labels.astype(np.int64), ids))
        n += len(labels)
    pd.DataFrame(rows).to_csv(root / "splits.csv", index=False)
    write_classes(root, CLASSES)
    return root


def repository_params() -> dict:
    """The repository's params.yaml with its tuned values inlined (no tuned-params files named)."""
    params = load_params(REPO / "params.yaml")
    return {k: v for k, v in params.items() if k not in ("tuned", "tuned_params", "tuned_gan_params")}


def base_params(tmp: Path, space: dict, epochs: int = 2, study: str = "tiny", objective: str = "holdout",
                enqueue: list | None = None, pruner: dict | None = None, n_trials: int = 4) -> dict:
    """A complete params.yaml for the tuner, with the searched keys left out of ``train``."""
    train = {"pretrained": None, "patience": 100, "step_size": 1, "gamma": 0.5, "temperature_scaling": False,
             "seeds": [0], "device": "cpu", "max_batches_per_epoch": 3, "backbone": "simple_cnn",
             "epochs": epochs, "batch_size": 16, "lr": GOOD_LR, "weight_decay": 0.0, "lr_schedule": "none",
             "warmup_epochs": 0.0, "label_smoothing": 0.0, "class_weight_power": 0.0, "sampler": "shuffle",
             "augment": False, "augment_strength": 0.0, "dropout": 0.0, "drop_path": 0.0, "tta": "none"}
    params = repository_params()  # the blocks the tuner does not read (validate, evaluate, gan, ...) as shipped
    return {
        **params,
        "prepare": {"image_size": SIZE, "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0, "min_image_side": SIZE},
        "train": {k: v for k, v in train.items() if k not in space},
        "augment": {"hflip": True, "vflip": True, "rot90": True, "rotation_degrees": 30, "crop_scale": [0.6, 1.0],
                    "brightness": 0.2, "contrast": 0.2, "saturation": 0.2},
        "tuned_params": "params/tuned.yaml",
        "arms": {"cnn": {"extra": None}},
        "mlflow": {**params["mlflow"], "experiment": "dermagan-test"},
        "tune": {**params["tune"], "experiment": "tune-test", "dir": str(tmp / "tuning"), "storage": None,
                 "classifier": {"study": study, "objective": objective, "kfold_splits": 3, "n_trials": n_trials,
                                "timeout_minutes": 60, "seed": 0, "n_startup_trials": 2,
                                "pruner": pruner or {"kind": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
                                "enqueue": enqueue or [], "space": space}},
    }


def config_of(params: dict, tuned: dict | None = None) -> Config:
    """The Config the CLI builds from ``params`` plus a tuned-params file holding ``tuned`` (``train`` values;
    default: a value for each searched key, as an earlier study would have written)."""
    if tuned is None:
        tuned = {k: EARLIER_STUDY[k] for k in params["tune"]["classifier"]["space"]}
    merged = copy.deepcopy(params)
    merged["train"] = {**merged["train"], **tuned}
    return build_config(merged)


def write_params(root: Path, params: dict, tuned: dict) -> Path:
    """params.yaml plus params/tuned.yaml (the tuned block) in ``root``; returns params.yaml's path."""
    (root / "params").mkdir(parents=True, exist_ok=True)
    (root / "params" / "tuned.yaml").write_text(yaml.safe_dump({"train": tuned}))
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_with(tracking_uri: str) -> dict:
    return {**os.environ, **QUIET, "MLFLOW_TRACKING_URI": tracking_uri}


def tune_command(params: Path, prepared: Path, storage: str, n_trials: int, report: str = "report",
                 worker_index: int = 0) -> list[str]:
    return [str(BIN / "dermagan"), "tune", "classifier", "--params", str(params), "--prepared", str(prepared),
            "--storage", storage, "--n-trials", str(n_trials), "--report", report, "--worker-index", str(worker_index)]


def load(name: str, storage) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


# --- one real study (objective, pruning, MLflow), shared by several tests -------------------------

SPACE = {"lr": {"choices": [BAD_LR, GOOD_LR]}, "weight_decay": {"float": [0.0, 0.01]}}
# Trial order is forced: a good trial completes, a bad one is then below the median at step 1.
ENQUEUE = [{"lr": GOOD_LR, "weight_decay": 0.0}, {"lr": BAD_LR, "weight_decay": 0.005},
           {"lr": GOOD_LR, "weight_decay": 0.001}, {"lr": BAD_LR, "weight_decay": 0.0}]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """run_tune on a 4-trial study with a median pruner, in a throw-away MLflow store."""
    tmp = tmp_path_factory.mktemp("tuned")
    prepared = write_prepared(tmp / "prepared")
    params = base_params(tmp, SPACE, epochs=2, enqueue=ENQUEUE)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(tmp)
        summary = run_tune(config_of(params), "classifier", prepared, tmp / "report")
        cfg = study_config(tune_block(config_of(params)), "classifier")
        study = load(cfg.name, make_storage(cfg.storage))
        mlflow.set_tracking_uri(uri)
        yield {"tmp": tmp, "params": params, "summary": summary, "study": study, "cfg": cfg, "uri": uri,
               "prepared": prepared, "client": mlflow.MlflowClient(uri)}


def test_objective_reports_every_epoch_and_the_median_pruner_prunes(tuned):
    study, summary = tuned["study"], tuned["summary"]
    trials = study.get_trials()
    assert [t.params["lr"] for t in trials] == [e["lr"] for e in ENQUEUE]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE,
                                         TrialState.PRUNED]
    for t in trials:
        if t.state == TrialState.COMPLETE:  # one intermediate value per epoch, steps 1..epochs
            assert sorted(t.intermediate_values) == [1, 2]
            assert t.value == pytest.approx(max(t.intermediate_values.values()))
            assert t.user_attrs["fold_scores"] == [pytest.approx(t.value)]
        else:  # pruned right after the first epoch: below the completed trial's value at step 1
            assert sorted(t.intermediate_values) == [1]
            assert t.intermediate_values[1] < trials[0].intermediate_values[1]
            assert t.user_attrs["steps_run"] == 1 and t.user_attrs["planned_steps"] == 2
    assert trials[0].value > 0.5  # the colours are learnable with the good lr
    assert summary["states"] == {"complete": 2, "pruned": 2}
    assert summary["best_params"]["lr"] == GOOD_LR
    report = tuned["tmp"] / "report"
    assert json.loads((report / "summary.json").read_text())["trials"] == 4
    assert len(pd.read_csv(report / "trials.csv")) == 4


def test_trial_runs_are_nested_under_the_study_parent_run(tuned):
    study, client = tuned["study"], tuned["client"]
    parent = study.user_attrs[PARENT_ATTR]
    for t in study.get_trials():
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["optuna_trial"] == str(t.number)
        assert run.data.tags["optuna_state"] == t.state.name
        assert "objective/intermediate" in run.data.metrics
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert run.data.metrics["trials_pruned"] == 2
    assert run.data.tags["best.lr"] == str(GOOD_LR)
    assert run.data.tags["best_trial"] == str(study.best_trial.number)
    figures = {Path(a.path).name for a in client.list_artifacts(parent, "figures")}
    assert {"optimization_history.png", "param_importances.png", "parallel_coordinate.png"} <= figures
    # one parent run per study in the experiment
    parents = client.search_runs([run.info.experiment_id], "tags.stage = 'tune'")
    assert [r.info.run_id for r in parents] == [parent]


def test_workers_that_start_together_agree_on_one_parent_run(tracking, tmp_path, monkeypatch):
    """Two workers both find no parent run and each create one: they must end up with the same one."""
    from dermagan.tracking.setup import configure
    from dermagan.tuning import study as study_module

    params = base_params(tmp_path, {"lr": {"float": [1e-3, 5e-3]}}, study="race")
    cfg = study_config(tune_block(config_of(params)), "classifier")
    configure(cfg.experiment)
    handles = [study_module.open_study(cfg) for _ in range(2)]  # two workers' views of one study
    both_read = threading.Barrier(2)
    create_run = mlflow.MlflowClient.create_run

    def create_after_both_read(self, *args, **kwargs):
        both_read.wait(30)  # neither has written the study attribute yet
        return create_run(self, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "create_run", create_after_both_read)
    ids: list = [None, None]
    threads = [threading.Thread(target=lambda i=i: ids.__setitem__(i, study_module.parent_run_id(handles[i], cfg)))
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert ids[0] is not None and ids[0] == ids[1] == handles[0].user_attrs[PARENT_ATTR]
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(cfg.experiment).experiment_id
    assert [r.info.run_id for r in client.search_runs([experiment], "tags.stage = 'tune'")] == [ids[0]]


# --- resume after a kill ----------------------------------------------------------------------------

@pytest.mark.slow  # two CLI processes (imports alone take ~10 s each here)
def test_killed_study_resumes_with_the_same_study_and_parent_run(tmp_path):
    prepared = write_prepared(tmp_path / "prepared")
    # slower trials (60 short epochs, none pruned) so the kill lands inside one: with pruning, trials 1-3
    # stop after their first epoch and the window between a finished and a running trial is a few ms
    params = write_params(tmp_path, base_params(tmp_path, {"lr": {"float": [1e-3, 5e-3], "log": True}}, epochs=60,
                                                study="resume", pruner={"kind": "none"}), {"lr": 0.001})
    journal = tmp_path / "tuning" / "resume.journal"
    env = env_with(f"sqlite:///{tmp_path / 'mlflow.db'}")
    cmd = tune_command(params, prepared, str(journal), n_trials=4)
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, victim = time.time() + 180, None
        while time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
            if not journal.exists():
                continue
            try:
                study = load("resume", make_storage(str(journal)))
            except KeyError:  # not created yet
                continue
            finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
            running = [t for t in study.get_trials(states=(TrialState.RUNNING,))
                       if t.user_attrs.get("pid") == first.pid and t.user_attrs.get("mlflow_run_id")]
            if finished and running:
                os.kill(first.pid, signal.SIGKILL)
                victim = running[0].number
                break
        first.wait(30)
        output = first.stdout.read().decode()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert victim is not None, f"no finished trial plus a running one within 180 s:\n{output[-3000:]}"
    assert first.returncode == -signal.SIGKILL
    before = load("resume", make_storage(str(journal)))
    done_before = {t.number for t in before.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))}
    parent = before.user_attrs[PARENT_ATTR]
    assert before.trials[victim].state == TrialState.RUNNING

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"marked trial(s) [{victim}] of a killed run as FAIL" in second.stdout
    after = load("resume", make_storage(str(journal)))
    assert after.trials[victim].state == TrialState.FAIL
    done_after = {t.number for t in after.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))}
    assert done_before < done_after and len(done_after) == 4
    assert after.user_attrs[PARENT_ATTR] == parent
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    pids = set()
    for number in done_after - done_before:  # trials of the second process: same parent run
        trial = after.trials[number]
        pids.add(trial.user_attrs["pid"])
        assert client.get_run(trial.user_attrs["mlflow_run_id"]).data.tags["mlflow.parentRunId"] == parent
    assert pids and first.pid not in pids
    assert client.get_run(parent).info.status == "FINISHED"
    experiment = client.get_experiment_by_name("tune-test").experiment_id
    assert [r.info.run_id for r in client.search_runs([experiment], "tags.stage = 'tune'")] == [parent]


# --- the tuned-params file -----------------------------------------------------------------------

def test_applied_best_values_are_what_train_reads(tuned, tmp_path):
    summary, params = tuned["summary"], dict(tuned["params"])
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    assert "lr" not in params["train"] and "weight_decay" not in params["train"]
    written = apply_best(params_path, config_of(params), "classifier", summary)
    assert written == tmp_path / "params" / "tuned.yaml"
    text = written.read_text()
    assert "lr: 0.003  # tuned" in text and "Study 'tiny'" in text
    merged = load_params(params_path)
    best = summary["best_params"]
    assert merged["train"]["lr"] == best["lr"] and merged["train"]["weight_decay"] == best["weight_decay"]
    assert sorted(merged["tuned"]["keys"]) == ["train.lr", "train.weight_decay"]
    assert merged["tuned"]["study"]["best_trial"] == summary["best_trial"]
    config = build_config(merged)
    cfg = train_config(config.recipe("cnn"), 0, config.augment.plain(), config.train.max_batches_per_epoch)
    assert cfg.lr == best["lr"] and cfg.weight_decay == pytest.approx(best["weight_decay"])
    assert cfg.epochs == params["train"]["epochs"] and cfg.augment is None

    # a searched key also set in params.yaml: apply refuses and names it
    clash = {**params, "train": {**params["train"], "lr": 0.01}}
    params_path.write_text(yaml.safe_dump(clash, sort_keys=False))
    with pytest.raises(DermaganError, match=r"train\.lr is searched by the study but also set"):
        apply_best(params_path, config_of(clash), "classifier", summary)
    # ... and the loader refuses the key being in both files
    with pytest.raises(DermaganError, match=r"train\.lr is set in both"):
        load_params(params_path)


def test_apply_refuses_a_study_without_completed_trials(tuned, tmp_path):
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(tuned["params"]))
    with pytest.raises(DermaganError, match="no completed feasible trial"):
        apply_best(params_path, config_of(tuned["params"]), "classifier", {**tuned["summary"], "best_params": {}})


def test_dvc_status_sees_a_rewritten_tuned_file(tuned, tmp_path):
    dvc, git = str(BIN / "dvc"), shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    env = {**os.environ, **QUIET}
    repo = tmp_path / "repo"
    repo.mkdir()

    def run(*cmd):
        done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{cmd}: {done.stdout}\n{done.stderr}"
        return done.stdout

    run(git, "init", "-q")
    run(dvc, "init", "-q")
    params = tuned["params"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"recipe": {
        "cmd": "cp params/tuned.yaml recipe.txt", "params": [{"params/tuned.yaml": ["train"]}],
        "outs": ["recipe.txt"]}}}))
    summary = tuned["summary"]
    apply_best(repo / "params.yaml", config_of(params), "classifier", summary)
    run(dvc, "repro", "-q")
    assert json.loads(run(dvc, "status", "--json") or "{}") == {}
    other = {**summary, "best_params": {**summary["best_params"], "lr": 0.002}}
    apply_best(repo / "params.yaml", config_of(params), "classifier", other)
    status = json.loads(run(dvc, "status", "--json"))
    changed = [entry["changed deps"] for entry in status["recipe"] if "changed deps" in entry]
    assert changed == [{"params/tuned.yaml": {"train": "modified"}}], status


# --- K-fold --------------------------------------------------------------------------------------

def test_kfold_keeps_lesions_together_and_never_reads_test(tmp_path, monkeypatch):
    prepared = write_prepared(tmp_path / "prepared", train=9, val=6)
    table = read_split_table(prepared).set_index("image_id")
    pool = table[table["split"] != "test"]
    assert pool["lesion_id"].value_counts().max() >= 2  # lesions with several images
    pairs = folds(prepared, "kfold", 3, seed=0)
    assert len(pairs) == 3
    seen_val = []
    for train, val in pairs:
        tr = set(table.loc[train.image_ids.astype(str), "lesion_id"])
        va = set(table.loc[val.image_ids.astype(str), "lesion_id"])
        assert not tr & va
        assert tr | va == set(pool["lesion_id"])
        assert len(train) + len(val) == len(pool)
        seen_val += list(val.image_ids.astype(str))
    assert sorted(seen_val) == sorted(pool.index)  # every image is validated exactly once
    assert len(folds(prepared, "holdout", 3, seed=0)) == 1

    (prepared / "test.npz").unlink()  # the objective must not need the test split
    assert len(folds(prepared, "kfold", 3, seed=0)) == 3
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    params = base_params(tmp_path, {"lr": {"float": [1e-3, 5e-3], "log": True}}, epochs=1, study="kfold",
                         objective="kfold", n_trials=1)
    summary = run_tune(config_of(params), "classifier", prepared, tmp_path / "report")
    study = load("kfold", make_storage(str(tmp_path / "tuning" / "kfold.journal")))
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and summary["states"] == {"complete": 1}
    assert sorted(trial.intermediate_values) == [1, 101, 201]  # step 100 * fold + epoch
    assert len(trial.user_attrs["fold_scores"]) == 3
    assert trial.value == pytest.approx(np.mean(trial.user_attrs["fold_scores"]))


def test_unknown_objective_is_refused(tmp_path):
    prepared = write_prepared(tmp_path / "prepared", train=2, val=2, test=1)
    with pytest.raises(DermaganError, match="objective must be one of"):
        folds(prepared, "loo", 3, seed=0)


# --- PostgreSQL: two workers on one study ---------------------------------------------------------

def postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        on_path = shutil.which("pg_ctl")
        if on_path is None:
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; .ci/run installs them with "
                        "`apt-get install -y postgresql`")
        return Path(on_path).parent
    return found[-1].parent


@contextlib.contextmanager
def throwaway_postgres():
    """A PostgreSQL cluster in a temporary folder on a free 127.0.0.1 port; yields the port."""
    bindir = postgres_bin()
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:  # initdb refuses root: run the server as the package's `postgres` user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the test server as")
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root without `runuser` to start the test server as `postgres`")
        as_user = [runuser, "-u", "postgres", "--"]
    # not under pytest's tmp_path: that is private to root and the server user must reach it
    root = Path(tempfile.mkdtemp(prefix="dermagan-pg-"))
    data, sockets, port = root / "data", root / "sock", free_port()
    sockets.mkdir()
    if owner:
        for path in (root, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def pg(*args, check=True):
        done = subprocess.run([*as_user, *map(str, args)], capture_output=True, text=True, timeout=120)
        if check and done.returncode:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stdout}\n{done.stderr}")
        return done

    started = False
    try:
        try:
            pg(bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
            pg(bindir / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-t", "60", "-o",
               f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
            started = True
            pg(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "optuna")
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            pytest.skip(f"could not start a throw-away PostgreSQL server: {exc}\n{log[-2000:]}")
        yield port
    finally:
        if started:
            pg(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow  # two CLI processes (imports alone take ~10 s each here)
def test_two_workers_share_one_study_in_postgresql(tmp_path):
    prepared = write_prepared(tmp_path / "prepared")
    params = write_params(tmp_path, base_params(tmp_path, {"lr": {"float": [1e-3, 5e-3], "log": True}}, epochs=25,
                                                study="pg"), {"lr": 0.001})
    env = env_with(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # create the MLflow DB first: two processes migrating one fresh sqlite file race each other
    mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).search_experiments()
    with throwaway_postgres() as port:
        url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
        # own report folders: two workers finishing together would replace one folder at once
        commands = [tune_command(params, prepared, url, n_trials=4, report=f"report-{i}", worker_index=i)
                    for i in range(2)]
        workers = [subprocess.Popen(commands[i],
                                    cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                   for i in range(2)]
        try:
            outputs = [w.communicate(timeout=400)[0] for w in workers]
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
        for w, out in zip(workers, outputs):
            assert w.returncode == 0, out[-4000:]
        study = load("pg", url)
        finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
        assert len(finished) >= 4
        assert len(study.get_trials(states=(TrialState.RUNNING,))) == 0
        pids = {t.user_attrs["pid"] for t in study.trials}
        assert pids == {w.pid for w in workers}, f"trials by {pids}, workers {[w.pid for w in workers]}"
        assert len({t.number for t in study.trials}) == len(study.trials)
        # different worker indices seed different samplers: no trial repeats another's values
        assert len({t.params["lr"] for t in study.trials}) == len(study.trials)
        # every trial run is nested under the one parent run the study names
        parent = study.user_attrs[PARENT_ATTR]
        client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
        parents = {client.get_run(t.user_attrs["mlflow_run_id"]).data.tags["mlflow.parentRunId"]
                   for t in study.trials}
        assert parents == {parent}


# --- optuna-dashboard ------------------------------------------------------------------------------

def test_optuna_dashboard_serves_the_journal_storage(tuned):
    journal = Path(tuned["cfg"].storage)
    assert journal.is_file() and journal.suffix == ".journal"
    port = free_port()
    cmd = [str(BIN / "optuna-dashboard"), str(journal), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env={**os.environ, **QUIET}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        status, deadline = None, time.time() + 30
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    status = response.status
                break
            except OSError:
                time.sleep(0.25)
        assert status == 200, proc.stdout.read().decode()[-2000:] if proc.poll() is not None else status
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as response:
            studies = json.loads(response.read())["study_summaries"]
        assert [s["study_name"] for s in studies] == [tuned["cfg"].name]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

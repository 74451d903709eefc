"""`dermagan tune gan`: the STGAN stage-2 study on real-only val recall, its constraint, and --apply."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from conftest import make_ham_folder
from dermagan.classify.models import create_classifier
from dermagan.config import Config, build_config, load_params
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.data.prepare import PrepareConfig, prepare_dataset
from dermagan.errors import DermaganError
from dermagan.gan.diffaugment import POLICIES, diff_augment
from dermagan.gan.generate import method_counts
from dermagan.stages.domain_encoder import run_domain_encoder
from dermagan.stages.train_stgan import run_stgan_base
from dermagan.stages.tune import apply_best, run_tune
from dermagan.tuning.gan import feasibility, stage2_overrides
from dermagan.tuning.study import StudyConfig, make_storage, study_summary

SIZE = 32
REPO = Path(__file__).resolve().parents[1]
EARLIER_STUDY = {"df": {"total_images": 16}, "vasc": {}}  # gan.stgan_tuned of the tests' tuned-GAN file


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_params(root: Path) -> dict:
    """The repository's params (tuned values inlined) with a tiny STGAN and GAN study."""
    repo = {k: v for k, v in load_params(REPO / "params.yaml").items() if k != "tuned"}
    return {
        **repo,
        "prepare": {**repo["prepare"], "image_size": SIZE},
        "train": {**repo["train"], "device": "cpu"},
        "tuned_params": "params/tuned.yaml",
        "tuned_gan_params": "params/tuned_gan.yaml",
        "fidelity": {**repo["fidelity"], "domain_encoder": {"epochs": 1, "batch_size": 16, "lr": 0.002, "seed": 0}},
        "gan": {"classes": ["df", "vasc"], "amount": {"mode": "count", "value": 3}, "candidates_factor": 1.0,
                "generate_seed": 3, "experiment": "stgan-test",
                "stgan": {"net": {"discriminator": "projected", "feature_size": None, "conditional": False,
                                  "latent_dim": 8, "ngf": 8, "ndf": 8, "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.0,
                                  "beta2": 0.99, "batch_size": 4, "diffaugment": "color,translation,cutout",
                                  "aux_weight": 1.0, "grid_size": 4, "seed": 0},
                          "stage1": {"total_images": 8, "ema_half_life_images": 8, "freeze_d_blocks": 0,
                                     "barlow_weight": 0.0, "barlow_lambda": 0.0051, "snapshot_every_images": 4,
                                     "checkpoint_every_images": 4},
                          "stage2": {"ema_half_life_images": 4, "freeze_d_blocks": 1, "barlow_weight": 0.1,
                                     "barlow_lambda": 0.0051, "snapshot_every_images": 4,
                                     "checkpoint_every_images": 4},
                          "per_class": {"df": {}, "vasc": {"total_images": 4}}}},
        "tune": {**repo["tune"], "experiment": "tune-gan-test", "dir": str(root / "tuning"), "storage": None,
                 "gan": {"study": "gan-{method}-{class}", "classifier": str(root / "classifier"),
                         "base_dir": str(root / "gan" / "base"), "domain_encoder": str(root / "encoder"),
                         "tolerance": 0.01, "probe": {"epochs": 2, "lr": 0.01, "batch_size": 16,
                                                      "weight_decay": 0.0, "class_weight_power": 1.0, "seed": 0},
                         "eval_every_images": 8, "proxy_samples": 8, "n_trials": 2, "timeout_minutes": 60,
                         "seed": 0, "n_startup_trials": 2,
                         "pruner": {"kind": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
                         "enqueue": [{"lr": 2e-4, "total_images": 16, "freeze_d_blocks": 1, "barlow_weight": 0.1,
                                      "diffaugment": "color,translation,cutout", "diffaugment_p": 1.0, "amount": 4}],
                         "space": {"lr": {"float": [1e-4, 1e-3], "log": True},
                                   "total_images": {"int": [8, 16], "step": 8},
                                   "freeze_d_blocks": {"int": [0, 1]},
                                   "barlow_weight": {"float": [0.0, 0.5]},
                                   "diffaugment": {"choices": ["color,translation,cutout", "translation"]},
                                   "diffaugment_p": {"float": [0.5, 1.0]},
                                   "amount": {"int": [2, 6], "step": 2}}}},
    }


def config_of(params: dict, stgan_tuned: dict | None = None) -> Config:
    """The Config the CLI builds from ``params`` plus a tuned-GAN file with ``gan.stgan_tuned`` (default: an
    earlier study's, which gives df the stage-2 length params.yaml leaves to tuning)."""
    gan = {**params["gan"], "stgan_tuned": EARLIER_STUDY if stgan_tuned is None else stgan_tuned}
    return build_config({**params, "gan": gan})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny prepared data, stage 1, a domain encoder and a (ImageNet-free) classifier; the test split deleted."""
    root = tmp_path_factory.mktemp("tune-gan")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    mp.chdir(root)
    raw = make_ham_folder(root / "raw", per_class=8)
    prepared = root / "prepared"
    prepare_dataset(raw, prepared, root / "eda", PrepareConfig(SIZE, 0.2, 0.2, 0, CLASSES))
    params = tiny_params(root)
    run_stgan_base(config_of(params), prepared, root / "gan" / "base", root / "checkpoints")
    run_domain_encoder(config_of(params), prepared, root / "encoder", root / "metrics" / "encoder.json")
    model = create_classifier("efficientnet_lite0", CLASSES, SIZE, tta="hflip")
    (root / "classifier").mkdir()
    torch.save({"state_dict": model.state_dict(), "backbone": "efficientnet_lite0", "tta": "hflip",
                "classes": list(CLASSES), "image_size": SIZE}, root / "classifier" / "model.pt")
    (root / "classifier" / "mlflow.json").write_text("{}")
    (prepared / "test.npz").unlink()  # the GAN objective must never need the test split
    yield root, prepared, params
    mp.undo()


def test_gan_study_runs_on_train_and_val_only_with_a_constraint_and_nested_runs(world):
    root, prepared, params = world
    assert not (prepared / "test.npz").exists()
    summary = run_tune(config_of(params), "gan", prepared, root / "report", method="stgan", dx="df")
    study = optuna.load_study(study_name="gan-stgan-df", storage=make_storage(str(root / "tuning" / "gan-stgan-df.journal")))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete and summary["trials"] == 2
    first = study.trials[0]
    assert first.user_attrs.get("enqueued") and first.params["total_images"] == 16
    assert sorted(first.intermediate_values) == [8, 16]  # -domain FD every eval_every_images
    assert all(v <= 0 for v in first.intermediate_values.values())
    for trial in complete:
        assert set(trial.constraints) == {"val_bal_acc"}
        assert trial.constraints["val_bal_acc"] == pytest.approx(
            trial.user_attrs["reference_bal_acc"] - 0.01 - trial.user_attrs["val_bal_acc"])
        assert trial.value == pytest.approx(trial.user_attrs["val_recall_df"])
    assert summary["class"] == "df" and summary["reference"]["val_recall"] is not None
    assert summary["default_trial"]["number"] == 0
    assert (root / "report" / "summary.json").is_file() and (root / "report" / "trials.csv").is_file()

    import mlflow

    runs = mlflow.search_runs(experiment_names=["tune-gan-test"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("stage") == "tune"]
    children = [r for r in runs if r.data.tags.get("stage") == "tune-trial"]
    assert len(parents) == 1 and len(children) == 2
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    done = [c for c in children if c.data.tags["optuna_state"] == "COMPLETE"]
    assert len(done) == len(complete) and all("probe/val_bal_acc" in c.data.metrics for c in done)
    assert all("proxy/domain_fd" in c.data.metrics for c in children)  # pruned ones too


def test_constraint_blocks_a_trial_that_lowers_val_balanced_accuracy(world, tmp_path):
    root, prepared, params = world
    # the constraint value: positive (infeasible) exactly when bal acc drops more than the tolerance
    assert feasibility(0.60, reference=0.62, tolerance=0.01) > 0
    assert feasibility(0.615, reference=0.62, tolerance=0.01) <= 0
    # a study where the best recall comes with lower balanced accuracy: that trial is never the best
    study = optuna.create_study(direction="maximize")
    for value, constraint in ((0.9, 0.05), (0.5, -0.01), (0.4, 0.0)):
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=value,
                                                  system_attrs={"constraints:val_bal_acc": constraint}))
    cfg = StudyConfig("c", str(tmp_path / "c.journal"), 3, None, 0, 1, {"kind": "none"}, "e")
    summary = study_summary(study, cfg)
    assert summary["best_trial"] == 1 and summary["best_value"] == 0.5
    # on the real objective: demand +1 balanced accuracy over the reference -> no feasible trial, nothing to apply
    strict = copy.deepcopy(params)
    strict["tune"]["gan"].update(tolerance=-1.0, enqueue=[], n_trials=1)
    summary = run_tune(config_of(strict), "gan", prepared, tmp_path / "report", method="stgan", dx="vasc",
                       storage=str(tmp_path / "strict.journal"))
    assert summary["states"] == {"complete": 1} and summary["best_trial"] is None and summary["feasible_trials"] == 0
    with pytest.raises(DermaganError, match="no completed feasible trial"):
        apply_best(tmp_path / "params.yaml", config_of(strict), "gan", summary)


def test_apply_writes_tuned_values_that_stage_two_and_the_counts_read(world, tmp_path):
    root, prepared, params = world
    summary = {"study": "gan-stgan-df", "storage": "x", "best_value": 0.5, "best_trial": 3, "trials": 12,
               "wall_minutes": 1.0, "pruning_saved_minutes": 0.0, "feasible_trials": 5, "class": "df",
               "method": "stgan", "reference": {"val_recall": 0.4},
               "best_params": {"lr": 1e-4, "total_images": 16, "freeze_d_blocks": 0, "barlow_weight": 0.3,
                               "diffaugment": "translation", "diffaugment_p": 0.7, "amount": 6}}
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "tuned.yaml").write_text(yaml.safe_dump({"train": {}}))
    (tmp_path / "params" / "tuned_gan.yaml").write_text(  # as the repository ships it: nothing tuned yet
        "# Tuned GAN values: written by `dermagan tune gan --apply`. Do not edit by hand; re-tune.\n"  # (apply
        # replaces only a file dermagan wrote: git keeps no xattr, this header marks it)
        + yaml.safe_dump({"gan": {"stgan_tuned": {"df": {}, "vasc": {}}, "amount_tuned": {}}}))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    written = apply_best(path, config_of(params), "gan", summary)
    assert written == tmp_path / "params" / "tuned_gan.yaml"
    merged = load_params(path)
    cfg = build_config(merged).stgan_config("stage2", "df")
    assert (cfg.lr_g, cfg.lr_d, cfg.total_images, cfg.freeze_d_blocks) == (1e-4, 1e-4, 16, 0)
    assert (cfg.barlow_weight, cfg.diffaugment, cfg.diffaugment_p) == (0.3, "translation", 0.7)
    assert build_config(merged).stgan_config("stage2", "vasc").total_images == 4  # other classes untouched
    counts = {c: 10 for c in CLASSES}
    assert method_counts(merged["gan"], counts, "stgan") == {"df": 6, "vasc": 3}
    assert method_counts(merged["gan"], counts, "cdcgan") == {"df": 3, "vasc": 3}  # tuned for stgan only
    assert method_counts(merged["gan"], counts, None) == {"df": 3, "vasc": 3}  # oversampling keeps gan.amount
    # a second class keeps the first one's entry
    apply_best(path, build_config(merged), "gan", {**summary, "class": "vasc", "best_params": {"lr": 3e-4, "amount": 2}})
    tuned = yaml.safe_load(written.read_text())
    assert set(tuned["gan"]["stgan_tuned"]) == {"df", "vasc"} and tuned["gan"]["amount_tuned"]["stgan"] == {"df": 6, "vasc": 2}
    # params.yaml setting a searched key is refused (a tuned value lives in one place)
    own = copy.deepcopy(params)
    own["gan"]["stgan"]["per_class"]["df"] = {"total_images": 8}
    path.write_text(yaml.safe_dump(own, sort_keys=False))
    with pytest.raises(DermaganError, match="per_class.df.total_images"):
        build_config(load_params(path))
    with pytest.raises(DermaganError, match="per_class.df.total_images"):
        apply_best(path, config_of(own, stgan_tuned={}), "gan", summary)


def test_stage2_overrides_map_the_shared_lr_and_drop_the_amount():
    assert stage2_overrides({"lr": 1e-4, "amount": 300, "barlow_weight": 0.2}) == {
        "lr_g": 1e-4, "lr_d": 1e-4, "barlow_weight": 0.2}


def test_diffaugment_strength_one_is_unchanged_and_zero_is_identity():
    x = torch.rand(6, 3, 16, 16) * 2 - 1

    def run(p):
        gen = torch.Generator().manual_seed(5)
        return diff_augment(x, "color,translation,cutout", gen, p), gen.get_state()

    by_hand, gen = x, torch.Generator().manual_seed(5)  # the ops alone, as before strength existed
    for name in ("color", "translation", "cutout"):
        for op in POLICIES[name]:
            by_hand = op(by_hand, gen)
    one, state_one = run(1.0)
    assert torch.equal(by_hand, one) and torch.equal(gen.get_state(), state_one)  # p = 1 draws nothing extra
    zero, _ = run(0.0)
    assert torch.equal(zero, x)
    half, _ = run(0.5)
    keep = torch.rand(len(x), generator=torch.Generator().manual_seed(5)) < 0.5  # the first draw is the mask
    changed = torch.tensor([not torch.equal(half[i], x[i]) for i in range(len(x))])
    assert torch.equal(changed, keep) and 0 < int(keep.sum()) < len(x)
    with pytest.raises(DermaganError, match="diffaugment_p"):
        diff_augment(x, "color", torch.Generator(), 1.5)

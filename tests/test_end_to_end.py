"""The real pipeline (`dvc repro` of the project's dvc.yaml) on a small real subset, tiny settings.

Runs every stage, a DCGAN arm included: GAN training, generation, dedup, fidelity, augmented-set
validation, a classifier on real + synthetic images and the seeded comparison. Checks the
registered models, their tags, promotion to `champion`, prediction with it, the metrics files,
that a second `dvc repro` does nothing, and that changing one arm's params invalidates only that arm.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
PER_CLASS = 14
ARMS = ("cnn", "effnet", "cnn_ros", "cnn_dcgan", "cnn_stgan", "cnn_cyclegan", "effnet_experts")
BIN = Path(sys.executable).parent


def shrunk_params() -> tuple[dict, dict, dict]:
    """params.yaml, params/tuned.yaml and params/tuned_gan.yaml (the files params.yaml names), shrunk.

    A recipe key lives in exactly one of the two files (a key in both is an error), so each
    shrunk key is set where the real files keep it: epochs and batch_size are tuned values.
    """
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    tuned = yaml.safe_load((REPO / params["tuned_params"]).read_text())
    # tuned GAN values: one shrunk stage-2 setting for df (the real study's values train for minutes)
    tuned_gan = {"gan": {"stgan_tuned": {"df": {"total_images": 16, "barlow_weight": 0.2, "diffaugment_p": 0.8},
                                         "vasc": {}},
                         "amount_tuned": {"stgan": {"df": 3}}}}
    params["prepare"].update(image_size=32, seed=1)
    params["validate"].update(min_class_count=1, min_class_share=0.0, max_class_share=1.0)
    params["train"].update(seeds=[0])
    for key, value in {"epochs": 1, "batch_size": 16}.items():
        (tuned["train"] if key in tuned["train"] else params["train"])[key] = value
    # cnn arms override recipe keys; effnet is the real arm: the tuned recipe on real images
    cnn = {"backbone": "simple_cnn", "pretrained": None, "augment": False, "class_weight_power": 0.0}
    params["arms"] = {"cnn": {**cnn, "extra": None}, "effnet": params["arms"]["effnet"],
                      "cnn_ros": {**cnn, "extra": "oversample"}, "cnn_dcgan": {**cnn, "extra": "dcgan/dedup"},
                      "cnn_stgan": {**cnn, "extra": "stgan/dedup"},
                      "cnn_cyclegan": {**cnn, "extra": "cyclegan/generated"},  # tiny GANs: dedup may keep < 4
                      "effnet_experts": {"extra": None, "experts": {"method": "stgan"}}}
    params["gan"].update(methods=["dcgan", "stgan", "cyclegan"], dcgan_methods=["dcgan"], classes=["df", "vasc"],
                         amount={"mode": "count", "value": 4}, ngf=8, ndf=8, batch_size=8, total_images=48,
                         ema_half_life_images=16, snapshot_every_images=24, checkpoint_every_images=24, grid_size=4)
    stgan = params["gan"]["stgan"]  # two-stage STGAN: stage 1 on all train images, stage 2 per class
    stgan["net"].update(ngf=8, ndf=8, latent_dim=16, batch_size=8, grid_size=4)
    stgan["stage1"].update(total_images=32, ema_half_life_images=16, snapshot_every_images=16,
                           checkpoint_every_images=16)
    stgan["stage2"].update(ema_half_life_images=8, snapshot_every_images=8, checkpoint_every_images=8)
    stgan["per_class"] = {"df": {}, "vasc": {"total_images": 16}}
    cyclegan = params["gan"]["cyclegan"]  # CycleGAN nv -> df / vasc, a few steps
    cyclegan["classes"] = ["df", "vasc"]
    cyclegan["net"].update(ngf=8, ndf=8, n_blocks=2, batch_size=4, snapshot_every_images=8,
                           checkpoint_every_images=8, grid_size=4)
    cyclegan["per_class"] = {"df": {"total_images": 8}, "vasc": {"total_images": 8}}
    params["fidelity"].update(feature_size=32, grid_images=3, nearest_examples=2)
    params["fidelity"]["domain_encoder"].update(epochs=1, batch_size=16)
    params["fidelity"]["cas"].update(epochs=1, seeds=[0])
    params["fidelity"]["two_sample"].update(bootstrap_samples=50)
    params["evaluate"]["bootstrap_samples"] = 200
    params["ensemble"]["arms"] = ["cnn", "effnet", "effnet_experts"]
    return params, tuned, tuned_gan


def real_subset(source: Path, dest: Path) -> None:
    """PER_CLASS images of every class from the real data, in HAM10000 layout."""
    meta = pd.read_csv(source / "metadata.csv")
    subset = meta.sort_values("image_id").groupby("dx").head(PER_CLASS)
    (dest / "images").mkdir(parents=True)
    subset.to_csv(dest / "metadata.csv", index=False)
    for image_id in subset["image_id"]:
        shutil.copy(source / "images" / f"{image_id}.jpg", dest / "images")


def run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def project(tmp_path_factory, request):
    from conftest import REAL_DATA

    if not (REAL_DATA / "metadata.csv").is_file():
        pytest.skip(f"real HAM10000 data not found at {REAL_DATA}")
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    params, tuned, tuned_gan = shrunk_params()
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / params["tuned_params"]).parent.mkdir(parents=True, exist_ok=True)
    (root / params["tuned_params"]).write_text(yaml.safe_dump(tuned, sort_keys=False))
    (root / params["tuned_gan_params"]).write_text(yaml.safe_dump(tuned_gan, sort_keys=False))
    real_subset(REAL_DATA, root / "data")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GX_ANALYTICS_ENABLED": "False",
           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"}
    run(["dvc", "init", "--no-scm", "-q"], root, env)
    first = run(["dvc", "repro"], root, env)
    return root, env, first


def test_pipeline_writes_metrics_and_comparison(project):
    root, _, first = project
    for arm in ARMS:
        doc = json.loads((root / "metrics" / "runs" / f"{arm}-s0.json").read_text())
        test = doc["test"]
        assert doc["seed"] == 0
        assert 0 <= test["bal_acc_ci_low"] <= test["bal_acc"] <= test["bal_acc_ci_high"] <= 1
        assert set(test["per_class"]) == {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}
        assert (root / "reports" / "eval" / f"{arm}-s0" / "confusion.png").stat().st_size > 0
        reliability = pd.read_csv(root / "reports" / "reliability" / f"{arm}-s0.csv")
        assert list(reliability.columns) == ["bin", "confidence", "accuracy", "count"] and len(reliability) > 0
    table = pd.read_csv(root / "reports" / "compare" / "arms.csv")
    assert sorted(table["arm"]) == sorted(ARMS)
    assert "cnn_dcgan" in (root / "reports" / "compare" / "comparison.md").read_text()
    assert (root / "reports" / "validation" / "data_docs" / "index.html").is_file()
    assert "PASSED" in first.stdout


def test_gan_arm_trains_on_real_plus_deduplicated_synthetic(project):
    root, env, _ = project
    dedup = json.loads((root / "reports" / "dedup" / "dcgan" / "report.json").read_text())
    assert sum(dedup["counts"].values()) == 2 * 6  # ceil(4 x candidates_factor 1.5) per class
    kept = pd.read_csv(root / "artifacts" / "synthetic" / "dcgan" / "dedup" / "manifest.csv")
    assert len(kept) == dedup["counts"]["kept"] and set(kept["class"]) <= {"df", "vasc"}
    extra = pd.read_csv(root / "artifacts" / "trainsets" / "cnn_dcgan" / "extra.csv")
    assert extra["class"].value_counts().to_dict() == {"df": 4, "vasc": 4}
    assert set(extra["source"]) <= set(kept["file"])
    summary = json.loads((root / "reports" / "validation_augmented" / "cnn_dcgan" / "summary.json").read_text())
    assert summary["success"] and summary["n_extra"] == 8
    ros = pd.read_csv(root / "artifacts" / "trainsets" / "cnn_ros" / "extra.csv")
    assert ros["source"].str.startswith("copy:").all() and len(ros) == 8
    fidelity = json.loads((root / "metrics" / "fidelity" / "dcgan.json").read_text())
    assert set(fidelity["classes"]) == {"df", "vasc"}
    assert (root / "reports" / "fidelity" / "dcgan" / "real_vs_synthetic.png").stat().st_size > 0
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    generators = client.search_model_versions("name='dermagan-generator'")
    assert {v.tags["gan_classes"] for v in generators if v.tags["method"] == "dcgan"} == {"df", "vasc"}
    run = client.get_run(json.loads((root / "artifacts" / "models" / "cnn_dcgan-s0" / "mlflow.json").read_text())
                         ["run_id"])
    assert run.data.params["n_extra"] == "8" and run.data.tags["extra"] == "dcgan/dedup"


def test_two_stage_stgan_run_and_domain_fidelity(project):
    root, env, _ = project
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    stgan = [v for v in client.search_model_versions("name='dermagan-generator'") if v.tags["method"] == "stgan"]
    stage1 = [v for v in stgan if v.tags["stgan_stage"] == "1"]
    stage2 = {v.tags["gan_classes"]: v for v in stgan if v.tags["stgan_stage"] == "2"}
    assert len(stage1) == 1 and sorted(stage2) == ["df", "vasc"]
    assert all(v.tags["stage1_version"] == str(stage1[0].version) for v in stage2.values())
    fidelity = json.loads((root / "metrics" / "fidelity" / "stgan.json").read_text())
    for dx in ("df", "vasc"):
        metrics = fidelity["classes"][dx]
        assert {"fd_domain", "kid_domain", "knn_precision_domain", "knn_recall_domain"} <= set(
            metrics["domain_dedup"])
        assert "fd_domain" in metrics["domain_real_val_reference"]  # the real-val-vs-train yardstick
        assert 0 <= metrics["two_sample"]["auc"] <= 1
        assert "ratio_median" in metrics["memorisation_domain"]
    assert 0 <= fidelity["cas"]["cas_synthetic"] <= 1 and 0 <= fidelity["cas"]["cas_real"] <= 1
    assert fidelity["domain_space"].startswith("domain-cnn")
    for figure in ("real_vs_synthetic.png", "nearest_train_examples.png"):
        assert (root / "reports" / "fidelity" / "stgan" / figure).stat().st_size > 0
    run_metrics = client.get_run(stage2["df"].run_id).data.metrics
    assert "fidelity/fd_domain" in run_metrics and "cas/cas_synthetic" in run_metrics
    assert json.loads((root / "metrics" / "domain_encoder.json").read_text())["trained_on"] == "real train split"


def test_models_registered_with_tags_and_promoted(project):
    root, env, _ = project
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    versions = client.search_model_versions("name='dermagan-classifier'")
    assert len(versions) == len(ARMS) + 1  # every arm, plus the registered ensemble (pyfunc)
    assert {v.tags["arm"] for v in versions} - set(ARMS) == {"ensemble_" + ensemble_combiner(root)}
    assert all("test_bal_acc" in v.tags and "test_bal_acc_ci" in v.tags for v in versions)
    assert not any("test_recall_df" in v.tags for v in versions)  # on the run: metric test/recall_df
    assert not any("backbone" in v.tags for v in versions if v.tags.get("kind") != "ensemble")  # recipe.backbone
    # promotion picks by validation (newest wins ties) and only gates on test
    # ensembles are not candidates of a plain promote (their weights were fitted on val)
    best = max((v for v in versions if v.tags.get("kind") != "ensemble"),
               key=lambda v: (float(v.tags["val_bal_acc"]), int(v.version)))
    promoted = run([str(BIN / "dermagan"), "promote"], root, env)
    assert f"promoted v{best.version}" in promoted.stdout
    assert str(client.get_model_version_by_alias("dermagan-classifier", "champion").version) == str(best.version)
    run_metrics = client.get_run(best.run_id).data.metrics
    assert "val/bal_acc" in run_metrics and "test/bal_acc" in run_metrics and "test/recall_df" in run_metrics
    contexts = {tag.value for d in client.get_run(best.run_id).inputs.dataset_inputs for tag in d.tags
                if tag.key == "mlflow.data.context"}
    assert {"training", "validation", "test"} <= contexts


def test_predict_with_champion_skips_unreadable(project):
    root, env, _ = project
    folder = root / "incoming"
    folder.mkdir(exist_ok=True)
    for image in sorted((root / "data" / "images").iterdir())[:3]:
        shutil.copy(image, folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    if not _has_champion(env):
        run([str(BIN / "dermagan"), "promote"], root, env)
    done = run([str(BIN / "dermagan"), "predict", "incoming", "--out", "preds.csv"], root, env)
    preds = pd.read_csv(root / "preds.csv")
    assert len(preds) == 3 and "broken.jpg" in done.stderr
    assert preds.filter(like="prob_").sum(axis=1).round(4).eq(1).all()


def test_second_repro_does_nothing_and_one_arm_change_reruns_only_it(project):
    root, env, _ = project
    second = run(["dvc", "repro"], root, env)
    assert "Running stage" not in second.stdout
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["arms"]["cnn"]["class_weight_power"] = 1.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status"], root, env).stdout
    assert "train@cnn-0" in status and "train@effnet-0" not in status and "evaluate@effnet-0" not in status
    assert "train_gan@dcgan" not in status and "train@cnn_dcgan-0" not in status
    params["gan"]["stgan"]["per_class"]["vasc"]["total_images"] = 24  # one class's stage 2 only
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status"], root, env).stdout
    assert "train_stgan@vasc" in status and "train_stgan@df" not in status and "train_stgan_base" not in status
    tuned_gan = yaml.safe_load((root / "params" / "tuned_gan.yaml").read_text())
    tuned_gan["gan"]["stgan_tuned"]["df"]["barlow_weight"] = 0.3  # a tuned value of one class: only that class
    (root / "params" / "tuned_gan.yaml").write_text(yaml.safe_dump(tuned_gan, sort_keys=False))
    status = run(["dvc", "status"], root, env).stdout
    assert "train_stgan@df" in status and "train_stgan_base" not in status


def ensemble_combiner(root: Path) -> str:
    return json.loads((root / "metrics" / "ensemble.json").read_text())["registered"]["combiner"]


def test_tuned_gan_values_experts_arm_and_ensemble(project):
    root, env, _ = project
    # params/tuned_gan.yaml reaches stage 2 (df) and the number of df images the stgan arm gets
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    df = [v for v in client.search_model_versions("name='dermagan-generator'")
          if v.tags["method"] == "stgan" and v.tags.get("gan_classes") == "df" and v.tags["stgan_stage"] == "2"]
    assert client.get_run(df[0].run_id).data.params["barlow_weight"] == "0.2"
    extra = pd.read_csv(root / "artifacts" / "trainsets" / "cnn_stgan" / "extra.csv")
    assert extra["class"].value_counts().to_dict() == {"df": 3, "vasc": 4}
    assert extra.shape[0] == 7
    # the class-expert arm carries the frozen stage-2 discriminators and is judged like a GAN arm
    assert (root / "artifacts" / "trainsets" / "effnet_experts" / "experts.pt").is_file()
    saved = __import__("torch").load(root / "artifacts" / "models" / "effnet_experts-s0" / "model.pt",
                                     map_location="cpu", weights_only=True)
    assert saved["kind"] == "class_experts"
    verdicts = pd.read_csv(root / "reports" / "compare" / "gan_vs_best.csv")
    assert "effnet_experts" in set(verdicts["gan_arm"])
    # the ensemble: weights fitted on val sum to 1 per combiner and seed; its predictions are written
    weights = pd.read_csv(root / "reports" / "ensemble" / "weights.csv")
    assert weights.groupby(["combiner", "seed"])["weight"].sum().round(6).eq(1).all()
    assert set(weights["arm"]) == {"cnn", "effnet", "effnet_experts"}
    assert (root / "reports" / "ensemble_predictions" / "ensemble_stacked-s0.csv").is_file()
    # CycleGAN: translations of nv train images, with their sources, scored for source leakage
    manifest = pd.read_csv(root / "artifacts" / "synthetic" / "cyclegan" / "generated" / "manifest.csv")
    splits = pd.read_csv(root / "artifacts" / "prepared" / "splits.csv").set_index("image_id")
    assert set(splits.loc[manifest["source"], "split"]) == {"train"} and set(splits.loc[manifest["source"], "dx"]) == {"nv"}
    leakage = json.loads((root / "metrics" / "fidelity" / "cyclegan.json").read_text())["classes"]["df"]["source_leakage"]
    assert "generated" in leakage


def _has_champion(env: dict) -> bool:
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        mlflow.MlflowClient().get_model_version_by_alias("dermagan-classifier", "champion")
        return True
    except mlflow.exceptions.MlflowException:
        return False

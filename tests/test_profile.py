"""Profiles: an overlay of params.yaml, validated whole, run as its own DVC project in profiles/NAME/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from dermagan.cli import main
from dermagan.config.load import load_profile, merge_params


def test_merge_replaces_arms_and_merges_the_rest():
    base = {"arms": {"a": {"extra": None}, "b": {"extra": "oversample"}}, "gan": {"x": 1, "net": {"y": 2, "z": 3}}}
    merged = merge_params(base, {"arms": {"c": {"extra": None}}, "gan": {"net": {"z": 4}}})
    assert merged == {"arms": {"c": {"extra": None}}, "gan": {"x": 1, "net": {"y": 2, "z": 4}}}
    assert base["gan"]["net"]["z"] == 3  # the base is not changed


@pytest.mark.parametrize("name", ["melanoma", "rosendahl", "firstlook"])
def test_shipped_profiles_validate(name: str):
    merged, cfg = load_profile(REPO / "params.yaml", REPO / "profiles" / f"{name}.yaml")
    assert cfg.mlflow.experiment == f"dermagan-{name}"
    assert cfg.gan.registered_model == f"dermagan-{name}-generator"
    if name == "firstlook":  # every default arm and stage, on a small budget, one seed
        default = yaml.safe_load((REPO / "params.yaml").read_text())
        assert sorted(cfg.arms) == sorted(default["arms"]) and cfg.train.seeds == (0,)
        assert cfg.prepare.max_lesions_per_class == 300 and cfg.gan.methods == tuple(default["gan"]["methods"])
    elif name == "melanoma":
        assert cfg.classes == ("other", "mel") and cfg.data.positive == "mel"
        assert sorted(cfg.arms) == ["effnet", "effnet_cyclegan", "effnet_cyclegan_nols", "effnet_ros"]
    else:
        assert cfg.prepare.split.by == "source" and cfg.prepare.split.test_sources == ("rosendahl",)
        assert merged["data"]["sources"] == "imports/ham10000_sources.csv"


def project(tmp_path: Path, overlay: dict) -> Path:
    root = tmp_path / "project"
    (root / "profiles").mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params").mkdir()
    for key in ("tuned_params", "tuned_gan_params"):
        (root / params[key]).write_text((REPO / params[key]).read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    for folder in ("data", "imports", "src"):
        (root / folder).mkdir()
    (root / "profiles" / "mine.yaml").write_text(yaml.safe_dump(overlay))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


OWN = {"mlflow": {"experiment": "mine", "registered_model": "mine-classifier"}, "gan": {"experiment": "mine-gan",
                                                                                      "registered_model": "mine-gen"},
       "data": {"classes": ["a", "b"], "positive": "b", "label_map": {}}, "gan_classes": None}


def own_overlay(**extra) -> dict:
    overlay = {k: v for k, v in OWN.items() if k != "gan_classes"}
    overlay["gan"] = {**overlay["gan"], "classes": ["b"], "stgan": {"per_class": {"b": {"total_images": 100}}}}
    overlay["evaluate"] = {"verdict_classes": ["b"]}
    overlay["arms"] = {"effnet": {"extra": None}}
    return {**overlay, **extra}


def test_dry_run_writes_a_dvc_sub_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = project(tmp_path, own_overlay())
    monkeypatch.chdir(root)
    assert main(["profile", "mine", "--dry-run"]) == 0
    folder = root / "profiles" / "mine"
    params = yaml.safe_load((folder / "params.yaml").read_text())
    assert params["data"]["classes"] == ["a", "b"] and list(params["arms"]) == ["effnet"]
    assert params["prepare"] == yaml.safe_load((root / "params.yaml").read_text())["prepare"]
    assert (folder / ".dvc").is_dir() and (folder / "dvc.yaml").is_file()
    assert all((folder / link).is_symlink() for link in ("data", "imports", "src", "params/tuned.yaml"))
    tuned_gan = yaml.safe_load((folder / "params" / "tuned_gan.yaml").read_text())
    assert tuned_gan["gan"]["stgan_tuned"]["b"] == {}  # every train_stgan@CLASS reads its tuned entry
    stage = yaml.safe_load((folder / "dvc.yaml").read_text())["stages"]["validate_augmented"]["do"]
    assert "artifacts/gan/stgan" not in stage["deps"]  # no experts arm: STGAN is never trained for nothing
    stages = subprocess.run([sys.executable, "-m", "dvc", "stage", "list"], cwd=folder, capture_output=True, text=True)
    assert stages.returncode == 0 and "train@effnet-0" in stages.stdout, stages.stderr
    assert "effnet_stgan" not in stages.stdout
    assert main(["profile", "mine", "--dry-run"]) == 0  # a second run refreshes its own folder


def test_profile_needs_its_own_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    overlay = own_overlay()
    overlay["mlflow"] = {"experiment": "dermagan", "registered_model": "mine-classifier"}
    monkeypatch.chdir(project(tmp_path, overlay))
    assert main(["profile", "mine", "--dry-run"]) == 2
    assert "mlflow.experiment" in capsys.readouterr().err
    assert not Path("profiles/mine").exists()
    overlay = own_overlay()
    overlay["gan"] = {**overlay["gan"], "registered_model": "dermagan-generator"}  # generators may not mix either
    monkeypatch.chdir(project(tmp_path / "again", overlay))
    assert main(["profile", "mine", "--dry-run"]) == 2
    assert "gan.registered_model" in capsys.readouterr().err
    assert not Path("profiles/mine").exists()


def test_untuned_gan_profile_writes_empty_tuned_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import yaml

    monkeypatch.chdir(project(tmp_path, own_overlay(tuned_gan_params=None)))
    assert main(["profile", "mine", "--dry-run"]) == 0
    written = Path("profiles/mine/params/tuned_gan.yaml")
    assert not written.is_symlink()  # the project's own tuned file is never linked (or written) here
    assert yaml.safe_load(written.read_text())["gan"]["stgan_tuned"] == {"b": {}}
    assert yaml.safe_load(Path("profiles/mine/params.yaml").read_text())["tuned_gan_params"] is None


def test_unknown_profile_and_bad_overlay_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.chdir(project(tmp_path, own_overlay(prepare={"image_size": 60})))
    assert main(["profile", "nosuch", "--dry-run"]) == 2
    assert "profiles are ['mine']" in capsys.readouterr().err
    assert main(["profile", "mine", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "profiles/mine.yaml" in err and "prepare.image_size" in err
    assert not Path("profiles/mine").exists()


def test_a_foreign_folder_is_never_taken_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    root = project(tmp_path, own_overlay())
    (root / "profiles" / "mine").mkdir()
    (root / "profiles" / "mine" / "notes.txt").write_text("mine")
    monkeypatch.chdir(root)
    assert main(["profile", "mine", "--dry-run"]) == 2
    assert "not made by `dermagan profile`" in capsys.readouterr().err
    assert (root / "profiles" / "mine" / "notes.txt").read_text() == "mine"


def test_an_experts_arm_keeps_the_stgan_dependency():
    from dermagan.profiles import EXPERTS_DEP, adapt_pipeline

    text = (REPO / "dvc.yaml").read_text()
    kept = yaml.safe_load(adapt_pipeline(text, {"arms": {"x": {"experts": {"method": "stgan"}}}}))
    dropped = yaml.safe_load(adapt_pipeline(text, {"arms": {"x": {"extra": None}}}))
    assert EXPERTS_DEP in kept["stages"]["validate_augmented"]["do"]["deps"]
    assert EXPERTS_DEP not in dropped["stages"]["validate_augmented"]["do"]["deps"]


@pytest.mark.parametrize("name", ["melanoma", "rosendahl", "firstlook"])
def test_no_shipped_profiles_pipeline_is_git_ignored(name: str):
    """DVC refuses a git-ignored dvc.yaml ('bad DVC file name'), so a profile's folder may ignore only outputs."""
    done = subprocess.run(["git", "check-ignore", "-q", f"profiles/{name}/dvc.yaml"], cwd=REPO)
    assert done.returncode == 1, f"profiles/{name}/dvc.yaml is git-ignored: `dvc repro` there would refuse it"

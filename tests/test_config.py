"""The typed Config: params.yaml read once, every bad value refused at load time naming its key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from dermagan.cli import main
from dermagan.config import ConfigError, build_config, load_config, load_params
from dermagan.config.schema import BACKBONE_NAMES, Recipe

REPO = Path(__file__).resolve().parents[1]
PARAMS = load_params(REPO / "params.yaml")


def _with(path: tuple, value) -> dict:
    params = copy.deepcopy(PARAMS)
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return params


def test_repository_params_load_and_are_frozen():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.prepare.image_size == 64 and cfg.train.seeds == (0, 1, 2)
    assert cfg.validation.min_class_count == 10  # params block `validate`
    assert cfg.recipe("effnet")["backbone"] == "tf_efficientnet_lite0"  # from params/tuned.yaml
    assert "train.backbone" in cfg.tuned.keys
    with pytest.raises(Exception):
        cfg.prepare.image_size = 32  # frozen


BAD = [  # (key path, value, words the error must contain)
    (("prepare", "image_size"), "sixty-four", ["prepare.image_size", "'sixty-four'", "valid integer"]),
    (("prepare", "image_size"), -64, ["prepare.image_size", "-64", "greater than 0"]),
    (("prepare", "image_size"), 0, ["prepare.image_size", "0", "greater than 0"]),
    (("prepare", "image_size"), 64.9, ["prepare.image_size", "64.9", "valid integer"]),
    (("prepare", "image_size"), True, ["prepare.image_size", "True", "valid integer"]),
    (("prepare", "image_size"), 60, ["prepare.image_size", "60", "multiple of 8"]),
    (("prepare", "image_size"), 24, ["prepare.image_size", "24", "min_image_side"]),
    (("prepare", "min_image_side"), "abc", ["prepare.min_image_side", "'abc'", "valid integer"]),
    (("prepare", "seed"), "forty-two", ["prepare.seed", "'forty-two'", "valid integer"]),
    (("prepare", "val_fraction"), 1.5, ["prepare.val_fraction", "1.5", "less than 1"]),
    (("prepare", "test_fraction"), 0.0, ["prepare.test_fraction", "0.0", "greater than 0"]),
    (("prepare", "val_fraction"), 0.9, ["val_fraction + prepare.test_fraction", "below 1"]),
    (("train", "seeds"), ["zero"], ["train.seeds.0", "'zero'", "valid integer"]),
    (("train", "seeds"), [0.5], ["train.seeds.0", "0.5", "valid integer"]),
    (("train", "seeds"), [1, 1], ["train.seeds", "repeat"]),
    (("train", "device"), "tpu", ["train.device", "'tpu'", "auto", "cpu", "cuda"]),
    (("train", "lr"), "fast", ["train.lr", "'fast'", "valid number"]),
    (("train", "epochs"), 2.5, ["train.epochs", "2.5", "valid integer"]),
    (("train", "backbone"), "resnet50", ["train.backbone", "'resnet50'", "tf_efficientnet_lite0"]),
    (("train", "label_smoothing"), 1.0, ["train.label_smoothing", "less than 1"]),
    (("arms", "effnet", "epochs"), "x", ["arms.effnet.epochs", "'x'"]),
    (("arms", "effnet", "extra"), "magic/dedup", ["arms.effnet.extra", "'magic'", "stgan"]),
    (("validate", "max_class_share"), 1.5, ["validate.max_class_share", "1.5"]),
    (("evaluate", "ci_level"), 95, ["evaluate.ci_level", "95", "less than 1"]),
    (("gan", "classes"), ["akiec", "unicorn"], ["gan.classes", "unicorn"]),
    (("gan", "stgan", "net", "ngf"), 16.5, ["gan.stgan.net.ngf", "16.5", "valid integer"]),
    (("gan", "stgan", "per_class", "df", "total_images"), True, ["gan.stgan.per_class.df.total_images", "True"]),
    (("gan", "amount", "mode"), "lots", ["gan.amount.mode", "'lots'", "count", "share"]),
    (("dedup", "rule"), "most", ["dedup.rule", "'most'", "all", "any"]),
    (("fidelity", "cas", "seeds"), [], ["fidelity.cas.seeds", "empty"]),
    (("prepare", "imagesize"), 64, ["prepare.imagesize", "not a known key"]),
]


@pytest.mark.parametrize("path, value, words", BAD, ids=[".".join(map(str, b[0])) + f"={b[1]!r}" for b in BAD])
def test_bad_value_is_refused_naming_key_value_and_what_is_allowed(path, value, words):
    with pytest.raises(ConfigError) as err:
        build_config(_with(path, value))
    text = str(err.value)
    for word in words:
        assert word in text, f"{word!r} not in: {text}"
    assert "Traceback" not in text


def test_missing_block_is_named():
    params = copy.deepcopy(PARAMS)
    del params["prepare"]
    with pytest.raises(ConfigError, match="prepare is missing"):
        build_config(params)


def test_library_blocks_are_checked_at_load_time():
    # A later stage's setting (a CycleGAN class outside gan.classes) fails before prepare runs.
    params = _with(("gan", "cyclegan", "classes"), ["mel"])
    with pytest.raises(ConfigError, match=r"gan.cyclegan.classes.*mel"):
        build_config(params)


def test_cli_reports_bad_params_without_traceback(tmp_path, capsys, ham_folder):
    bad = _with(("prepare", "image_size"), "sixty-four")
    bad.pop("tuned", None)
    bad["tuned_params"] = str(REPO / "params" / "tuned.yaml")
    bad["tuned_gan_params"] = str(REPO / "params" / "tuned_gan.yaml")
    tuned_keys = {k.split(".", 1)[1] for k in PARAMS["tuned"]["keys"] if k.startswith("train.")}
    bad["train"] = {k: v for k, v in bad["train"].items() if k not in tuned_keys}
    bad["gan"] = {k: v for k, v in bad["gan"].items() if k not in ("stgan_tuned", "amount_tuned")}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(bad))
    out = tmp_path / "prepared"
    code = main(["prepare", "--params", str(params_file), "--raw", str(ham_folder), "--out", str(out),
                 "--eda", str(tmp_path / "eda")])
    err = capsys.readouterr().err
    assert code == 2
    assert "prepare.image_size = 'sixty-four'" in err and "Traceback" not in err
    assert not out.exists()


def test_recipe_schema_matches_the_library():
    from dermagan.classify.models import BACKBONES
    from dermagan.classify.recipe import RECIPE_KEYS

    assert set(Recipe.model_fields) == set(RECIPE_KEYS)
    assert set(BACKBONE_NAMES) == set(BACKBONES)

"""Class-expert discriminators as frozen features of a classifier arm (dermagan.experts), on tiny made-up data.

Unit tests build tiny projected discriminators directly; the stage tests run the real STGAN stage 1
and stage 2 (tiny settings), validate_augmented, the train stage and load_trained on one small
prepared dataset, in a throw-away sqlite MLflow store.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

from conftest import make_ham_folder
from dermagan.classify.artifact import load_trained
from dermagan.classify.inference import predict_logits
from dermagan.classify.registry_load import load_registered
from dermagan.classify.models import create_classifier
from dermagan.classify.train import Trainer, TrainConfig
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.data.prepare import PrepareConfig, prepare_dataset
from dermagan.data.prepared import SplitArrays, read_split
from dermagan.errors import DermaganError
from dermagan.experts import (
    EXPERTS_FILE,
    ClassExpertClassifier,
    ClassExperts,
    build_expert_classifier,
    load_experts,
    parse_experts,
)
from dermagan.experts.bank import read_stgan_discriminator
from dermagan.gan.generate import load_generator, sample_images
from dermagan.gan.projected import FrozenEfficientNetLite0, ProjectedDiscriminator
from dermagan.outputs import MARKER
from dermagan.stages.train import run_train
from dermagan.stages.train_stgan import run_stgan_base, run_stgan_class
from dermagan.stages.validate_augmented import run_validate_augmented
from params_util import make_config

torch.set_num_threads(1)  # on a shared 2-core machine two BLAS threads spin and run far slower

SIZE = 32
N = 4
PROJ = {"ndf": 8, "proj_channels": 8, "cmap_dim": 16}
EXPERTS = ("akiec", "df", "vasc")


@pytest.fixture(scope="module")
def frozen_net() -> FrozenEfficientNetLite0:
    return FrozenEfficientNetLite0()


def gan_images(seed: int = 0, n: int = N) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def expert_inputs(frozen_net, names=EXPERTS, seeds=None, num_classes=None) -> tuple[dict, dict, dict]:
    """Configs, state dicts and the Ds themselves of tiny 'trained' projected Ds (one train-mode forward each:
    spectral-norm power iteration and BatchNorm statistics moved, as after GAN training)."""
    configs, states, ds = {}, {}, {}
    for i, name in enumerate(names):
        seed = (seeds or {}).get(name, 0)
        torch.manual_seed(10 + i)
        d = ProjectedDiscriminator(SIZE, num_classes=num_classes, seed=seed, feature_net=frozen_net, **PROJ).train()
        label = CLASSES.index(name) if num_classes else None
        d(gan_images(100 + i, 8), torch.full((8,), label) if num_classes else None)
        configs[name] = {"discriminator": "projected", "image_size": SIZE, "ndf": PROJ["ndf"],
                         "num_classes": num_classes, "feature_size": None, "seed": seed,
                         "proj_channels": PROJ["proj_channels"], "cmap_dim": PROJ["cmap_dim"], "label": label}
        states[name] = {k: v.clone() for k, v in d.state_dict().items()}
        ds[name] = d.eval()
    return configs, states, ds


def expert_model(bank: ClassExperts, tta: str = "none", dropout: float = 0.2) -> ClassExpertClassifier:
    base = create_classifier("tf_efficientnet_lite0", CLASSES, SIZE, "package", tta=tta)
    return ClassExpertClassifier(base, bank, dropout)


# --- the frozen bank -----------------------------------------------------------------------
@pytest.mark.parametrize("num_classes", [None, 7])
def test_expert_features_are_the_eval_mode_discriminators_pooled_features_and_logits(frozen_net, num_classes):
    configs, states, ds = expert_inputs(frozen_net, num_classes=num_classes)
    bank = ClassExperts.from_discriminators(configs, states)
    x = gan_images(1)
    features = bank(x)
    widths = {name: sum(s.out_channels for s in d.discs) + len(d.discs) for name, d in ds.items()}
    assert bank.widths == widths and bank.width == sum(widths.values()) == features.shape[1]
    start = 0
    for name, d in ds.items():  # experts in order: pooled trunk features of every scale, then per-scale logits
        block = features[:, start:start + widths[name]]
        start += widths[name]
        y = torch.full((N,), CLASSES.index(name)) if num_classes else None
        with torch.no_grad():
            pooled = d.barlow_features(x)
            logits = torch.stack([disc(f, y).mean(1) for disc, f in zip(d.discs, d.forward_features(x))], 1)
        assert torch.allclose(block[:, :pooled.shape[1]], pooled, atol=1e-5)
        assert torch.allclose(block[:, pooled.shape[1]:], logits, atol=1e-5)
    # spectral norm is baked: plain tensors, so nothing can run a power iteration and the bank pickles
    assert not any(parametrize.is_parametrized(m) for m in bank.modules())


def test_identical_frozen_parts_are_shared_and_others_are_not(frozen_net):
    configs, states, _ = expert_inputs(frozen_net, seeds={"vasc": 5})  # vasc: another random projection
    bank = ClassExperts.from_discriminators(configs, states)
    d = bank.discriminators
    assert bank.groups == [["akiec", "df"], ["vasc"]]
    assert d["df"].features is d["akiec"].features and d["df"].projection is d["akiec"].projection
    assert d["vasc"].projection is not d["akiec"].projection
    x = gan_images(2)
    alone = torch.cat([ClassExperts.from_discriminators({n: configs[n]}, {n: states[n]})(x) for n in EXPERTS], 1)
    assert torch.equal(bank(x), alone), "sharing the frozen network must not change any feature"


def test_classifier_widths_and_logits(frozen_net):
    configs, states, _ = expert_inputs(frozen_net)
    bank = ClassExperts.from_discriminators(configs, states)
    model = expert_model(bank, tta="hflip").eval()
    x = (gan_images(3) + 1) / 2
    assert model.num_features == 1280
    assert model.features(x).shape == (N, 1280 + bank.width)
    assert model.head.in_features == 1280 + bank.width
    out = model(x)
    assert out.shape == (N, len(CLASSES)) and torch.isfinite(out).all()
    model.temperature.fill_(2.0)
    assert torch.allclose(model(x) * 2, out, atol=1e-5)  # logits / temperature, after the TTA average
    with pytest.raises(DermaganError, match="timm backbone"):
        ClassExpertClassifier(create_classifier("simple_cnn", CLASSES, SIZE), bank)


def tiny_split(n: int, seed: int) -> SplitArrays:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    return SplitArrays(rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8), labels.astype(np.int64),
                       np.array([f"img{i}" for i in range(n)]))


def test_training_moves_backbone_and_head_but_never_an_expert_tensor(frozen_net):
    configs, states, _ = expert_inputs(frozen_net)
    bank = ClassExperts.from_discriminators(configs, states)
    model = expert_model(bank)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # a large weight decay: AdamW must not shrink the frozen tensors either (they never get a gradient)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-2, weight_decay=0.5, lr_schedule="none", step_size=1, gamma=1.0,
                      patience=1, seed=0, max_batches_per_epoch=3)
    trainer = Trainer(model, tiny_split(24, 0), cfg, torch.device("cpu"))
    model.train()
    assert model.training and not model.experts.training
    assert all(not m.training for m in model.experts.modules()), "an expert module left eval mode"
    assert not any(p.requires_grad for p in model.experts.parameters())
    trainer.train_one_epoch()
    after = model.state_dict()
    experts = [k for k in before if k.startswith("experts.")]
    assert experts and all(torch.equal(before[k], after[k]) for k in experts), "a frozen expert tensor changed"
    for prefix in ("net.", "head.", "expert_norm."):
        changed = [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]
        assert changed, f"{prefix} did not learn"
    assert all(p.grad is None for p in model.experts.parameters())


def test_bad_settings_name_the_field():
    assert parse_experts(None, CLASSES) is None
    assert parse_experts({"method": "stgan"}, CLASSES).method == "stgan"
    with pytest.raises(DermaganError, match="hold no discriminator"):
        parse_experts({"method": "dcgan"}, CLASSES, "arms.x")
    with pytest.raises(DermaganError, match=r"arms.x.experts has unknown key\(s\) \['layers'\]"):
        parse_experts({"method": "stgan", "layers": 2}, CLASSES, "arms.x")
    with pytest.raises(DermaganError, match=r"arms.x.experts.classes .*data.classes"):
        parse_experts({"method": "stgan", "classes": ["melanoma"]}, CLASSES, "arms.x")
    # the task labels come from the caller (params data.classes), not from HAM10000
    assert parse_experts({"method": "stgan", "classes": ["beta"]}, ("alpha", "beta")).classes == ("beta",)
    with pytest.raises(DermaganError, match="arms.x.experts.classes"):
        parse_experts({"method": "stgan", "classes": ["df"]}, ("alpha", "beta"), "arms.x")
    cfg = make_config({"arms": {"plain": {"extra": None}, "experts": {"extra": None, "experts": {"method": "stgan"}}}})
    assert cfg.recipe("experts") == cfg.recipe("plain")  # the recipe never sees `experts`


# --- the stages: STGAN stage 2 keeps D, validate_augmented copies it, train and evaluate use it ----------
def experts_config():
    recipe = {"backbone": "tf_efficientnet_lite0", "pretrained": "package", "epochs": 1, "batch_size": 8, "lr": 1e-3,
              "weight_decay": 1e-4, "lr_schedule": "onecycle", "warmup_epochs": 0.5, "step_size": 1, "gamma": 0.5,
              "patience": 1, "label_smoothing": 0.0, "class_weight_power": 1.0, "sampler": "shuffle",
              "augment": True, "augment_strength": 0.5, "dropout": 0.2, "drop_path": 0.0, "tta": "hflip",
              "temperature_scaling": True}
    return make_config({
        "prepare": {"image_size": SIZE},
        "train": {**recipe, "device": "cpu", "max_batches_per_epoch": 2, "seeds": [0]},
        "augment": {"hflip": True, "vflip": True, "rot90": True, "rotation_degrees": 30, "crop_scale": [0.6, 1.0],
                    "brightness": 0.2, "contrast": 0.2, "saturation": 0.2},
        "mlflow": {"experiment": "experts-test", "registered_model": "experts-test-classifier"},
        "arms": {"plain": {"extra": None}, "class_experts": {"extra": None, "experts": {"method": "stgan"}}},
        "gan": {"classes": ["df", "vasc"], "amount": {"mode": "count", "value": 3}, "seed": 0,
                "experiment": "experts-test-gan",
                "stgan": {"net": {"discriminator": "projected", "feature_size": None, "conditional": False,
                                  "latent_dim": 8, "ngf": 8, "ndf": 8, "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.0,
                                  "beta2": 0.99, "batch_size": 4, "diffaugment": "color,translation,cutout",
                                  "aux_weight": 1.0, "grid_size": 4, "seed": 0},
                          "stage1": {"total_images": 8, "ema_half_life_images": 8, "freeze_d_blocks": 0,
                                     "barlow_weight": 0.0, "barlow_lambda": 0.0051, "snapshot_every_images": 8,
                                     "checkpoint_every_images": 8},
                          "stage2": {"ema_half_life_images": 4, "freeze_d_blocks": 1, "barlow_weight": 0.1,
                                     "barlow_lambda": 0.0051, "snapshot_every_images": 4,
                                     "checkpoint_every_images": 4},
                          "per_class": {"df": {"total_images": 4}, "vasc": {"total_images": 4}}}},
    })


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """prepare -> STGAN stage 1 -> stage 2 for df and vasc, in a throw-away MLflow store."""
    root = tmp_path_factory.mktemp("experts")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        cfg = experts_config()
        raw = make_ham_folder(root / "raw", per_class=8)
        prepare_dataset(raw, root / "prepared", root / "eda", PrepareConfig(SIZE, 0.2, 0.2, 0, CLASSES))
        gan = root / "gan" / "stgan"
        run_stgan_base(cfg, root / "prepared", gan / "base", root / "ckpt")
        for dx in ("df", "vasc"):
            run_stgan_class(cfg, dx, root / "prepared", gan / "base", gan / dx, root / "ckpt")
        (root / "synthetic").mkdir()
        yield root, cfg


def test_stage_two_file_holds_its_discriminator_and_still_loads_for_generation(pipeline):
    root, _ = pipeline
    path = root / "gan" / "stgan" / "df" / "df.pt"
    saved = torch.load(path, map_location="cpu", weights_only=True)
    config, state = read_stgan_discriminator(path, "df")
    assert config == {"discriminator": "projected", "image_size": SIZE, "ndf": 8, "num_classes": None,
                      "feature_size": None, "seed": 0, "proj_channels": 64, "cmap_dim": 64, "label": None}
    d = ProjectedDiscriminator(SIZE, ndf=8, seed=0)
    d.load_state_dict(state)  # strict: the config rebuilds exactly this D
    base = torch.load(root / "gan" / "stgan" / "base" / "base.pt", map_location="cpu", weights_only=True)["D"]
    trainable = [k for k in state if k.startswith("discs.") and "running" not in k and "num_batches" not in k]
    assert any(not torch.equal(state[k], base[k]) for k in trainable), "stage 2 saved the stage-1 D"
    g, meta = load_generator(path)  # the generator part is as before
    assert meta["generator"] == "fastgan" and set(saved) >= {"state_dict", "config", "classes", "D", "D_config"}
    assert sample_images(g, 3, seed=1).shape == (3, SIZE, SIZE, 3)


def test_validate_augmented_copies_the_experts_for_an_experts_arm_only(pipeline):
    root, cfg = pipeline
    out = {}
    for arm in ("plain", "class_experts"):
        run_validate_augmented(cfg, arm, root / "prepared", root / "synthetic", root / "trainsets" / arm,
                               root / "reports" / arm)
        out[arm] = root / "trainsets" / arm
    plain_files = sorted(p.name for p in out["plain"].iterdir())
    assert plain_files == [MARKER, "extra.csv", "extra_images.npy", "extra_labels.npy", "spec.json"]  # + output marker
    assert json.loads((out["plain"] / "spec.json").read_text()) == {"arm": "plain", "extra": "none", "targets": {},
                                                                     "n_extra": 0}
    assert sorted(p.name for p in out["class_experts"].iterdir()) == sorted([*plain_files, EXPERTS_FILE])
    for name in ("extra.csv", "extra_images.npy", "extra_labels.npy"):
        assert (out["plain"] / name).read_bytes() == (out["class_experts"] / name).read_bytes()
    spec = json.loads((out["class_experts"] / "spec.json").read_text())
    assert spec["experts"]["classes"] == ["df", "vasc"] and spec["experts"]["groups"] == [["df", "vasc"]]

    bank = load_experts(out["class_experts"], parse_experts({"method": "stgan"}, CLASSES), "class_experts")
    x = gan_images(4)
    for name in ("df", "vasc"):  # the bank is the stage-2 D, in eval mode
        config, state = read_stgan_discriminator(root / "gan" / "stgan" / name / f"{name}.pt", name)
        d = ProjectedDiscriminator(SIZE, ndf=8, seed=0)
        d.load_state_dict(state)
        with torch.no_grad():
            pooled = d.eval().barlow_features(x)
        start = 0 if name == "df" else bank.widths["df"]
        assert torch.allclose(bank(x)[:, start:start + pooled.shape[1]], pooled, atol=1e-5)
    with pytest.raises(DermaganError, match="asks for"):
        load_experts(out["class_experts"], parse_experts({"method": "stgan", "classes": ["df"]}, CLASSES),
                     "class_experts")
    with pytest.raises(DermaganError, match="validate_augmented@plain"):
        build_expert_classifier(cfg.recipe("plain"), CLASSES, SIZE, {"method": "stgan"}, out["plain"],
                                "plain")


def test_experts_arm_trains_saves_and_reloads_identically(pipeline):
    root, cfg = pipeline
    trainset = root / "trainsets" / "class_experts"
    if not (trainset / EXPERTS_FILE).is_file():
        run_validate_augmented(cfg, "class_experts", root / "prepared", root / "synthetic", trainset,
                               root / "reports" / "class_experts")
    info = run_train(cfg, "class_experts", 0, root / "prepared", trainset, root / "models" / "ce",
                     root / "history.csv", root / "ckpt")
    model, saved_info = load_trained(root / "models" / "ce")
    assert isinstance(model, ClassExpertClassifier) and saved_info["version"] == info["version"]
    assert float(model.temperature) != 1.0  # temperature scaling ran and travelled
    saved = torch.load(root / "models" / "ce" / "model.pt", map_location="cpu", weights_only=True)
    assert saved["kind"] == "class_experts" and saved["class_experts"]["classes"] == ["df", "vasc"]
    experts = torch.load(trainset / EXPERTS_FILE, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in experts.items():  # real training left every expert tensor bit-identical
        assert torch.equal(saved["state_dict"][f"experts.{key}"], value), key

    val = read_split(root / "prepared", "val")
    logits = predict_logits(model, val.images, 16, torch.device("cpu"))
    again, _ = load_trained(root / "models" / "ce")
    assert np.array_equal(predict_logits(again, val.images, 16, torch.device("cpu")), logits)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    registered = load_registered(info["model_uri"])  # the registered weights file, no pickle
    assert isinstance(registered, ClassExpertClassifier)
    assert np.allclose(predict_logits(registered, val.images, 16, torch.device("cpu")), logits, atol=1e-6)


def test_old_stage_two_file_without_discriminator_is_named(tmp_path):
    path = tmp_path / "df.pt"
    torch.save({"state_dict": {}, "config": {}}, path)
    with pytest.raises(DermaganError, match=r"df.pt: holds no stage-2 discriminator.*train_stgan@df"):
        read_stgan_discriminator(path, "df")
    with pytest.raises(DermaganError, match="train_stgan@vasc"):
        read_stgan_discriminator(tmp_path / "vasc.pt", "vasc")

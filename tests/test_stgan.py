"""FastGAN generator, Barlow Twins, Freeze-D and the two STGAN stages on tiny made-up data."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import mlflow
import pytest
import torch

from conftest import make_ham_folder
from params_util import make_config
from dermagan.config import Config
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.data.prepare import PrepareConfig, prepare_dataset
from dermagan.gan.factory import create_discriminator, create_generator
from dermagan.gan.fastgan import FastGanGenerator, SkipLayerExcitation, sle_pairs
from dermagan.gan.generate import load_generator, read_generator_index, sample_images
from dermagan.gan.losses import barlow_twins_loss
from dermagan.gan.runs import GENERATOR_MODEL
from dermagan.gan.stgan import StganConfig, StganTrainer
from dermagan.gan.train import resume_gan, save_gan_checkpoint, train_gan
from dermagan.stages.generate import run_generate
from dermagan.stages.train_stgan import run_stgan_base, run_stgan_class

SIZE = 32


# --- generator -----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [64, 128])
def test_fastgan_output_shapes_and_sle_wiring(size):
    torch.manual_seed(0)
    g = FastGanGenerator(size, latent_dim=16, ngf=8)
    assert g(torch.randn(3, 16)).shape == (3, 3, size, size)
    expected = {64: [(4, 32), (8, 64)], 128: [(4, 32), (8, 64), (16, 128)]}[size]
    assert sle_pairs(size) == expected and sorted(g.sle) == sorted(f"{lo}_{hi}" for lo, hi in expected)
    cond = FastGanGenerator(size, latent_dim=16, ngf=8, num_classes=3)
    out = cond(torch.randn(4, 16), torch.tensor([0, 1, 2, 0]))
    assert out.shape == (4, 3, size, size) and out.abs().max() <= 1
    with pytest.raises(ValueError, match="labels"):
        cond(torch.randn(2, 16))


def test_skip_layer_excitation_gates_high_resolution_channels_from_the_low_resolution_map():
    torch.manual_seed(0)
    sle = SkipLayerExcitation(c_low=8, c_high=4)
    sle(torch.randn(16, 8, 4, 4), torch.randn(16, 4, 32, 32))  # training forwards run spectral norm's power iteration
    sle(torch.randn(16, 8, 4, 4), torch.randn(16, 4, 32, 32))
    sle.eval()
    low, high = torch.randn(2, 8, 4, 4), torch.randn(2, 4, 32, 32)
    out = sle(low, high)
    gate = out / high  # one gate per (image, channel), in (0, 1), the same at every pixel
    assert out.shape == high.shape
    assert torch.allclose(gate, gate[:, :, :1, :1].expand_as(gate), atol=1e-5)
    assert (gate > 0).all() and (gate < 1).all()
    assert not torch.allclose(sle(torch.randn(2, 8, 4, 4), high), out), "the gate depends on the low-res map"


def test_fastgan_low_resolution_maps_reach_the_output_through_sle(monkeypatch):
    """Replacing each SLE by a pass-through changes the image, everything else held fixed."""
    torch.manual_seed(0)
    g = FastGanGenerator(64, latent_dim=16, ngf=8)
    g(torch.randn(8, 16))  # a training forward: BatchNorm statistics and spectral-norm estimates
    g.eval()
    z = torch.randn(2, 16)

    def image() -> torch.Tensor:
        with torch.random.fork_rng():
            torch.manual_seed(1)
            return g(z)

    base = image()
    for name in g.sle:
        monkeypatch.setattr(g.sle[name], "forward", lambda low, high: high)
        changed = image()
        assert torch.isfinite(changed).all() and not torch.allclose(base, changed), name
        monkeypatch.undo()


def test_factory_builds_every_registered_network_and_names_unknown_ones():
    g = create_generator("fastgan", image_size=SIZE, latent_dim=8, ngf=8, num_classes=None)
    d = create_discriminator("projected", image_size=SIZE, ndf=8, num_classes=None, feature_size=None, seed=0)
    assert d(g(torch.randn(2, 8))).shape[0] == 2
    with pytest.raises(Exception, match="unknown generator 'stylegan'"):
        create_generator("stylegan", image_size=SIZE, latent_dim=8, ngf=8, num_classes=None)


# --- Barlow Twins --------------------------------------------------------------------------
def test_barlow_twins_matches_a_hand_computation():
    a = torch.tensor([[1.0, 2.0], [3.0, 1.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 2.0], [1.0, 0.0]])
    za = (a - a.mean(0)) / a.std(0, unbiased=False)
    zb = (b - b.mean(0)) / b.std(0, unbiased=False)
    c = za.T @ zb / 3
    lambd = 0.5
    hand = ((1 - c[0, 0]) ** 2 + (1 - c[1, 1]) ** 2 + lambd * (c[0, 1] ** 2 + c[1, 0] ** 2)) / 2
    assert torch.allclose(barlow_twins_loss(a, b, lambd), hand)
    # written out by hand: centred columns a = ([-1, 1, 0], [1, 0, -1]), b = ([-1, 1, 0], [0, 1, -1]), var 2/3
    assert torch.allclose(c, torch.tensor([[1.0, 0.5], [-0.5, 0.5]]), atol=1e-6)
    assert torch.allclose(barlow_twins_loss(a, b, lambd), torch.tensor((0 + 0.25 + 0.5 * 0.5) / 2))


def test_barlow_twins_is_zero_for_identical_decorrelated_features():
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # unit variance, uncorrelated
    assert barlow_twins_loss(x, x.clone()).abs().item() < 1e-10
    assert barlow_twins_loss(x, x.flip(0)).item() > 0


# --- trainer: Freeze-D, resume -------------------------------------------------------------
def tiny_config(**kw) -> StganConfig:
    base = dict(image_size=SIZE, latent_dim=8, ngf=8, ndf=8, batch_size=4, total_images=16,
                ema_half_life_images=8, snapshot_every_images=8, checkpoint_every_images=8, grid_size=4)
    return StganConfig(**{**base, **kw})


def images(n: int = 12) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


@pytest.mark.parametrize("disc", ["projected", "fastgan"])
def test_freeze_d_keeps_the_frozen_blocks_bit_identical(disc):
    trainer = StganTrainer(tiny_config(discriminator=disc, freeze_d_blocks=1, barlow_weight=0.5), images(), None,
                           torch.device("cpu"))
    assert trainer.frozen, "Freeze-D froze nothing"
    frozen = {n: p.detach().clone() for n, p in trainer.D.named_parameters() if n in set(trainer.frozen)}
    trainable = {n: p.detach().clone() for n, p in trainer.D.named_parameters() if p.requires_grad}
    for _ in range(3):
        losses = trainer.step()
    assert "gan/d_barlow" in losses
    after = dict(trainer.D.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    assert any(not torch.equal(after[n], v) for n, v in trainable.items()), "D did not learn"


@pytest.mark.parametrize("disc", ["projected", "fastgan"])
def test_resume_is_bit_identical(tmp_path, disc):
    cfg = tiny_config(discriminator=disc, barlow_weight=0.1, total_images=24)
    full = train_gan(StganTrainer(cfg, images(), None, torch.device("cpu")))
    first = StganTrainer(cfg, images(), None, torch.device("cpu"))
    train_gan(first, tmp_path / "ck.pt", stop_after_images=8)  # "killed" after a checkpoint at 8
    resumed = StganTrainer(cfg, images(), None, torch.device("cpu"))
    assert resume_gan(resumed, tmp_path / "ck.pt") and resumed.images_seen == 8
    train_gan(resumed, tmp_path / "ck.pt")
    for a, b in zip(full.G_ema.state_dict().values(), resumed.G_ema.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.D.state_dict().values(), resumed.D.state_dict().values()):
        assert torch.equal(a, b)


# --- the two stages ------------------------------------------------------------------------
def stgan_params(tmp_path: Path) -> dict:
    """The test's params blocks (``make_config`` completes them from params.yaml)."""
    return {
        "prepare": {"image_size": SIZE},
        "train": {"device": "cpu"},
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
                          "per_class": {"df": {"total_images": 8}, "vasc": {"total_images": 4}}}},
    }


@pytest.fixture
def prepared(tmp_path, tracking) -> Path:
    raw = make_ham_folder(tmp_path / "raw", per_class=8)
    prepare_dataset(raw, tmp_path / "prepared", tmp_path / "eda", PrepareConfig(SIZE, 0.2, 0.2, 0, CLASSES))
    return tmp_path / "prepared"


@pytest.mark.parametrize("conditional", [False, True])
def test_stage_two_starts_from_stage_one_and_is_tagged_with_its_version(prepared, tmp_path, conditional,
                                                                       monkeypatch):
    params = stgan_params(tmp_path)
    params["gan"]["stgan"]["net"]["conditional"] = conditional
    cfg = make_config(params)
    base = run_stgan_base(cfg, prepared, tmp_path / "gan" / "base", tmp_path / "ckpt")
    saved = torch.load(tmp_path / "gan" / "base" / "base.pt", weights_only=True)

    seen = {}
    original = StganTrainer.__init__

    def spy(self, cfg, imgs, labels, device, init=None):
        original(self, cfg, imgs, labels, device, init)
        seen["G"] = copy.deepcopy(self.G.state_dict())
        seen["D"] = copy.deepcopy(self.D.state_dict())
        seen["labels"] = labels

    monkeypatch.setattr(StganTrainer, "__init__", spy)
    info = run_stgan_class(cfg, "df", prepared, tmp_path / "gan" / "base", tmp_path / "gan" / "df",
                           tmp_path / "ckpt")
    for key, value in saved["G"].items():
        assert torch.equal(seen["G"][key], value), f"stage 2 G does not start from stage 1 at {key}"
    for key, value in saved["D"].items():
        assert torch.equal(seen["D"][key], value), f"stage 2 D does not start from stage 1 at {key}"
    assert info["stage1_version"] == base["version"] and info["images_seen"] == 8

    client = mlflow.MlflowClient()
    versions = {str(v.version): v for v in client.search_model_versions(f"name='{GENERATOR_MODEL}'")}
    assert versions[base["version"]].tags["stgan_stage"] == "1"
    assert versions[info["version"]].tags["stage1_version"] == base["version"]
    assert versions[info["version"]].tags["stgan_stage"] == "2"
    index = read_generator_index(tmp_path / "gan")
    assert list(index) == ["df"] and Path(index["df"]["path"]).is_file()
    g, meta = load_generator(Path(index["df"]["path"]))
    assert meta["label"] == (CLASSES.index("df") if conditional else None)  # the class index among the 7
    a, b = sample_images(g, 5, seed=2, label=meta["label"]), sample_images(g, 5, seed=2, label=meta["label"])
    assert a.shape == (5, SIZE, SIZE, 3) and (a == b).all()


def test_stage_two_refuses_a_stage_one_trained_with_other_network_settings(prepared, tmp_path):
    params = stgan_params(tmp_path)
    run_stgan_base(make_config(params), prepared, tmp_path / "base", tmp_path / "ckpt")
    params["gan"]["stgan"]["net"]["ngf"] = 16
    with pytest.raises(Exception, match=r"other gan.stgan.net settings \(\['ngf'\]\)"):
        run_stgan_class(make_config(params), "df", prepared, tmp_path / "base", tmp_path / "df", tmp_path / "ckpt")


def test_missing_per_class_entry_and_unknown_key_are_named(tmp_path):
    params = stgan_params(tmp_path)
    assert isinstance(make_config(params), Config)
    params["gan"]["classes"] = ["df", "vasc", "akiec"]
    with pytest.raises(Exception, match="per_class has no entry for class 'akiec'"):
        make_config(params)  # refused when params are loaded, before any stage runs
    params = stgan_params(tmp_path)
    params["gan"]["stgan"]["stage2"]["freeze_blocks"] = 1
    with pytest.raises(Exception, match="unknown gan.stgan keys \\['freeze_blocks'\\]"):
        make_config(params)
    with pytest.raises(Exception, match="class 'akiec' is not in params gan.classes"):
        make_config(stgan_params(tmp_path)).stgan_config("stage2", "akiec")


def test_generate_reads_the_per_class_stage_two_folders(prepared, tmp_path):
    cfg = make_config(stgan_params(tmp_path))
    run_stgan_base(cfg, prepared, tmp_path / "gan" / "base", tmp_path / "ckpt")
    for dx in ("df", "vasc"):
        run_stgan_class(cfg, dx, prepared, tmp_path / "gan" / "base", tmp_path / "gan" / dx, tmp_path / "ckpt")
    manifest = run_generate(cfg, "stgan", prepared, tmp_path / "gan", tmp_path / "synthetic")
    assert manifest["class"].value_counts().to_dict() == {"df": 3, "vasc": 3}
    versions = json.loads((tmp_path / "gan" / "vasc" / "generators.json").read_text())["vasc"]["version"]
    assert set(manifest.loc[manifest["class"] == "vasc", "generator_version"].astype(str)) == {versions}


def test_bench_reports_throughput_and_a_fidelity_curve_against_images_seen():
    from dermagan.gan.bench import fidelity_curve, profile_gan_step

    trainer = StganTrainer(tiny_config(), images(), None, torch.device("cpu"))
    result = profile_gan_step(trainer, steps=2, warmup=1)
    assert result["step_images_per_s"] > 0 and result["raw_step_images_per_s"] > 0 and result["ratio"] > 0
    fresh = StganTrainer(tiny_config(total_images=16), images(), None, torch.device("cpu"))
    seen = []
    points = fidelity_curve(fresh, lambda fake: {"mean": float(fake.mean()), "n": len(fake)}, eval_every=8,
                            n_samples=3, on_point=lambda point, fake: seen.append(fake.shape))
    assert [p["images_seen"] for p in points] == [0, 8, 16] and all(p["n"] == 3 for p in points)
    assert seen == [(3, SIZE, SIZE, 3)] * 3 and points[0]["train_seconds"] == 0 < points[-1]["train_seconds"]


def test_stgan_refuses_a_discriminator_without_the_stgan_interface():
    with pytest.raises(Exception, match="must be one of \\('projected', 'fastgan'\\), got 'dcgan'"):
        StganTrainer(tiny_config(discriminator="dcgan"), images(), None, torch.device("cpu"))


def test_bench_gan_stage_two_curve_starts_from_stage_one(prepared, tmp_path):
    from dermagan.data.prepared import read_split
    from dermagan.fidelity import save_encoder, train_domain_encoder
    from dermagan.stages.bench_gan import run_bench_gan

    cfg = make_config(stgan_params(tmp_path))
    run_stgan_base(cfg, prepared, tmp_path / "gan" / "base", tmp_path / "ckpt")
    train = read_split(prepared, "train")
    encoder, _ = train_domain_encoder(train.images, train.labels, len(CLASSES), epochs=1, batch_size=8,
                                      progress=False)
    save_encoder(encoder, tmp_path / "enc" / "encoder.pt")
    result = run_bench_gan(cfg, prepared, stage=2, dx="df", steps=1, train_images=8, eval_every=4, n_samples=4,
                           domain_encoder=tmp_path / "enc", out=tmp_path / "bench.json", base=tmp_path / "gan" / "base")
    assert result["initialised_from"].endswith("base.pt") and result["class"] == "df"
    assert [p["images_seen"] for p in result["curve"]] == [0, 4, 8] and "fd_domain" in result["yardstick"]
    assert (tmp_path / "bench" / "samples_0000008.png").is_file()
    assert json.loads((tmp_path / "bench.json").read_text())["throughput"]["ratio"] > 0

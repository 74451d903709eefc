"""CycleGAN nv -> rare class: losses, networks, pool, bit-identical resume, the stages and source leakage."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import make_ham_folder, textured_image
from params_util import make_config
from dermagan.cli import build_parser
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.data.prepare import PrepareConfig, prepare_dataset
from dermagan.data.prepared import SplitArrays, read_split, write_split
from dermagan.errors import DermaganError
from dermagan.fidelity import save_encoder, source_distances, source_leakage, train_domain_encoder
from dermagan.gan.cyclegan import (
    CycleGanConfig,
    CycleGanTrainer,
    ImagePool,
    PatchDiscriminator,
    ResnetBlock,
    ResnetGenerator,
    cycle_loss,
    identity_loss,
    load_translator,
    lr_factor,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    translate,
)
from dermagan.gan.runs import GENERATOR_MODEL
from dermagan.gan.train import resume_gan, train_gan
from dermagan.stages.fidelity import run_fidelity
from dermagan.stages.generate import run_generate
from dermagan.stages.train_cyclegan import run_train_cyclegan
from dermagan.tracking.setup import configure

SIZE = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torch.set_num_threads(1): tiny batches on a shared 2-core machine run much faster on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- losses ------------------------------------------------------------------------------------
def test_cycle_and_identity_losses_match_a_hand_computation():
    real = torch.tensor([0.5, -0.5, 1.0, 0.0]).view(1, 1, 2, 2)
    other = torch.tensor([0.0, 0.0, 0.5, 1.0]).view(1, 1, 2, 2)  # |diff| = 0.5, 0.5, 0.5, 1.0: mean 0.625
    assert cycle_loss(real, other, 10.0).item() == pytest.approx(6.25)
    assert identity_loss(real, other, 10.0, 0.5).item() == pytest.approx(0.5 * 10 * 0.625)
    assert identity_loss(real, other, 10.0, 0.0).item() == 0.0
    assert cycle_loss(real, real, 10.0).item() == 0.0


def test_lsgan_losses_with_one_sided_smoothing_match_a_hand_computation():
    real, fake = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 0.5])
    # D: real target 0.9 -> (0.1^2 + 0.4^2) / 2 = 0.085; fake target 0 -> (0 + 0.25) / 2 = 0.125; halved sum
    assert lsgan_discriminator_loss(real, fake, 0.1).item() == pytest.approx(0.5 * (0.085 + 0.125))
    # unsmoothed: (0 + 0.25) / 2 = 0.125 for the reals
    assert lsgan_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.125 + 0.125))
    # G: target 1 whatever D's smoothing: (1 + 0.25) / 2
    assert lsgan_generator_loss(fake).item() == pytest.approx(0.625)


def test_lr_decays_linearly_over_the_second_half():
    assert lr_factor(0, 100, 0.5) == 1.0 and lr_factor(49, 100, 0.5) == 1.0
    assert lr_factor(75, 100, 0.5) == pytest.approx(0.5) and lr_factor(100, 100, 0.5) == 0.0
    assert lr_factor(99, 100, 1.0) == 1.0  # decay_start 1: constant


# --- networks -------------------------------------------------------------------------------------
def test_generator_and_patch_discriminator_shapes_at_64_px():
    torch.manual_seed(0)
    cfg = CycleGanConfig()
    g, d = ResnetGenerator(cfg.ngf, cfg.n_blocks), PatchDiscriminator(cfg.ndf)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = g(x)
    assert y.shape == (2, 3, 64, 64) and y.abs().max() <= 1
    assert d(x).shape == (2, 1, 6, 6)  # a patch map, one raw score per overlapping patch
    assert sum(isinstance(m, ResnetBlock) for m in g.modules()) == 6
    assert sum(isinstance(m, ResnetBlock) for m in ResnetGenerator(8, 3).modules()) == 3
    # instance norm: each image is translated independently of its batch
    assert torch.allclose(g(x[:1]), y[:1], atol=1e-5)


# --- history pool ---------------------------------------------------------------------------------
def constant_batch(values: list[int]) -> torch.Tensor:
    return torch.stack([torch.full((3, 2, 2), float(v)) for v in values])


def test_history_pool_is_deterministic_and_returns_pool_images_once_full():
    outputs = []
    for _ in range(2):
        pool = ImagePool(4, seed=7)
        outputs.append([pool.query(constant_batch([2 * i, 2 * i + 1]))[:, 0, 0, 0].tolist() for i in range(8)])
    assert outputs[0] == outputs[1], "same seed, same inputs: same outputs"
    first = outputs[0]
    assert first[0] == [0, 1] and first[1] == [2, 3], "until the pool is full it returns the new fakes"
    later = [v for i, batch in enumerate(first[2:], start=2) for v in batch if v < 2 * i]
    assert later, "a full pool returns stored past fakes"
    assert set(later) <= set(range(16))
    assert torch.equal(ImagePool(0, seed=0).query(constant_batch([5, 6])), constant_batch([5, 6]))
    state = pool.state_dict()  # save/restore continues the same sequence
    again = ImagePool(4, seed=99)
    again.load_state_dict(state)
    assert torch.equal(pool.query(constant_batch([40, 41])), again.query(constant_batch([40, 41])))


# --- trainer: bit-identical resume ----------------------------------------------------------------
def tiny_config(**kw) -> CycleGanConfig:
    base = dict(image_size=SIZE, ngf=4, ndf=4, n_blocks=1, batch_size=2, total_images=16, pool_size=3,
                label_smoothing=0.1, snapshot_every_images=8, checkpoint_every_images=8, grid_size=3)
    return CycleGanConfig(**{**base, **kw})


def domains() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (10, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8),
            torch.randint(0, 256, (6, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8))


def flat_state(state, prefix: str = "") -> dict:
    """Every tensor and plain value of a nested state dict, by dotted key."""
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in flat_state(value, f"{prefix}{key}.").items()}
    if isinstance(state, (list, tuple)):
        return {k: v for i, value in enumerate(state) for k, v in flat_state(value, f"{prefix}{i}.").items()}
    return {prefix: state}


def test_resume_after_a_kill_is_bit_identical(tmp_path):
    cfg = tiny_config()
    full = train_gan(CycleGanTrainer(cfg, *domains(), torch.device("cpu")))
    first = CycleGanTrainer(cfg, *domains(), torch.device("cpu"))
    grids = []
    train_gan(first, tmp_path / "ck.pt", on_snapshot=lambda seen, grid: grids.append(grid), stop_after_images=8)
    assert len(grids) == 1 and grids[0].shape[0] == 3  # source | translated pairs
    torch.manual_seed(1234)  # nothing in training may depend on torch's global RNG
    resumed = CycleGanTrainer(cfg, *domains(), torch.device("cpu"))
    assert resume_gan(resumed, tmp_path / "ck.pt") and resumed.images_seen == 8
    assert not resume_gan(CycleGanTrainer(tiny_config(seed=1), *domains(), torch.device("cpu")), tmp_path / "ck.pt")
    train_gan(resumed, tmp_path / "ck.pt")
    a, b = flat_state(full.state_dict()), flat_state(resumed.state_dict())
    assert a.keys() == b.keys() and full.images_seen == resumed.images_seen == 16
    assert len(full.pool_a.images) == 3, "the pool filled"
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key
    untrained = CycleGanTrainer(cfg, *domains(), torch.device("cpu"))
    assert not torch.equal(untrained.G_AB.net[1].weight, full.G_AB.net[1].weight), "G_AB did not learn"


# --- source leakage -------------------------------------------------------------------------------
def test_source_leakage_flags_a_planted_copy_and_not_random_images():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(60, 16))
    source = rng.choice(60, size=40, replace=False)
    translated = rng.normal(size=(40, 16))
    clean = source_leakage(translated, reference, source)
    assert clean["flagged"] == 0 and clean["n_translated"] == 40 and clean["n_reference"] == 60
    assert clean["chance_own_nearest"] == pytest.approx(1 / 60) and clean["ratio_median"] > 1
    planted = translated.copy()
    planted[3] = reference[source[3]]  # a "translation" that is its source
    own, other = source_distances(planted, reference, source)
    assert own[3] == 0 and other[3] > 0
    report = source_leakage(planted, reference, source)
    assert report["flagged"] == 1 and report["share_own_nearest"] >= 1 / 40
    near = reference[source] + 0.01 * rng.normal(size=(40, 16))  # every image a near-copy of its source
    leaky = source_leakage(near, reference, source)
    assert leaky["share_own_nearest"] == 1 and leaky["ratio_median"] < 0.1 and leaky["flagged"] == 40
    with pytest.raises(DermaganError, match="source_index"):
        source_leakage(translated, reference, np.full(40, 60))


# --- the stages -----------------------------------------------------------------------------------
def cyclegan_params() -> dict:
    """The test's params blocks (``make_config`` completes them from params.yaml)."""
    return {
        "prepare": {"image_size": SIZE},
        "train": {"device": "cpu"},
        "gan": {"classes": ["df", "vasc"], "amount": {"mode": "count", "value": 2}, "candidates_factor": 1.5,
                "generate_seed": 5, "experiment": "cyclegan-test",
                "cyclegan": {"net": {"ngf": 4, "ndf": 4, "n_blocks": 1, "batch_size": 2, "pool_size": 2,
                                     "snapshot_every_images": 4, "checkpoint_every_images": 4, "grid_size": 2,
                                     "seed": 0},
                             "per_class": {"df": {"total_images": 8}, "vasc": {"total_images": 4,
                                                                                "lambda_identity": 0.0}}}},
    }


def test_config_errors_name_the_field():
    params = cyclegan_params()
    cfg = make_config(params)
    assert cfg.cyclegan_config("vasc").lambda_identity == 0.0 and cfg.cyclegan_config("df").image_size == SIZE
    with pytest.raises(DermaganError, match="class 'akiec' is not in params gan.classes"):
        cfg.cyclegan_config("akiec")
    params["gan"]["classes"] = ["df", "vasc", "akiec"]
    with pytest.raises(DermaganError, match="gan.cyclegan.per_class has no entry for class 'akiec'"):
        make_config(params).cyclegan_config("akiec")
    params["gan"]["cyclegan"]["classes"] = ["df", "vasc", "akiec"]
    with pytest.raises(DermaganError, match="gan.cyclegan.per_class has no entry for class 'akiec'"):
        make_config(params)  # a class the pipeline trains is checked when params are loaded
    params = cyclegan_params()
    params["gan"]["cyclegan"]["per_class"]["df"]["ngf_typo"] = 3
    with pytest.raises(DermaganError, match=r"unknown gan.cyclegan keys \['ngf_typo'\]"):
        make_config(params).cyclegan_config("df")
    args = build_parser().parse_args(["generate", "--method", "cyclegan", "--gan-dir", "g", "--out", "o"])
    assert args.method == "cyclegan"
    assert build_parser().parse_args(["train-cyclegan", "--class", "df", "--out", "o"]).dx == "df"


@pytest.fixture
def prepared(tmp_path, tracking) -> Path:
    raw = make_ham_folder(tmp_path / "raw", per_class=10)
    prepare_dataset(raw, tmp_path / "prepared", tmp_path / "eda", PrepareConfig(SIZE, 0.2, 0.2, 0, CLASSES))
    return tmp_path / "prepared"


def test_train_cyclegan_reads_train_only_registers_and_generates_with_sources(prepared, tmp_path):
    cfg = make_config(cyclegan_params())
    train = read_split(prepared, "train")
    for name in ("val.npz", "test.npz", "splits.csv"):  # the stage may only need train.npz
        (prepared / name).unlink()
    gan_dir = tmp_path / "gan" / "cyclegan"
    infos = {dx: run_train_cyclegan(cfg, dx, prepared, gan_dir / dx, tmp_path / "ckpt") for dx in ("df", "vasc")}
    assert not list((tmp_path / "ckpt").rglob("*.pt")), "checkpoints are removed after a finished run"
    saved = torch.load(gan_dir / "df" / "df.pt", weights_only=True)
    assert saved["generator"] == "cyclegan" and saved["source_class"] == "nv" and saved["config"]["total_images"] == 8
    index = json.loads((gan_dir / "df" / "generators.json").read_text())
    assert index["df"]["file"] == "df.pt" and index["df"]["version"] == infos["df"]["version"]

    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name='{GENERATOR_MODEL}'")
    assert sorted(v.tags["gan_classes"] for v in versions) == ["df", "vasc"]
    assert all(v.tags["method"] == "cyclegan" and v.tags["source_class"] == "nv" for v in versions)
    run = client.get_run(infos["df"]["run_id"])
    assert run.data.metrics["gan/images_seen"] == 8 and "gan/cycle" in run.data.metrics
    assert "gan/identity" in run.data.metrics and "gan/identity" not in client.get_run(
        infos["vasc"]["run_id"]).data.metrics
    assert run.data.params["n_source_images"] == str(int((train.labels == CLASSES.index("nv")).sum()))
    assert run.data.tags["stage"] == "train_cyclegan"
    assert any(a.path.startswith("images") for a in client.list_artifacts(run.info.run_id)), "sample grids"

    manifest = run_generate(cfg, "cyclegan", prepared, gan_dir, tmp_path / "synthetic")
    assert manifest["class"].value_counts().to_dict() == {"df": 3, "vasc": 3}
    nv_ids = set(train.image_ids[train.labels == CLASSES.index("nv")].astype(str))
    assert set(manifest["source"]) <= nv_ids
    assert all(group["source"].is_unique for _, group in manifest.groupby("class"))
    written = pd.read_csv(tmp_path / "synthetic" / "manifest.csv")
    assert list(written.columns) == ["file", "class", "generator_version", "seed", "latent_index", "source"]
    again = run_generate(cfg, "cyclegan", prepared, gan_dir, tmp_path / "synthetic2")
    assert again.equals(manifest)
    for file in manifest["file"]:
        assert (tmp_path / "synthetic" / file).read_bytes() == (tmp_path / "synthetic2" / file).read_bytes()
    # each PNG is its source image put through the saved translator
    df = manifest[manifest["class"] == "df"]
    translator, _ = load_translator(gan_dir / "df" / "df.pt")
    ids = list(train.image_ids.astype(str))
    expected = translate(translator, train.images[[ids.index(s) for s in df["source"]]])
    pngs = np.stack([np.asarray(Image.open(tmp_path / "synthetic" / f)) for f in df["file"]])
    assert np.array_equal(pngs, expected)


# --- the fidelity stage with sources --------------------------------------------------------------
def test_fidelity_stage_adds_source_leakage_and_flags_a_planted_copy(tmp_path, tracking):
    rng = np.random.default_rng(0)
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    for split in ("train", "val", "test"):
        labels = np.repeat(np.arange(len(CLASSES)), 5)
        images = np.stack([textured_image(rng, SIZE, SIZE) for _ in labels])
        ids = np.array([f"{split}_{i}" for i in range(len(labels))])
        write_split(prepared, split, SplitArrays(images, labels, ids))
    train = read_split(prepared, "train")
    nv = np.flatnonzero(train.labels == CLASSES.index("nv"))
    root, rows = tmp_path / "synthetic", []
    for dx in ("df", "vasc"):
        for i, src in enumerate(nv[:4]):
            image = train.images[src] if (dx, i) == ("df", 0) else textured_image(rng, SIZE, SIZE)  # planted copy
            file = f"{dx}/cyclegan_{dx}_{i:05d}.png"
            for folder in ("generated", "dedup"):
                (root / folder / dx).mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(root / folder / file)
            rows.append({"file": file, "class": dx, "generator_version": "1", "seed": 5, "latent_index": i,
                         "source": str(train.image_ids[src])})
    generated = pd.DataFrame(rows)
    generated.to_csv(root / "generated" / "manifest.csv", index=False)
    decisions = generated.assign(reason="kept", nearest_train_phash=20, nearest_train_whash=20)
    decisions.to_csv(root / "dedup" / "manifest.csv", index=False)
    (tmp_path / "report").mkdir()
    decisions.to_csv(tmp_path / "report" / "decisions.csv", index=False)
    configure("gan-test")
    index = {}
    for dx in ("df", "vasc"):
        with mlflow.start_run(run_name=f"cyclegan-{dx}") as run:
            index[dx] = {"run_id": run.info.run_id, "version": "1", "classes": [dx], "file": f"{dx}.pt"}
        (tmp_path / "gan" / dx).mkdir(parents=True)
        (tmp_path / "gan" / dx / "generators.json").write_text(json.dumps({dx: index[dx]}))
    model, _ = train_domain_encoder(train.images, train.labels, len(CLASSES), epochs=1, batch_size=8, progress=False)
    save_encoder(model, tmp_path / "encoder" / "encoder.pt")
    cfg = make_config({"gan": {"classes": ["df", "vasc"], "experiment": "gan-test"}, "train": {"device": "cpu"},
                          "fidelity": {"feature_size": 32, "knn_k": 3, "seed": 0, "grid_images": 2,
                                       "nearest_examples": 2,
                                       "cas": {"epochs": 1, "batch_size": 8, "lr": 0.002, "seeds": [0]},
                                       "two_sample": {"folds": 2, "bootstrap_samples": 5}}})
    document = run_fidelity(cfg, "cyclegan", prepared, root, tmp_path / "report", tmp_path / "gan",
                            tmp_path / "fidelity.json", tmp_path / "plots", domain_encoder=tmp_path / "encoder")
    leak = document["classes"]["df"]["source_leakage"]
    assert set(leak) == {"dedup", "generated"} and leak["dedup"]["source_class"] == "nv"
    assert leak["dedup"]["n_translated"] == 4 and leak["dedup"]["n_reference"] == 5
    assert "df/cyclegan_df_00000.png" in leak["dedup"]["flagged_files"] and leak["dedup"]["flagged"] >= 1
    assert json.loads((tmp_path / "fidelity.json").read_text()) == document
    metrics = mlflow.MlflowClient().get_run(index["df"]["run_id"]).data.metrics
    assert metrics["source_leakage/flagged"] >= 1 and "source_leakage_generated/own_distance_median" in metrics

"""Domain-space fidelity measures on planted cases whose answer we know (tiny 32 px data made here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from dermagan.errors import DermaganError
from dermagan.fidelity import (
    DOMAIN_SPACE,
    FEATURE_DIM,
    DomainEncoder,
    cas_report,
    domain_fidelity,
    encode,
    load_encoder,
    memorisation_report,
    nearest_train_distances,
    save_encoder,
    train_domain_encoder,
    two_sample_auc,
)
from dermagan.fidelity.two_sample import auc_from_scores

SIZE, CLASSES = 32, ("solid", "stripes", "checker", "ring")
CAS = {"epochs": 12, "batch_size": 16, "lr": 3e-3}


def planted_images(n_per_class: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One disc per image, its texture is the class: solid, stripes, checkerboard or ring.

    Colours, position, radius and pixel noise are random and carry no class information, and every
    class is unchanged by flips and 90-degree turns. A classifier that did not learn the textures
    (e.g. one trained on noise) therefore has no colour shortcut to chance-beating accuracy.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    for c in range(len(CLASSES)):
        for _ in range(n_per_class):
            bg = rng.uniform(40, 200, 3)
            fg = np.clip(bg + rng.choice([-1, 1], 3) * rng.uniform(50, 90, 3), 0, 255)
            r = rng.uniform(9, 14)
            cy, cx = rng.uniform(r, size - r, 2)
            d = np.hypot(yy - cy, xx - cx)
            mask = d <= r
            if c == 1:
                mask &= ((yy if rng.random() < 0.5 else xx) // 4) % 2 == 0
            elif c == 2:
                mask &= (yy // 4 + xx // 4) % 2 == 0
            elif c == 3:
                mask &= d >= r - 2
            image = np.where(mask[..., None], fg, bg) + rng.normal(0, 12, (size, size, 3))
            images.append(np.clip(image, 0, 255).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.array(labels)


def by_class(images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    return {name: images[labels == c] for c, name in enumerate(CLASSES)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: two on 2 cores shared with other work spin at OpenMP barriers whenever a
    neighbour holds a core, and training then runs 10-100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": planted_images(40, seed=0), "val": planted_images(20, seed=1), "fresh": planted_images(40, seed=2)}


@pytest.fixture(scope="module")
def encoder(data) -> DomainEncoder:
    x, y = data["train"]
    model, history = train_domain_encoder(x, y, len(CLASSES), epochs=3, batch_size=32, seed=0, progress=False)
    assert len(history["train_loss"]) == 3 and "val_bal_acc" not in history
    return model


# --- encoder ---------------------------------------------------------------------------------------

def test_encoder_features_shape_and_space(encoder, data):
    feats = encode(encoder, data["val"][0])
    assert feats.shape == (len(data["val"][0]), FEATURE_DIM) == (80, 256)
    assert feats.dtype == np.float64 and np.isfinite(feats).all()
    assert encode(encoder, data["val"][0][:0]).shape == (0, 256)
    assert DOMAIN_SPACE == "domain-cnn-ham10000-train-penultimate256"
    logits = encoder(torch.rand(2, 3, SIZE, SIZE))
    assert logits.shape == (2, len(CLASSES))


def test_encoder_training_is_deterministic_and_leaves_global_rng_alone(encoder, data):
    x, y = data["train"]
    before = torch.get_rng_state()
    again, _ = train_domain_encoder(x, y, len(CLASSES), epochs=3, batch_size=32, seed=0, progress=False)
    assert torch.equal(before, torch.get_rng_state())
    assert np.array_equal(encode(encoder, data["val"][0]), encode(again, data["val"][0]))
    other, _ = train_domain_encoder(x, y, len(CLASSES), epochs=3, batch_size=32, seed=1, progress=False)
    assert not np.allclose(encode(encoder, data["val"][0]), encode(other, data["val"][0]))


def test_encoder_learns_and_reports_val_balanced_accuracy(data):
    (x, y), (xv, yv) = data["train"], data["val"]
    _, history = train_domain_encoder(x, y, len(CLASSES), epochs=CAS["epochs"], batch_size=CAS["batch_size"],
                                      lr=CAS["lr"], seed=0, val_images=xv, val_labels=yv, progress=False)
    assert len(history["val_bal_acc"]) == CAS["epochs"]
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["val_bal_acc"][-1] > 0.8


def test_encoder_save_load_round_trip(encoder, data, tmp_path):
    path = save_encoder(encoder, tmp_path / "sub" / "encoder.pt")
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))
    loaded = load_encoder(path)
    assert torch.equal(loaded.mean, encoder.mean) and torch.equal(loaded.std, encoder.std)
    assert np.array_equal(encode(loaded, data["val"][0]), encode(encoder, data["val"][0]))
    assert torch.load(path, weights_only=True)["space"] == DOMAIN_SPACE


def test_encoder_rejects_bad_input(encoder, tmp_path):
    with pytest.raises(DermaganError, match="images"):
        train_domain_encoder(np.zeros((4, SIZE, SIZE, 3), np.float32), np.zeros(4, int), 2, epochs=1, progress=False)
    with pytest.raises(DermaganError, match="labels"):
        train_domain_encoder(np.zeros((4, SIZE, SIZE, 3), np.uint8), np.array([0, 1, 2, 5]), 3, epochs=1,
                             progress=False)
    with pytest.raises(DermaganError, match="trained on"):
        encode(encoder, np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(DermaganError, match="no saved encoder"):
        load_encoder(tmp_path / "missing.pt")


# --- classification accuracy score ----------------------------------------------------------------

def test_cas_real_as_synthetic_scores_like_real(data):
    """Fresh real images passed off as synthetic teach the classes as well as the real train images."""
    fresh = by_class(*data["fresh"])
    fresh["ring"] = fresh["ring"][:25]  # fewer "synthetic" rings: both sources then use 25 rings
    report = cas_report(fresh, by_class(*data["train"]), by_class(*data["val"]), seeds=[0, 1], **CAS)
    assert report["n_per_class"] == {"solid": 40, "stripes": 40, "checker": 40, "ring": 25}
    assert report["n_val_per_class"] == dict.fromkeys(CLASSES, 20)
    assert report["chance"] == 0.25 and report["seeds"] == [0, 1]
    assert report["cas_real"] > 0.7  # the planted classes are learnable (about 0.9 here)
    assert report["cas_ratio"] > 0.8
    assert report["cas_ratio"] == pytest.approx(report["cas_synthetic"] / report["cas_real"])


def test_cas_noise_scores_at_chance(data):
    x, _ = data["train"]
    noise = np.random.default_rng(7).integers(0, 256, x.shape, dtype=np.uint8)
    synthetic = {name: noise[c * 40:(c + 1) * 40] for c, name in enumerate(CLASSES)}
    report = cas_report(synthetic, by_class(*data["train"]), by_class(*data["val"]), seeds=[0], **CAS)
    assert report["cas_synthetic"] <= report["chance"] + 0.15
    assert report["cas_real"] > 0.8 and report["cas_ratio"] < 0.6
    assert report["cas_synthetic_std"] == 0.0  # one seed


def test_cas_report_rejects_missing_classes(data):
    train = by_class(*data["train"])
    with pytest.raises(DermaganError, match="real_val"):
        cas_report(train, train, {"solid": train["solid"]}, seeds=[0], epochs=1)
    with pytest.raises(DermaganError, match="at least 2 classes"):
        cas_report({"solid": train["solid"], "ring": train["ring"][:0]}, train, train, seeds=[0], epochs=1)


# --- two-sample classifier test --------------------------------------------------------------------

def test_two_sample_auc_same_distribution_is_near_half():
    rng = np.random.default_rng(0)
    result = two_sample_auc(rng.normal(size=(300, 8)), rng.normal(size=(200, 8)), n_boot=300)
    assert result["auc"] < 0.65 and result["ci_low"] <= 0.5 <= result["ci_high"]
    assert (result["n_real"], result["n_synthetic"], result["folds"]) == (300, 200, 5)


def test_two_sample_auc_shifted_distribution_is_near_one():
    rng = np.random.default_rng(1)
    result = two_sample_auc(rng.normal(size=(200, 8)), rng.normal(1.5, size=(200, 8)), n_boot=300)
    assert result["auc"] > 0.95 and result["ci_low"] > 0.9


def test_two_sample_auc_shrinks_folds_and_rejects_tiny_sets():
    rng = np.random.default_rng(2)
    assert two_sample_auc(rng.normal(size=(50, 4)), rng.normal(size=(3, 4)), n_boot=10)["folds"] == 3
    with pytest.raises(DermaganError, match="at least 2"):
        two_sample_auc(rng.normal(size=(50, 4)), rng.normal(size=(1, 4)))
    with pytest.raises(DermaganError, match="synthetic_features"):
        two_sample_auc(rng.normal(size=(50, 4)), rng.normal(size=(50, 5)))


def test_auc_from_scores_matches_scikit_learn():
    rng = np.random.default_rng(3)
    neg, pos = rng.integers(0, 5, 40).astype(float), rng.integers(1, 6, 30).astype(float)  # many ties
    expected = roc_auc_score(np.r_[np.zeros(40), np.ones(30)], np.r_[neg, pos])
    assert auc_from_scores(neg, pos) == pytest.approx(expected)


# --- memorisation -----------------------------------------------------------------------------------

def test_nearest_train_distances_matches_brute_force_across_chunks(monkeypatch):
    import dermagan.fidelity.memorisation as memorisation

    monkeypatch.setattr(memorisation, "CHUNK_ENTRIES", 100)  # several chunks of 2 queries
    rng = np.random.default_rng(4)
    query, train = rng.normal(size=(9, 5)), rng.normal(size=(50, 5))
    brute = np.sqrt(((query[:, None, :] - train[None, :, :]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nearest_train_distances(query, train), brute, rtol=1e-9)


def test_memorisation_flags_copies_and_not_fresh_samples():
    rng = np.random.default_rng(5)
    train, val = rng.normal(size=(2000, 16)), rng.normal(size=(500, 16))
    val_d = nearest_train_distances(val, train)
    copies = train[rng.choice(len(train), 300, replace=False)] + rng.normal(0, 1e-3, (300, 16))
    memorised = memorisation_report(nearest_train_distances(copies, train), val_d)
    assert memorised["ratio_median"] < 0.01 and memorised["share_closer_than_val_p5"] > 0.99
    fresh = memorisation_report(nearest_train_distances(rng.normal(size=(500, 16)), train), val_d)
    assert 0.8 < fresh["ratio_median"] < 1.2 and 0.0 <= fresh["share_closer_than_val_p5"] < 0.15
    assert (fresh["n_synthetic"], fresh["n_val"]) == (500, 500)


# --- Fréchet / KID / k-NN in the domain space -------------------------------------------------------

def test_domain_fidelity_key_names():
    rng = np.random.default_rng(6)
    metrics = domain_fidelity(rng.normal(size=(40, 8)), rng.normal(size=(30, 8)), k=3, seed=0)
    assert set(metrics) == {"fd_domain", "kid_domain", "kid_domain_std", "knn_precision_domain",
                            "knn_recall_domain", "n_real", "n_fake", "knn_k", "skipped_reason"}
    assert metrics["skipped_reason"] is None and np.isfinite(metrics["fd_domain"])
    skipped = domain_fidelity(rng.normal(size=(40, 8)), rng.normal(size=(1, 8)))
    assert np.isnan(skipped["fd_domain"]) and skipped["skipped_reason"]

"""Classification Accuracy Score (Ravuri & Vinyals, 2019): train on generated images, test on real ones.

A classifier that learns the classes from synthetic images alone and still recognises real
validation images shows that the synthetic images carry the class-defining features. The
baseline is the same classifier trained on as many real train images per class; a GAN can
not raise this score by fooling its own discriminator.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch

from dermagan.errors import DermaganError
from dermagan.evaluate.metrics import balanced_accuracy
from dermagan.fidelity.encoder import (
    check_images,
    check_labels,
    predict_labels,
    train_domain_encoder,
)


def classification_accuracy_score(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> float:
    """Balanced accuracy on the test images of a from-scratch ``DomainEncoder`` trained only on the train images."""
    test_labels = check_labels(test_labels, len(check_images(test_images, "test_images")), num_classes, "test_labels")
    if not len(test_labels):
        raise DermaganError("test_images: need at least one test image")
    model, _ = train_domain_encoder(train_images, train_labels, num_classes, epochs=epochs, batch_size=batch_size,
                                    lr=lr, seed=seed, device=device, progress=False)
    return balanced_accuracy(test_labels, predict_labels(model, test_images, device=device))


def _stack(images: Mapping[Hashable, np.ndarray], classes: list, counts: dict, rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray]:
    """A random subset of ``counts[c]`` images of each class, concatenated, with labels 0..K-1."""
    picked = [images[c][np.sort(rng.choice(len(images[c]), counts[c], replace=False))] for c in classes]
    labels = np.concatenate([np.full(counts[c], i, dtype=np.int64) for i, c in enumerate(classes)])
    return np.concatenate(picked), labels


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def cas_report(
    synthetic: Mapping[Hashable, np.ndarray],
    real_train: Mapping[Hashable, np.ndarray],
    real_val: Mapping[Hashable, np.ndarray],
    *,
    seeds: list[int],
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 2e-3,
    device: torch.device | str | None = None,
) -> dict:
    """CAS of the synthetic images next to the same-size real baseline, over ``seeds``.

    Each dict maps a class to its uint8 images (N, H, W, 3). The classes are those of ``synthetic``
    with at least one image; each needs real train and real val images. Per class,
    n_c = min(#synthetic, #real train) images are drawn from each source (a fresh subset per seed),
    so both classifiers see the same class sizes. Both are tested on every real val image of
    those classes. ``cas_ratio`` near 1 means the synthetic images teach the classes as well as
    real ones; ``chance`` is what a classifier that learnt nothing scores. Stds are over seeds
    (sample std; 0 with one seed).
    """
    if not seeds:
        raise DermaganError("cas: seeds must name at least one seed")
    classes = [c for c in synthetic if len(synthetic[c])]
    skipped = [c for c in synthetic if not len(synthetic[c])]
    for name, source in (("real_train", real_train), ("real_val", real_val)):
        missing = [c for c in classes if c not in source or not len(source[c])]
        if missing:
            raise DermaganError(f"cas: {name} has no images of the synthetic classes {missing}")
    if len(classes) < 2:
        raise DermaganError(f"cas: synthetic needs images of at least 2 classes, got {classes}")
    for name, source in (("synthetic", synthetic), ("real_train", real_train), ("real_val", real_val)):
        shapes = {tuple(check_images(source[c], f"{name}[{c!r}]").shape[1:]) for c in classes}
        if len(shapes) > 1 or shapes != {tuple(synthetic[classes[0]].shape[1:])}:
            raise DermaganError(f"cas: {name} images differ in size from the synthetic ones: {sorted(shapes)}")
    counts = {c: min(len(synthetic[c]), len(real_train[c])) for c in classes}
    val_images = np.concatenate([real_val[c] for c in classes])
    val_labels = np.concatenate([np.full(len(real_val[c]), i, dtype=np.int64) for i, c in enumerate(classes)])
    scores: dict[str, list[float]] = {"synthetic": [], "real": []}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for name, source in (("synthetic", synthetic), ("real", real_train)):
            x, y = _stack(source, classes, counts, rng)
            scores[name].append(classification_accuracy_score(
                x, y, val_images, val_labels, num_classes=len(classes), epochs=epochs, batch_size=batch_size,
                lr=lr, seed=int(seed), device=device))
    cas_syn, cas_syn_std = _mean_std(scores["synthetic"])
    cas_real, cas_real_std = _mean_std(scores["real"])
    return {"cas_synthetic": cas_syn, "cas_synthetic_std": cas_syn_std, "cas_real": cas_real,
            "cas_real_std": cas_real_std, "cas_ratio": cas_syn / cas_real if cas_real > 0 else float("nan"),
            "chance": 1.0 / len(classes), "cas_synthetic_per_seed": scores["synthetic"],
            "cas_real_per_seed": scores["real"], "classes": [str(c) for c in classes],
            "classes_skipped": [str(c) for c in skipped],
            "n_per_class": {str(c): int(counts[c]) for c in classes},
            "n_val_per_class": {str(c): int(len(real_val[c])) for c in classes}, "seeds": [int(s) for s in seeds]}

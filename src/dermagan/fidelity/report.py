"""The fidelity report of one method: per augmented class, how close its synthetic images are to real ones.

Two feature spaces, named in every key:

- **domain space** (``*_domain``): the penultimate layer of a from-scratch CNN trained on the real
  train split only (the domain_encoder stage). No discriminator ever saw it, so a GAN cannot have
  been optimised towards it. Fréchet distance, KID and k-NN precision/recall, a real-val-vs-synthetic
  two-sample classifier (ROC AUC with a bootstrap CI) and nearest-train distances (memorisation).
- **ImageNet space** (``*_effnetlite0``): ImageNet EfficientNet-Lite0 features (not Inception). A
  projected discriminator is trained in nearly this space, so these numbers can improve without
  better images (Kynkäänniemi et al., 2023); they are kept, labelled, for comparison.

Each class is compared against its real **train** images: the kept (dedup) synthetic set the
classifiers use, the full generated set, and the real **val** images as the yardstick of what "real
vs real" looks like at this sample size. The Classification Accuracy Score trains a small CNN on
the kept synthetic images alone and tests it on real val images. Test images are never read.
Settings come as the plain ``fidelity`` params block (``feature_size``, ``knn_k``, ``seed``,
``grid_images``, ``nearest_examples``, ``cas``, ``two_sample``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dermagan.data.prepared import SplitArrays
from dermagan.data.trainset import MANIFEST
from dermagan.dedup import REASONS
from dermagan.errors import DermaganError
from dermagan.evaluate.fidelity import (
    FEATURE_SPACE,
    FIDELITY_KEYS,
    extract_features,
    nearest_distance_summary,
    safe_fidelity_metrics,
)
from dermagan.evaluate.sample_grids import random_subset
from dermagan.fidelity.cas import cas_report
from dermagan.fidelity.domain import domain_fidelity
from dermagan.fidelity.encoder import DOMAIN_SPACE, FEATURE_DIM, encode
from dermagan.fidelity.leakage import source_distances, source_leakage_report
from dermagan.fidelity.memorisation import memorisation_report, nearest_train_distances
from dermagan.fidelity.two_sample import two_sample_auc

# Metrics-file name of each compared set -> MLflow prefix of its metrics.
SETS = {"dedup": "fidelity", "generated": "fidelity_generated", "real_val_reference": "fidelity_reference"}
SYNTHETIC_SETS = ("dedup", "generated")  # the folders under <synthetic_root> (kept, all generated)
HASHES = ("phash", "whash")
DECISIONS = "decisions.csv"  # the dedup report's per-image decisions
ENCODER_FILE = "encoder.pt"
SOURCE = "source"  # manifest column of image-to-image methods (cyclegan): the real train image translated


@dataclass
class FeatureSpaces:
    """The two feature spaces: ImageNet EfficientNet-Lite0 features and the domain encoder's."""

    net: torch.nn.Module
    encoder: torch.nn.Module
    feature_size: int
    device: torch.device

    def imagenet(self, images: np.ndarray) -> np.ndarray:
        return extract_features(self.net, images, self.feature_size, device=self.device)

    def domain(self, images: np.ndarray) -> np.ndarray:
        if not len(images):  # a class dedup emptied (its placeholder array is 1x1 px)
            return np.zeros((0, FEATURE_DIM))
        return encode(self.encoder, images, device=self.device)


@dataclass
class Scored:
    """The report (the metrics file's document) and the images its figures show, per class."""

    document: dict
    kept: dict[str, np.ndarray] = field(default_factory=dict)
    grid_real: dict[str, np.ndarray] = field(default_factory=dict)
    grid_synthetic: dict[str, np.ndarray] = field(default_factory=dict)
    near_real: dict[str, np.ndarray] = field(default_factory=dict)
    near_synthetic: dict[str, np.ndarray] = field(default_factory=dict)


def read_manifests(synthetic_root: Path) -> dict[str, pd.DataFrame]:
    """The kept (``dedup``) and ``generated`` manifests of one method."""
    return {name: pd.read_csv(Path(synthetic_root) / name / MANIFEST) for name in SYNTHETIC_SETS}


def score_classes(method: str, classes: list[str], task_classes: Sequence[str], train: SplitArrays,
                  val: SplitArrays, synthetic_root: Path, manifests: dict[str, pd.DataFrame], decisions: pd.DataFrame,
                  spaces: FeatureSpaces, settings: dict, log: Callable[[str], None] = print) -> Scored:
    """Score every class in ``classes``; ``log`` gets one progress line per class (and leakage lines)."""
    knn_k, seed = int(settings["knn_k"]), int(settings["seed"])
    document = {"method": method, "feature_space": FEATURE_SPACE, "feature_size": int(settings["feature_size"]),
                "domain_space": DOMAIN_SPACE, "knn_k": knn_k, "classes": {}}
    scored = Scored(document)
    train_domain = spaces.domain(train.images)
    translated = SOURCE in manifests["generated"] and manifests["generated"][SOURCE].notna().any()
    for offset, dx in enumerate(classes):
        started = time.perf_counter()
        sets = {"train": class_images(train, dx, task_classes),
                "real_val_reference": class_images(val, dx, task_classes),
                **{name: synthetic_images(Path(synthetic_root) / name, frame, dx) for name, frame in manifests.items()}}
        scored.kept[dx] = sets["dedup"]
        metrics = class_metrics(sets, spaces.imagenet, decisions, dx, knn_k, seed)
        class_mask = train.labels == list(task_classes).index(dx)
        metrics.update(domain_metrics(sets, spaces.domain, train_domain, class_mask, settings))
        if translated:  # only methods whose manifest names a source image get this block
            metrics["source_leakage"] = leakage_metrics(manifests, synthetic_root, sets, dx, spaces.domain, train,
                                                        train_domain, task_classes)
            log(leakage_line(method, dx, metrics["source_leakage"]))
        document["classes"][dx] = metrics
        grid, near = int(settings["grid_images"]), int(settings["nearest_examples"])
        scored.grid_real[dx] = random_subset(sets["train"], grid, seed + offset)
        scored.grid_synthetic[dx] = random_subset(sets["dedup"], grid, seed + offset)
        scored.near_synthetic[dx] = random_subset(sets["dedup"], near, seed + offset)
        scored.near_real[dx] = train.images[nearest_indices(spaces.domain(scored.near_synthetic[dx]), train_domain)]
        log(progress_line(method, dx, metrics, time.perf_counter() - started))
    return scored


def domain_metrics(sets: dict[str, np.ndarray], domain, train_domain: np.ndarray, class_mask: np.ndarray,
                   settings: dict) -> dict:
    """Domain-space numbers of one class: FD/KID/k-NN per set, two-sample AUC, memorisation."""
    k, seed = int(settings["knn_k"]), int(settings["seed"])
    real = train_domain[class_mask]
    feats = {name: domain(sets[name]) for name in SETS}
    result = {f"domain_{name}": domain_fidelity(real, feats[name], k, seed) for name in SETS}
    two = settings["two_sample"]
    val, kept = feats["real_val_reference"], feats["dedup"]
    if min(len(val), len(kept)) >= 2:
        result["two_sample"] = two_sample_auc(val, kept, folds=int(two["folds"]),
                                              n_boot=int(two["bootstrap_samples"]), seed=seed)
        result["memorisation_domain"] = memorisation_report(nearest_train_distances(kept, train_domain),
                                                            nearest_train_distances(val, train_domain))
    else:
        result["two_sample"] = {"skipped_reason": f"need 2 real val and 2 kept images, got {len(val)} and {len(kept)}"}
        result["memorisation_domain"] = {"skipped_reason": result["two_sample"]["skipped_reason"]}
    return result


def leakage_metrics(manifests: dict[str, pd.DataFrame], synthetic_root: Path, sets: dict[str, np.ndarray], dx: str,
                    domain, train: SplitArrays, train_domain: np.ndarray, task_classes: Sequence[str]) -> dict:
    """Source leakage (domain space) of the kept and the generated translations of one class.

    Each image's own source (manifest ``source``, a train image id) is compared with every train
    image of the source class; ``flagged_files`` lists the near-copies of their source.
    """
    row_of = {str(image_id): row for row, image_id in enumerate(train.image_ids)}
    result = {}
    for name, frame in manifests.items():
        where = Path(synthetic_root) / name / MANIFEST
        rows = frame[frame["class"] == dx]
        if not len(rows):
            result[name] = {"skipped_reason": f"no {name} images of class {dx}"}
            continue
        unknown = sorted({str(s) for s in rows[SOURCE] if str(s) not in row_of})
        if unknown:
            raise DermaganError(f"{where}: source(s) {unknown[:5]} of class {dx} are not real train image ids")
        positions = np.array([row_of[str(s)] for s in rows[SOURCE]])
        source_labels = np.unique(train.labels[positions])
        if len(source_labels) != 1:
            raise DermaganError(f"{where}: the sources of class {dx} come from several classes "
                                f"{[task_classes[i] for i in source_labels]}; expected one source class")
        reference = np.flatnonzero(train.labels == source_labels[0])
        own, other = source_distances(domain(sets[name]), train_domain[reference],
                                      np.searchsorted(reference, positions))
        report = source_leakage_report(own, other, len(reference))
        report["source_class"] = task_classes[source_labels[0]]
        report["flagged_files"] = rows["file"][own < report["flag_threshold"]].tolist()
        result[name] = report
    return result


def nearest_indices(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Index of each query's nearest reference vector (Euclidean); for a handful of queries."""
    if not len(query):
        return np.zeros(0, dtype=int)
    d = (query * query).sum(1)[:, None] + (reference * reference).sum(1)[None, :] - 2 * query @ reference.T
    return d.argmin(1)


def cas_metrics(settings: dict, kept: dict[str, np.ndarray], train: SplitArrays, val: SplitArrays, classes: list[str],
                task_classes: Sequence[str], device) -> dict:
    """Classification Accuracy Score of the kept synthetic images against the same-size real baseline."""
    cas = settings["cas"]
    usable = [dx for dx in classes if len(kept[dx])]
    if len(usable) < 2:
        return {"skipped_reason": f"CAS needs kept synthetic images of 2 classes, got {usable}"}
    return cas_report({dx: kept[dx] for dx in usable}, {dx: class_images(train, dx, task_classes) for dx in usable},
                      {dx: class_images(val, dx, task_classes) for dx in usable}, seeds=[int(s) for s in cas["seeds"]],
                      epochs=int(cas["epochs"]), batch_size=int(cas["batch_size"]), lr=float(cas["lr"]),
                      device=device)


def class_images(split: SplitArrays, dx: str, task_classes: Sequence[str]) -> np.ndarray:
    """The images of one class in a prepared split."""
    return split.images[split.labels == list(task_classes).index(dx)]


def synthetic_images(folder: Path, manifest: pd.DataFrame, dx: str) -> np.ndarray:
    """The PNGs of one class listed in a manifest, as uint8 (N, H, W, 3)."""
    files = manifest.loc[manifest["class"] == dx, "file"]
    images = [np.asarray(Image.open(folder / f).convert("RGB")) for f in files]
    return np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8)


def class_metrics(sets: dict[str, np.ndarray], features, decisions: pd.DataFrame, dx: str, k: int,
                  seed: int) -> dict:
    """Fidelity of each set against the class's real train images, plus dedup's nearest-train distances."""
    real = features(sets["train"])
    result = {name: safe_fidelity_metrics(real, features(sets[name]), k, seed) for name in SETS}
    rows = decisions[decisions["class"] == dx]
    for kind in HASHES:
        for stat, value in nearest_distance_summary(rows[f"nearest_train_{kind}"]).items():
            result[f"nearest_train_{kind}_{stat}"] = value
    counts = rows["reason"].value_counts()
    result["n_generated"] = int(len(rows))
    result["n_kept"] = int(counts.get("kept", 0))
    removed = [r for r in REASONS if r != "kept"] + sorted(set(counts.index) - set(REASONS))
    result["n_removed_by_reason"] = {r: int(counts.get(r, 0)) for r in removed}
    return result


# --- tables ------------------------------------------------------------------------------------------------------

def fidelity_table(document: dict) -> pd.DataFrame:
    """One row per (class, set) with every fidelity metric."""
    rows = [{"class": dx, "set": name, **metrics[name]} for dx, metrics in document["classes"].items()
            for name in SETS]
    return pd.DataFrame(rows, columns=["class", "set", *FIDELITY_KEYS, "n_real", "n_fake", "knn_k", "skipped_reason"])


def domain_table(document: dict) -> pd.DataFrame:
    """One row per class: domain FD/KID/k-NN of the kept set and the real-val yardstick, AUC, memorisation."""
    rows = []
    for dx, m in document["classes"].items():
        kept, ref = m["domain_dedup"], m["domain_real_val_reference"]
        two, mem = m["two_sample"], m["memorisation_domain"]
        rows.append({"class": dx, "fd_domain": kept["fd_domain"], "fd_domain_yardstick": ref["fd_domain"],
                     "fd_ratio": kept["fd_domain"] / ref["fd_domain"] if ref["fd_domain"] else float("nan"),
                     "kid_domain": kept["kid_domain"], "kid_domain_yardstick": ref["kid_domain"],
                     "knn_precision_domain": kept["knn_precision_domain"],
                     "knn_recall_domain": kept["knn_recall_domain"],
                     "knn_recall_domain_yardstick": ref["knn_recall_domain"],
                     "two_sample_auc": two.get("auc"), "two_sample_ci_low": two.get("ci_low"),
                     "two_sample_ci_high": two.get("ci_high"), "memorisation_ratio_median": mem.get("ratio_median"),
                     "memorisation_share_closer_than_val_p5": mem.get("share_closer_than_val_p5"),
                     "n_kept": kept["n_fake"], "n_val": ref["n_fake"]})
    return pd.DataFrame(rows)


# --- progress lines ----------------------------------------------------------------------------------------------

def progress_line(method: str, dx: str, metrics: dict, seconds: float) -> str:
    """One line per class: set sizes and FID of the kept set next to the real-vs-real reference."""
    dedup, reference = metrics["dedup"], metrics["real_val_reference"]
    d_kept, d_ref = metrics["domain_dedup"], metrics["domain_real_val_reference"]
    auc = metrics["two_sample"].get("auc", float("nan"))
    return (f"fidelity {method}/{dx}: {dedup['n_real']} real train, {dedup['n_fake']} kept, "
            f"{metrics['generated']['n_fake']} generated, {reference['n_fake']} real val; "
            f"domain FD kept {d_kept['fd_domain']:.2f} vs real-val yardstick {d_ref['fd_domain']:.2f}, "
            f"domain k-NN recall {d_kept['knn_recall_domain']:.2f}, two-sample AUC {auc:.2f}; "
            f"ImageNet-space fid_effnetlite0 kept {dedup['fid_effnetlite0']:.2f} vs "
            f"{reference['fid_effnetlite0']:.2f} ({seconds:.1f}s)")


def leakage_line(method: str, dx: str, leakage: dict) -> str:
    kept = leakage["dedup"]
    if "skipped_reason" in kept:
        return f"source leakage {method}/{dx}: skipped ({kept['skipped_reason']})"
    return (f"source leakage {method}/{dx} (kept, domain space): own-source distance median "
            f"{kept['own_distance_median']:.2f} vs nearest other {kept['source_class']} "
            f"{kept['nearest_other_distance_median']:.2f} (ratio {kept['ratio_median']:.2f}); own source nearest for "
            f"{kept['share_own_nearest']:.1%} (chance {kept['chance_own_nearest']:.2%}); "
            f"{kept['flagged']}/{kept['n_translated']} flagged")


def cas_line(method: str, cas: dict) -> str:
    if "skipped_reason" in cas:
        return f"CAS {method}: skipped ({cas['skipped_reason']})"
    return (f"CAS {method} (real val, {len(cas['classes'])} classes, chance {cas['chance']:.2f}): synthetic-trained "
            f"{cas['cas_synthetic']:.3f}, real-trained {cas['cas_real']:.3f}, ratio {cas['cas_ratio']:.2f}")

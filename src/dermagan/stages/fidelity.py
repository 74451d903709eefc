"""The fidelity stage: how close one method's synthetic images are to the real images, per class.

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
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.entities import Metric  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from PIL import Image  # noqa: E402

from dermagan.atomic import atomic_dir, atomic_file  # noqa: E402
from dermagan.constants import CLASSES  # noqa: E402
from dermagan.data.prepared import SplitArrays, read_split  # noqa: E402
from dermagan.dedup import REASONS  # noqa: E402
from dermagan.device import pick_device  # noqa: E402
from dermagan.errors import DermaganError  # noqa: E402
from dermagan.evaluate.fidelity import (  # noqa: E402
    FEATURE_SPACE,
    FIDELITY_KEYS,
    extract_features,
    feature_extractor,
    nearest_distance_summary,
    safe_fidelity_metrics,
)
from dermagan.evaluate.plots import save  # noqa: E402
from dermagan.evaluate.sample_grids import random_subset, real_vs_synthetic_figure  # noqa: E402
from dermagan.fidelity import (  # noqa: E402
    DOMAIN_SPACE,
    FEATURE_DIM,
    cas_report,
    domain_fidelity,
    encode,
    load_encoder,
    memorisation_report,
    nearest_train_distances,
    source_distances,
    source_leakage_report,
    two_sample_auc,
)
from dermagan.gan.generate import read_generator_index  # noqa: E402
from dermagan.params import section  # noqa: E402
from dermagan.serialize import json_safe  # noqa: E402
from dermagan.stages.generate import MANIFEST  # noqa: E402
from dermagan.tracking.setup import configure  # noqa: E402

# Metrics-file name of each compared set -> MLflow prefix of its metrics.
SETS = {"dedup": "fidelity", "generated": "fidelity_generated", "real_val_reference": "fidelity_reference"}
HASHES = ("phash", "whash")
GRID_FIGURE = "real_vs_synthetic.png"
DISTANCE_FIGURE = "nearest_train_distance.png"
NEAREST_FIGURE = "nearest_train_examples.png"
TABLE = "fidelity.csv"
DOMAIN_TABLE = "fidelity_domain.csv"
ENCODER_FILE = "encoder.pt"
SOURCE = "source"  # manifest column of image-to-image methods (cyclegan): the real train image translated


def run_fidelity(params: dict, method: str, prepared: Path, synthetic_root: Path, dedup_report: Path, gan_dir: Path,
                 metrics_json: Path, plots_dir: Path, domain_encoder: Path = Path("artifacts/domain_encoder")) -> dict:
    """Score every augmented class; write the metrics file, figures and tables; log into the GAN runs."""
    cfg = section(params, "fidelity")
    classes = list(section(params, "gan", "classes"))
    train, val = read_split(prepared, "train"), read_split(prepared, "val")
    synthetic_root = Path(synthetic_root)
    manifests = {name: pd.read_csv(synthetic_root / name / MANIFEST) for name in ("dedup", "generated")}
    decisions = pd.read_csv(Path(dedup_report) / "decisions.csv")
    net, device = feature_extractor(), pick_device(section(params, "train", "device"))
    encoder_path = Path(domain_encoder) / ENCODER_FILE
    if not encoder_path.exists():
        raise DermaganError(f"domain encoder not found: {encoder_path} (run `dermagan domain-encoder` first)")
    encoder = load_encoder(encoder_path, device)

    def features(images: np.ndarray) -> np.ndarray:
        return extract_features(net, images, int(cfg["feature_size"]), device=device)

    def domain(images: np.ndarray) -> np.ndarray:
        if not len(images):  # a class dedup emptied (its placeholder array is 1x1 px)
            return np.zeros((0, FEATURE_DIM))
        return encode(encoder, images, device=device)

    document = {"method": method, "feature_space": FEATURE_SPACE, "feature_size": int(cfg["feature_size"]),
                "domain_space": DOMAIN_SPACE, "knn_k": int(cfg["knn_k"]), "classes": {}}
    train_domain = domain(train.images)
    grid_real, grid_synthetic, near_real, near_synthetic, kept = {}, {}, {}, {}, {}
    translated = SOURCE in manifests["generated"] and manifests["generated"][SOURCE].notna().any()
    for offset, dx in enumerate(classes):
        started = time.perf_counter()
        sets = {"train": class_images(train, dx), "real_val_reference": class_images(val, dx),
                **{name: synthetic_images(synthetic_root / name, frame, dx) for name, frame in manifests.items()}}
        kept[dx] = sets["dedup"]
        metrics = class_metrics(sets, features, decisions, dx, int(cfg["knn_k"]), int(cfg["seed"]))
        metrics.update(domain_metrics(sets, domain, train_domain, train.labels == CLASSES.index(dx), cfg))
        if translated:  # only methods whose manifest names a source image get this block
            metrics["source_leakage"] = leakage_metrics(manifests, synthetic_root, sets, dx, domain, train,
                                                        train_domain)
            print(leakage_line(method, dx, metrics["source_leakage"]), flush=True)
        document["classes"][dx] = metrics
        grid_real[dx] = random_subset(sets["train"], int(cfg["grid_images"]), int(cfg["seed"]) + offset)
        grid_synthetic[dx] = random_subset(sets["dedup"], int(cfg["grid_images"]), int(cfg["seed"]) + offset)
        near_synthetic[dx] = random_subset(sets["dedup"], int(cfg["nearest_examples"]), int(cfg["seed"]) + offset)
        near_real[dx] = train.images[nearest_indices(domain(near_synthetic[dx]), train_domain)]
        print(progress_line(method, dx, metrics, time.perf_counter() - started), flush=True)
    document["cas"] = cas_metrics(cfg, kept, train, val, classes, device)
    print(cas_line(method, document["cas"]), flush=True)
    with atomic_dir(Path(plots_dir)) as tmp, atomic_file(Path(metrics_json)) as tmp_json:
        fidelity_table(document).to_csv(tmp / TABLE, index=False)
        domain_table(document).to_csv(tmp / DOMAIN_TABLE, index=False)
        title = f"{method}: random real train vs kept synthetic images"
        save(real_vs_synthetic_figure(grid_real, grid_synthetic, int(cfg["grid_images"]),
                                      f"synthetic ({method}, after dedup)", title=title), tmp / GRID_FIGURE)
        save(real_vs_synthetic_figure(near_real, near_synthetic, int(cfg["nearest_examples"]),
                                      f"synthetic ({method})", real_title="nearest real train image",
                                      title=f"{method}: kept synthetic images (right) and, in the same column on "
                                            "the left, the real train image nearest to each in the domain space"),
             tmp / NEAREST_FIGURE)
        save(nearest_train_figure(decisions, classes, method), tmp / DISTANCE_FIGURE)
        tmp_json.write_text(json.dumps(json_safe(document), indent=2, allow_nan=False))
        log_to_gan_runs(params, method, Path(gan_dir), document,
                        [tmp / GRID_FIGURE, tmp / NEAREST_FIGURE, tmp / DISTANCE_FIGURE])
    return json_safe(document)


def domain_metrics(sets: dict[str, np.ndarray], domain, train_domain: np.ndarray, class_mask: np.ndarray,
                   cfg: dict) -> dict:
    """Domain-space numbers of one class: FD/KID/k-NN per set, two-sample AUC, memorisation."""
    k, seed = int(cfg["knn_k"]), int(cfg["seed"])
    real = train_domain[class_mask]
    feats = {name: domain(sets[name]) for name in SETS}
    result = {f"domain_{name}": domain_fidelity(real, feats[name], k, seed) for name in SETS}
    two = cfg["two_sample"]
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
                    domain, train: SplitArrays, train_domain: np.ndarray) -> dict:
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
                                f"{[CLASSES[i] for i in source_labels]}; expected one source class")
        reference = np.flatnonzero(train.labels == source_labels[0])
        own, other = source_distances(domain(sets[name]), train_domain[reference],
                                      np.searchsorted(reference, positions))
        report = source_leakage_report(own, other, len(reference))
        report["source_class"] = CLASSES[source_labels[0]]
        report["flagged_files"] = rows["file"][own < report["flag_threshold"]].tolist()
        result[name] = report
    return result


def leakage_line(method: str, dx: str, leakage: dict) -> str:
    kept = leakage["dedup"]
    if "skipped_reason" in kept:
        return f"source leakage {method}/{dx}: skipped ({kept['skipped_reason']})"
    return (f"source leakage {method}/{dx} (kept, domain space): own-source distance median "
            f"{kept['own_distance_median']:.2f} vs nearest other {kept['source_class']} "
            f"{kept['nearest_other_distance_median']:.2f} (ratio {kept['ratio_median']:.2f}); own source nearest for "
            f"{kept['share_own_nearest']:.1%} (chance {kept['chance_own_nearest']:.2%}); "
            f"{kept['flagged']}/{kept['n_translated']} flagged")


def nearest_indices(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Index of each query's nearest reference vector (Euclidean); for a handful of queries."""
    if not len(query):
        return np.zeros(0, dtype=int)
    d = (query * query).sum(1)[:, None] + (reference * reference).sum(1)[None, :] - 2 * query @ reference.T
    return d.argmin(1)


def cas_metrics(cfg: dict, kept: dict[str, np.ndarray], train: SplitArrays, val: SplitArrays, classes: list[str],
                device) -> dict:
    """Classification Accuracy Score of the kept synthetic images against the same-size real baseline."""
    cas = cfg["cas"]
    usable = [dx for dx in classes if len(kept[dx])]
    if len(usable) < 2:
        return {"skipped_reason": f"CAS needs kept synthetic images of 2 classes, got {usable}"}
    return cas_report({dx: kept[dx] for dx in usable}, {dx: class_images(train, dx) for dx in usable},
                      {dx: class_images(val, dx) for dx in usable}, seeds=[int(s) for s in cas["seeds"]],
                      epochs=int(cas["epochs"]), batch_size=int(cas["batch_size"]), lr=float(cas["lr"]),
                      device=device)


def cas_line(method: str, cas: dict) -> str:
    if "skipped_reason" in cas:
        return f"CAS {method}: skipped ({cas['skipped_reason']})"
    return (f"CAS {method} (real val, {len(cas['classes'])} classes, chance {cas['chance']:.2f}): synthetic-trained "
            f"{cas['cas_synthetic']:.3f}, real-trained {cas['cas_real']:.3f}, ratio {cas['cas_ratio']:.2f}")


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


def class_images(split: SplitArrays, dx: str) -> np.ndarray:
    """The images of one class in a prepared split."""
    return split.images[split.labels == CLASSES.index(dx)]


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


def fidelity_table(document: dict) -> pd.DataFrame:
    """One row per (class, set) with every fidelity metric."""
    rows = [{"class": dx, "set": name, **metrics[name]} for dx, metrics in document["classes"].items()
            for name in SETS]
    return pd.DataFrame(rows, columns=["class", "set", *FIDELITY_KEYS, "n_real", "n_fake", "knn_k", "skipped_reason"])


def nearest_train_figure(decisions: pd.DataFrame, classes: list[str], method: str) -> plt.Figure:
    """Per class, each generated image's Hamming distance to its nearest real train image (kept vs removed)."""
    fig, axes = plt.subplots(1, len(HASHES), figsize=(5 * len(HASHES), 3.8), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, kind in zip(axes[0], HASHES):
        column = f"nearest_train_{kind}"
        groups = [decisions.loc[decisions["class"] == dx, [column, "reason"]] for dx in classes]
        ax.boxplot([g[column].to_numpy(float) for g in groups], showfliers=False)
        ax.set_xticks(range(1, len(classes) + 1), classes)
        for i, group in enumerate(groups, start=1):
            kept = (group["reason"] == "kept").to_numpy()
            x = i + rng.uniform(-0.18, 0.18, len(group))
            ax.scatter(x[kept], group[column][kept], s=6, alpha=0.5, color="C0", label="kept" if i == 1 else None)
            ax.scatter(x[~kept], group[column][~kept], s=8, alpha=0.8, color="C3",
                       label="removed" if i == 1 else None)
        ax.set(xlabel="class", ylabel=f"{kind} Hamming distance", title=f"{kind}: nearest real train image")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{method}: synthetic images' distance to the nearest real train image")
    fig.tight_layout()
    return fig



def mlflow_metrics(method: str, dx: str, metrics: dict) -> dict[str, float]:
    """``fidelity/<metric>`` (dcgan, one run per class) or ``fidelity/<class>/<metric>`` (cdcgan); no NaNs."""
    infix = f"{dx}/" if method == "cdcgan" else ""
    flat = {f"{prefix}/{infix}{key}": metrics[name][key] for name, prefix in SETS.items()
            for key in (*FIDELITY_KEYS, "n_fake", "knn_k")}
    flat.update({f"{prefix}/{infix}{key}": value for name, prefix in SETS.items()
                 for key, value in metrics[f"domain_{name}"].items() if key.endswith("_domain") or
                 key.endswith("_domain_std")})
    for block in ("two_sample", "memorisation_domain"):
        flat.update({f"{block}/{infix}{key}": value for key, value in metrics[block].items()
                     if isinstance(value, (int, float)) and not isinstance(value, bool)})
    flat.update({f"fidelity/{infix}{key}": value for key, value in metrics.items()
                 if key.startswith("nearest_train_") or key in ("n_generated", "n_kept")})
    for name, prefix in (("dedup", "source_leakage"), ("generated", "source_leakage_generated")):
        flat.update({f"{prefix}/{infix}{key}": value for key, value in metrics.get("source_leakage", {}).get(
            name, {}).items() if isinstance(value, (int, float)) and not isinstance(value, bool)})
    return {k: float(v) for k, v in flat.items() if v is not None and math.isfinite(float(v))}


def log_to_gan_runs(params: dict, method: str, gan_dir: Path, document: dict, figures: list[Path]) -> None:
    """Add the fidelity metrics and figures to the GAN run(s) in generators.json; warn on unknown runs."""
    index = read_generator_index(gan_dir)
    configure(section(params, "gan", "experiment"))
    client = mlflow.MlflowClient()
    timestamp = int(time.time() * 1000)
    covered = {dx for entry in index.values() for dx in entry.get("classes", [])}
    for dx in sorted(set(document["classes"]) - covered):
        print(f"warning: no GAN run for class {dx} in {gan_dir / 'generators.json'}; its fidelity is not logged")
    for name, entry in index.items():
        scored = [dx for dx in entry.get("classes", [name]) if dx in document["classes"]]
        if not scored:
            continue
        try:
            client.get_run(entry["run_id"])
        except MlflowException:
            print(f"warning: GAN run {entry['run_id']} ({name}) not found in {mlflow.get_tracking_uri()}; "
                  "fidelity not logged to MLflow for it")
            continue
        values = {k: v for dx in scored for k, v in mlflow_metrics(method, dx, document["classes"][dx]).items()}
        values.update({f"cas/{k}": float(v) for k, v in document.get("cas", {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))})
        client.log_batch(entry["run_id"], metrics=[Metric(k, v, timestamp, 0) for k, v in values.items()])
        for figure in figures:
            client.log_artifact(entry["run_id"], str(figure), "fidelity")

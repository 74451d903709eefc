"""The fidelity stage: how close one method's synthetic images are to the real train images, per class.

Distances live in the ImageNet EfficientNet-Lite0 feature space (``fid_effnetlite0``, not Inception
FID). Each class gets three comparisons against its real **train** images: the kept (dedup) synthetic
set the classifiers use, the full generated set, and the real **val** images as a yardstick of what
"real vs real" looks like at this sample size. Test images are never read.
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
from dermagan.params import section  # noqa: E402
from dermagan.serialize import json_safe  # noqa: E402
from dermagan.stages.generate import MANIFEST  # noqa: E402
from dermagan.tracking.setup import configure  # noqa: E402

# Metrics-file name of each compared set -> MLflow prefix of its metrics.
SETS = {"dedup": "fidelity", "generated": "fidelity_generated", "real_val_reference": "fidelity_reference"}
HASHES = ("phash", "whash")
GRID_FIGURE = "real_vs_synthetic.png"
DISTANCE_FIGURE = "nearest_train_distance.png"
TABLE = "fidelity.csv"


def run_fidelity(params: dict, method: str, prepared: Path, synthetic_root: Path, dedup_report: Path, gan_dir: Path,
                 metrics_json: Path, plots_dir: Path) -> dict:
    """Score every augmented class; write the metrics file, figures and table; log into the GAN runs."""
    cfg = section(params, "fidelity")
    classes = list(section(params, "gan", "classes"))
    train, val = read_split(prepared, "train"), read_split(prepared, "val")
    synthetic_root = Path(synthetic_root)
    manifests = {name: pd.read_csv(synthetic_root / name / MANIFEST) for name in ("dedup", "generated")}
    decisions = pd.read_csv(Path(dedup_report) / "decisions.csv")
    net, device = feature_extractor(), pick_device(section(params, "train", "device"))

    def features(images: np.ndarray) -> np.ndarray:
        return extract_features(net, images, int(cfg["feature_size"]), device=device)

    document = {"method": method, "feature_space": FEATURE_SPACE, "feature_size": int(cfg["feature_size"]),
                "knn_k": int(cfg["knn_k"]), "classes": {}}
    grid_real, grid_synthetic = {}, {}
    for offset, dx in enumerate(classes):
        started = time.perf_counter()
        sets = {"train": class_images(train, dx), "real_val_reference": class_images(val, dx),
                **{name: synthetic_images(synthetic_root / name, frame, dx) for name, frame in manifests.items()}}
        document["classes"][dx] = class_metrics(sets, features, decisions, dx, int(cfg["knn_k"]), int(cfg["seed"]))
        grid_real[dx] = random_subset(sets["train"], int(cfg["grid_images"]), int(cfg["seed"]) + offset)
        grid_synthetic[dx] = random_subset(sets["dedup"], int(cfg["grid_images"]), int(cfg["seed"]) + offset)
        print(progress_line(method, dx, document["classes"][dx], time.perf_counter() - started), flush=True)
    with atomic_dir(Path(plots_dir)) as tmp, atomic_file(Path(metrics_json)) as tmp_json:
        fidelity_table(document).to_csv(tmp / TABLE, index=False)
        title = f"{method}: random real train vs kept synthetic images"
        save(real_vs_synthetic_figure(grid_real, grid_synthetic, int(cfg["grid_images"]),
                                      f"synthetic ({method}, after dedup)", title=title), tmp / GRID_FIGURE)
        save(nearest_train_figure(decisions, classes, method), tmp / DISTANCE_FIGURE)
        tmp_json.write_text(json.dumps(json_safe(document), indent=2, allow_nan=False))
        log_to_gan_runs(params, method, Path(gan_dir), document, [tmp / GRID_FIGURE, tmp / DISTANCE_FIGURE])
    return json_safe(document)


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
    return (f"fidelity {method}/{dx}: {dedup['n_real']} real train, {dedup['n_fake']} kept, "
            f"{metrics['generated']['n_fake']} generated, {reference['n_fake']} real val; "
            f"fid_effnetlite0 kept {dedup['fid_effnetlite0']:.2f} vs real-val reference "
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
    flat.update({f"fidelity/{infix}{key}": value for key, value in metrics.items()
                 if key.startswith("nearest_train_") or key in ("n_generated", "n_kept")})
    return {k: float(v) for k, v in flat.items() if v is not None and math.isfinite(float(v))}


def log_to_gan_runs(params: dict, method: str, gan_dir: Path, document: dict, figures: list[Path]) -> None:
    """Add the fidelity metrics and figures to the GAN run(s) in generators.json; warn on unknown runs."""
    index = json.loads((gan_dir / "generators.json").read_text())
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
        client.log_batch(entry["run_id"], metrics=[Metric(k, v, timestamp, 0) for k, v in values.items()])
        for figure in figures:
            client.log_artifact(entry["run_id"], str(figure), "fidelity")

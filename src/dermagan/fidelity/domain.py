"""Fréchet distance, KID and k-NN precision/recall in the domain encoder's feature space.

The numbers come from ``dermagan.evaluate.fidelity.safe_fidelity_metrics`` (feature-space
agnostic); only the keys change, so domain-space values are never mistaken for ImageNet-space ones.
"""

from __future__ import annotations

import numpy as np

from dermagan.evaluate.fidelity import safe_fidelity_metrics

DOMAIN_KEYS = {"fid_effnetlite0": "fd_domain", "kid_effnetlite0": "kid_domain", "kid_effnetlite0_std": "kid_domain_std",
               "knn_precision": "knn_precision_domain", "knn_recall": "knn_recall_domain"}


def domain_fidelity(real_features: np.ndarray, fake_features: np.ndarray, k: int = 3,
                    seed: int = 0) -> dict[str, float | int | str | None]:
    """``safe_fidelity_metrics`` on domain features, keys renamed to ``fd_domain``, ``kid_domain``,
    ``kid_domain_std``, ``knn_precision_domain``, ``knn_recall_domain`` (plus n_real, n_fake, knn_k,
    skipped_reason, unchanged)."""
    metrics = safe_fidelity_metrics(np.asarray(real_features, dtype=np.float64),
                                    np.asarray(fake_features, dtype=np.float64), k=k, seed=seed)
    return {DOMAIN_KEYS.get(key, key): value for key, value in metrics.items()}

"""Measures of generated images that a GAN discriminator cannot inflate.

A domain encoder trained only on real train images (``encoder``), Fréchet/KID/k-NN metrics in its
space (``domain``), train-on-synthetic/test-on-real accuracy (``cas``), a real-vs-synthetic
classifier two-sample test (``two_sample``), nearest-train-distance memorisation checks
(``memorisation``) and the source leakage of translated images (``leakage``). Plain functions: no
params, no MLflow, no global state.

The fidelity stage's report is built from them by ``report`` (per-class metrics, tables, progress
lines), ``figures`` (its figures) and ``tracking`` (the only module here that logs to MLflow: the
report's metrics and figures go into the scored GAN runs).
"""

from dermagan.fidelity.cas import cas_report, classification_accuracy_score
from dermagan.fidelity.domain import DOMAIN_KEYS, domain_fidelity
from dermagan.fidelity.encoder import (
    DOMAIN_SPACE,
    FEATURE_DIM,
    DomainEncoder,
    encode,
    load_encoder,
    predict_labels,
    save_encoder,
    train_domain_encoder,
)
from dermagan.fidelity.leakage import source_distances, source_leakage, source_leakage_report
from dermagan.fidelity.memorisation import memorisation_report, nearest_train_distances
from dermagan.fidelity.two_sample import two_sample_auc

__all__ = [
    "DOMAIN_KEYS", "DOMAIN_SPACE", "FEATURE_DIM", "DomainEncoder", "cas_report", "classification_accuracy_score",
    "domain_fidelity", "encode", "load_encoder", "memorisation_report", "nearest_train_distances",
    "predict_labels", "save_encoder", "source_distances", "source_leakage", "source_leakage_report",
    "train_domain_encoder", "two_sample_auc",
]

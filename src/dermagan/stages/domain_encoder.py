"""The domain_encoder stage: the feature space generators are judged in, trained on real train only.

A from-scratch CNN learns the 7 classes from the real **train** split. Its penultimate layer is the
"domain space" of the fidelity stage: no discriminator ever saw it, and it was never trained on
ImageNet, so a projected discriminator cannot have optimised towards it. Its real-val balanced
accuracy is reported only to show the space separates lesions; val chooses nothing here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from dermagan.atomic import atomic_dir, atomic_file
from dermagan.config import Config
from dermagan.config.layout import LAYOUT
from dermagan.data.prepared import read_split
from dermagan.device import pick_device
from dermagan.errors import DermaganError
from dermagan.fidelity import DOMAIN_SPACE, save_encoder, train_domain_encoder
from dermagan.fidelity.encoder import ENCODER_FILE


def run_domain_encoder(cfg: Config, prepared: Path, out_dir: Path,
                       metrics_json: Path = LAYOUT.domain_encoder_metrics) -> dict:
    """Train the encoder; write ``encoder.pt`` and ``history.csv`` to ``out_dir`` and a metrics JSON."""
    if cfg.fidelity is None:
        raise DermaganError("params: missing key 'fidelity.domain_encoder' (epochs, batch_size, lr, seed)")
    enc = cfg.fidelity.domain_encoder
    train, val = read_split(Path(prepared), "train"), read_split(Path(prepared), "val")
    started = time.perf_counter()
    model, history = train_domain_encoder(
        train.images, train.labels, len(cfg.classes), epochs=enc.epochs, batch_size=enc.batch_size, lr=enc.lr,
        seed=enc.seed, device=pick_device(cfg.train.device), val_images=val.images, val_labels=val.labels)
    wall = time.perf_counter() - started
    info = {"feature_space": DOMAIN_SPACE, "trained_on": "real train split", "epochs": enc.epochs,
            "n_train_images": int(len(train)), "val_bal_acc": float(history["val_bal_acc"][-1]),
            "wall_seconds": wall}
    with atomic_dir(Path(out_dir)) as tmp, atomic_file(Path(metrics_json)) as tmp_json:
        save_encoder(model.cpu(), tmp / ENCODER_FILE)
        pd.DataFrame({"epoch": range(1, len(history["train_loss"]) + 1), **history}).to_csv(
            tmp / "history.csv", index=False)
        (tmp / "info.json").write_text(json.dumps(info, indent=2))
        tmp_json.write_text(json.dumps(info, indent=2))
    return info

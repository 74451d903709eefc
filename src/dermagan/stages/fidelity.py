"""The fidelity stage: how close one method's synthetic images are to the real images, per class.

Each augmented class's kept (dedup) and generated synthetic sets, and the real val images as the
yardstick, are scored against its real **train** images in two feature spaces (the domain
encoder's and ImageNet EfficientNet-Lite0's; see :mod:`dermagan.fidelity.report`), plus the
Classification Accuracy Score of the kept images on real val. Test images are never read. Writes
the metrics file, tables and figures, and adds the metrics and figures to the GAN runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dermagan.atomic import atomic_dir, atomic_file
from dermagan.config import Config
from dermagan.config.layout import LAYOUT
from dermagan.data.prepared import read_split
from dermagan.device import pick_device
from dermagan.errors import DermaganError
from dermagan.evaluate.fidelity import feature_extractor
from dermagan.fidelity import load_encoder
from dermagan.fidelity.figures import save_figures
from dermagan.fidelity.report import (
    DECISIONS,
    ENCODER_FILE,
    FeatureSpaces,
    cas_line,
    cas_metrics,
    domain_table,
    fidelity_table,
    read_manifests,
    score_classes,
)
from dermagan.fidelity.tracking import log_to_gan_runs
from dermagan.gan.methods import get_method
from dermagan.serialize import json_safe

TABLE = "fidelity.csv"
DOMAIN_TABLE = "fidelity_domain.csv"


def run_fidelity(cfg: Config, method: str, prepared: Path, synthetic_root: Path, dedup_report: Path, gan_dir: Path,
                 metrics_json: Path, plots_dir: Path, domain_encoder: Path = LAYOUT.domain_encoder) -> dict:
    """Score every augmented class; write the metrics file, figures and tables; log into the GAN runs."""
    if cfg.fidelity is None:
        raise DermaganError(f"{cfg.source}: missing block 'fidelity' (how generators are scored; see params.yaml)")
    settings = cfg.fidelity.plain()
    classes = list(cfg.gan.classes)
    train, val = read_split(prepared, "train"), read_split(prepared, "val")
    manifests = read_manifests(Path(synthetic_root))
    decisions = pd.read_csv(Path(dedup_report) / DECISIONS)
    net, device = feature_extractor(), pick_device(cfg.train.device)
    encoder_path = Path(domain_encoder) / ENCODER_FILE
    if not encoder_path.exists():
        raise DermaganError(f"domain encoder not found: {encoder_path} (run `dermagan domain-encoder` first)")
    spaces = FeatureSpaces(net, load_encoder(encoder_path, device), int(settings["feature_size"]), device)
    scored = score_classes(method, classes, cfg.classes, train, val, Path(synthetic_root), manifests, decisions,
                           spaces, settings, log=lambda line: print(line, flush=True))
    document = scored.document
    document["cas"] = cas_metrics(settings, scored.kept, train, val, classes, cfg.classes, device)
    print(cas_line(method, document["cas"]), flush=True)
    with atomic_dir(Path(plots_dir)) as tmp, atomic_file(Path(metrics_json)) as tmp_json:
        fidelity_table(document).to_csv(tmp / TABLE, index=False)
        domain_table(document).to_csv(tmp / DOMAIN_TABLE, index=False)
        figures = save_figures(scored, decisions, classes, method, int(settings["grid_images"]),
                               int(settings["nearest_examples"]), tmp)
        tmp_json.write_text(json.dumps(json_safe(document), indent=2, allow_nan=False))
        log_to_gan_runs(Path(gan_dir), document, figures, get_method(method).conditional, cfg.gan.experiment)
    return json_safe(document)

"""The validate_augmented stage: assemble one arm's extra training images and check them with GX.

Writes the extras (``artifacts/trainsets/<arm>``) only when every expectation passes; the report
(summary, per-class counts, Data Docs) goes to ``reports/validation_augmented/<arm>``, or to
``<report>-failed`` with a non-zero exit when something fails.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from dermagan.atomic import atomic_dir
from dermagan.config import Config
from dermagan.data.prepared import check_classes, read_split
from dermagan.data.trainset import OVERSAMPLE, extra_targets, gather_extras, parse_extra, write_extras
from dermagan.errors import DermaganError
from dermagan.outputs import is_own_dir
from dermagan.validation.augmented import Holdout, extra_class_frame, extra_image_frame, validate_extras


def run_validate_augmented(cfg: Config, arm: str, prepared: Path, synthetic_root: Path, out_dir: Path,
                           report_dir: Path, gan_root: Path | None = None) -> dict:
    """Check the arm's extras; on success write them to ``out_dir``; return the summary.

    An arm with ``experts`` also gets its frozen class-expert discriminators (``experts.pt``) in
    ``out_dir``, read from ``gan_root`` (default: ``artifacts/gan`` beside ``synthetic_root``).
    """
    source = parse_extra(cfg.arm(arm).extra)
    experts = class_experts(cfg, arm, gan_root or Path(synthetic_root).parent / "gan")
    prepared, task = Path(prepared), cfg.classes
    check_classes(prepared, task)  # the folder's integer labels index params data.classes
    train = read_split(prepared, "train")
    holdout_splits = [read_split(prepared, s) for s in ("val", "test")]
    holdout = Holdout.from_images(np.concatenate([s.image_ids for s in holdout_splits]),
                                  np.concatenate([s.images for s in holdout_splits]))
    targets = extra_targets(cfg.gan.plain(), train, task, source.method) if source.kind != "none" else {}
    rows, extras = gather_extras(source, train, targets, Path(synthetic_root), cfg.gan.seed, task)
    images = extra_image_frame(rows, holdout)
    real_counts = {c: int((train.labels == i).sum()) for i, c in enumerate(task)}
    classes = extra_class_frame(real_counts, images["dx"].value_counts().to_dict(), targets)
    report_dir = Path(report_dir)
    failed_dir = report_dir.with_name(report_dir.name + "-failed")
    with atomic_dir(report_dir) as tmp:  # replaced only when the set passes and its extras are written
        report = validate_extras(images, classes, train.images.shape[1], source.kind != OVERSAMPLE, task,
                                 tmp / "data_docs")
        report.docs_index = "data_docs/index.html"
        summary = {"arm": arm, "extra": source.label, "n_extra": len(images), "targets": targets,
                   **report.to_dict()}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        (tmp / "summary.txt").write_text(report.summary_text() + "\n")
        classes.to_csv(tmp / "class_counts.csv", index=False)
        print(f"arm {arm}: extra images from {source.label}")
        if len(classes):
            print(classes.to_string(index=False))
        print(report.summary_text())
        if not report.success or extras is None:  # the report goes beside the last good one, for inspection
            with atomic_dir(failed_dir) as tmp_failed:
                shutil.copytree(tmp, tmp_failed, dirs_exist_ok=True)
            raise DermaganError(f"augmented training set of arm '{arm}' failed validation; report and Data Docs "
                                f"in {failed_dir}/\n{report.summary_text()}")
        with atomic_dir(Path(out_dir)) as tmp_out:
            write_extras(tmp_out, extras, {"arm": arm, "extra": source.label, "targets": targets,
                                           "n_extra": len(extras),
                                           **({"experts": experts.describe()} if experts is not None else {})},
                         task)
            if experts is not None:
                from dermagan.experts import save_experts
                save_experts(experts, tmp_out)
    if failed_dir.is_dir() and not failed_dir.is_symlink() and is_own_dir(failed_dir):
        shutil.rmtree(failed_dir)  # an earlier failure's report (dermagan's own) no longer applies
    return summary


def class_experts(cfg: Config, arm: str, gan_root: Path):
    """The arm's frozen class-expert discriminators (dermagan.experts), or None when it sets no ``experts``."""
    experts = cfg.arm(arm).experts
    if experts is None:
        return None
    from dermagan.experts import collect_experts, parse_experts

    bank = collect_experts(parse_experts(experts.plain(), cfg.classes, f"arms.{arm}"), list(cfg.gan.classes),
                           Path(gan_root))
    print(f"arm {arm}: class experts {list(bank.names)} from {Path(gan_root) / bank.method}")
    return bank

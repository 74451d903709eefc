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
from dermagan.constants import CLASSES
from dermagan.data.prepared import SplitArrays, read_split
from dermagan.data.trainset import (
    OVERSAMPLE,
    ExtraImages,
    ExtraSource,
    empty_extras,
    oversample,
    parse_extra,
    select_synthetic,
    synthetic_folder,
    write_extras,
)
from dermagan.errors import DermaganError
from dermagan.gan.generate import method_counts
from dermagan.params import section
from dermagan.stages.train import arm_settings
from dermagan.validation.augmented import Holdout, extra_class_frame, extra_image_frame, validate_extras


def extra_targets(params: dict, train: SplitArrays, method: str | None = None) -> dict[str, int]:
    """Extra images per augmented class, from ``gan.classes`` and ``gan.amount`` (and the tuned
    ``gan.amount_tuned.<method>`` for a GAN method's images)."""
    real_counts = {c: int((train.labels == i).sum()) for i, c in enumerate(CLASSES)}
    return method_counts(section(params, "gan"), real_counts, method)


def gather_extras(source: ExtraSource, train: SplitArrays, targets: dict[str, int], synthetic_root: Path,
                  seed: int) -> tuple[list[dict], ExtraImages | None]:
    """Rows for the validation frame, and the extras (None if some file could not be used)."""
    size = train.images.shape[1]
    if source.kind == "none":
        return [], empty_extras(size)
    if source.kind == OVERSAMPLE:
        index, labels = oversample(train, targets, seed)
        ids = np.asarray(train.image_ids).astype(str)[index]
        rows = [{"source": f"copy:{i}", "source_id": i, "dx": CLASSES[y], "decodes": True, "mode": "RGB",
                 "width": size, "height": size, "image": train.images[j]} for i, y, j in zip(ids, labels, index)]
        return rows, ExtraImages(train.images[index], labels, np.array([r["source"] for r in rows]))
    checks = select_synthetic(synthetic_folder(synthetic_root, source), targets)
    rows = [{"source": c.file, "source_id": Path(c.file).stem, "dx": c.dx, "decodes": c.decodes, "mode": c.mode,
             "width": c.width, "height": c.height, "image": c.image} for c in checks]
    usable = all(c.image is not None and c.image.shape == (size, size, 3) and c.dx in CLASSES for c in checks)
    if not usable:
        return rows, None
    images = np.stack([c.image for c in checks]) if checks else empty_extras(size).images
    labels = np.array([CLASSES.index(c.dx) for c in checks], dtype=np.int64)
    return rows, ExtraImages(images, labels, np.array([c.file for c in checks], dtype=str))


def run_validate_augmented(params: dict, arm: str, prepared: Path, synthetic_root: Path, out_dir: Path,
                           report_dir: Path, gan_root: Path | None = None) -> dict:
    """Check the arm's extras; on success write them to ``out_dir``; return the summary.

    An arm with ``experts`` also gets its frozen class-expert discriminators (``experts.pt``) in
    ``out_dir``, read from ``gan_root`` (default: ``artifacts/gan`` beside ``synthetic_root``).
    """
    settings = arm_settings(params, arm)
    source = parse_extra(settings.get("extra"))
    experts = _class_experts(params, arm, settings, gan_root or Path(synthetic_root).parent / "gan")
    prepared = Path(prepared)
    train = read_split(prepared, "train")
    holdout_splits = [read_split(prepared, s) for s in ("val", "test")]
    holdout = Holdout.from_images(np.concatenate([s.image_ids for s in holdout_splits]),
                                  np.concatenate([s.images for s in holdout_splits]))
    targets = extra_targets(params, train, source.method) if source.kind != "none" else {}
    rows, extras = gather_extras(source, train, targets, Path(synthetic_root), int(section(params, "gan", "seed")))
    images = extra_image_frame(rows, holdout)
    real_counts = {c: int((train.labels == i).sum()) for i, c in enumerate(CLASSES)}
    classes = extra_class_frame(real_counts, images["dx"].value_counts().to_dict(), targets)
    report_dir = Path(report_dir)
    failed_dir = report_dir.with_name(report_dir.name + "-failed")
    with atomic_dir(failed_dir) as tmp:
        report = validate_extras(images, classes, train.images.shape[1], source.kind != OVERSAMPLE,
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
    if not report.success or extras is None:
        raise DermaganError(f"augmented training set of arm '{arm}' failed validation; report and Data Docs "
                            f"in {failed_dir}/\n{report.summary_text()}")
    with atomic_dir(Path(out_dir)) as tmp:
        write_extras(tmp, extras, {"arm": arm, "extra": source.label, "targets": targets, "n_extra": len(extras),
                                   **({"experts": experts.describe()} if experts is not None else {})})
        if experts is not None:
            from dermagan.experts import save_experts
            save_experts(experts, tmp)
    if report_dir.exists():
        shutil.rmtree(report_dir)
    failed_dir.rename(report_dir)
    return summary


def _class_experts(params: dict, arm: str, settings: dict, gan_root: Path):
    """The arm's frozen class-expert discriminators (dermagan.experts), or None when it sets no ``experts``."""
    if not settings.get("experts"):
        return None
    from dermagan.experts import collect_experts, parse_experts

    bank = collect_experts(parse_experts(settings["experts"], f"arms.{arm}"), list(section(params, "gan", "classes")),
                           Path(gan_root))
    print(f"arm {arm}: class experts {list(bank.names)} from {Path(gan_root) / bank.method}")
    return bank

"""Great Expectations checks of an arm's augmented training set (real train + extra images).

Two frames: one row per extra image (decodes, mode, size, label, not a val/test image) and one
row per augmented class (the configured number of extras is reached).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import great_expectations as gx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from great_expectations import expectations as gxe  # noqa: E402

from dermagan.validation.runner import ValidationReport, run_suites  # noqa: E402
from dermagan.validation.suites import about, label_expectation, make_suite  # noqa: E402

KEYS = {"extra_images": ["source"], "extra_classes": ["dx"]}


def content_hash(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


@dataclass(frozen=True)
class Holdout:
    """What identifies a val/test image: its id and its pixel content."""

    image_ids: frozenset[str]
    hashes: frozenset[str]

    @classmethod
    def from_images(cls, image_ids, images: np.ndarray) -> Holdout:
        return cls(frozenset(map(str, image_ids)), frozenset(content_hash(i) for i in images))

    def contains(self, source_id: str, image: np.ndarray | None) -> bool:
        return source_id in self.image_ids or (image is not None and content_hash(image) in self.hashes)


def extra_image_frame(rows: list[dict], holdout: Holdout) -> pd.DataFrame:
    """One row per extra image; ``rows`` hold source, source_id, dx, decodes, mode, width, height, image."""
    columns = ["source", "source_id", "dx", "decodes", "mode", "width", "height", "in_holdout"]
    frame = pd.DataFrame([{**{k: r[k] for k in columns[:-1]},
                           "in_holdout": holdout.contains(str(r["source_id"]), r["image"])} for r in rows],
                         columns=columns)
    return frame.astype({"decodes": bool, "in_holdout": bool, "width": np.int64, "height": np.int64})


def extra_class_frame(real_counts: dict[str, int], extra_counts: dict[str, int],
                      targets: dict[str, int]) -> pd.DataFrame:
    """One row per augmented class: real, extra and total images, and whether the target is reached."""
    rows = [{"dx": dx, "real": int(real_counts.get(dx, 0)), "extra": int(extra_counts.get(dx, 0)),
             "target_extra": int(n)} for dx, n in targets.items()]
    frame = pd.DataFrame(rows, columns=["dx", "real", "extra", "target_extra"])
    frame["total"] = frame["real"] + frame["extra"]
    frame["reaches_target"] = frame["extra"] >= frame["target_extra"]
    return frame


def extra_images_suite(image_size: int, unique_sources: bool, classes: tuple[str, ...]) -> gx.ExpectationSuite:
    """Per extra image: decodes, RGB, the prepared size, a task label of ``classes``, not a val/test image."""
    expectations = [
        gxe.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True],
                                        **about("decodes in {True}", "extra image file decodes")),
        gxe.ExpectColumnValuesToBeInSet(column="mode", value_set=["RGB"],
                                        **about("mode in {'RGB'}", "extra image is 8-bit RGB")),
        *[gxe.ExpectColumnValuesToBeBetween(column=c, min_value=image_size, max_value=image_size,
                                            **about(f"{c} == {image_size}", f"extra image {c} matches the "
                                                    "prepared real images"))
          for c in ("width", "height")],
        label_expectation(classes),
        gxe.ExpectColumnValuesToBeInSet(column="in_holdout", value_set=[False],
                                        **about("in_holdout in {False}", "no extra image is a val/test image "
                                                "(by image id or identical pixels)")),
    ]
    if unique_sources:
        expectations.append(gxe.ExpectColumnValuesToBeUnique(
            column="source", **about("source unique", "each synthetic file is used once")))
    return make_suite("extra_images", expectations)


def extra_classes_suite() -> gx.ExpectationSuite:
    return make_suite("extra_classes", [
        gxe.ExpectColumnValuesToBeInSet(column="reaches_target", value_set=[True],
                                        **about("extra >= target_extra", "the class gets the configured "
                                                "number of extra images (gan.amount)")),
    ])


def validate_extras(images: pd.DataFrame, class_counts: pd.DataFrame, image_size: int, unique_sources: bool,
                    classes: tuple[str, ...], docs_dir: Path | None) -> ValidationReport:
    """Run both suites (``class_counts``: :func:`extra_class_frame`; ``classes``: the task labels, params
    ``data.classes``); Data Docs go to ``docs_dir`` if given."""
    suites = {"extra_images": extra_images_suite(image_size, unique_sources, classes),
              "extra_classes": extra_classes_suite()}
    return run_suites({"extra_images": images, "extra_classes": class_counts}, suites, KEYS, docs_dir)

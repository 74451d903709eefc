"""Great Expectations suites for the prepared dataset, one per frame (see frames.py).

Every expectation carries ``meta={"check": ..., "meaning": ...}``: ``check`` is a short
condition that reports print, ``meaning`` says in words why it matters (also given as the
expectation's ``notes``, which Data Docs shows beside it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import great_expectations as gx  # noqa: E402
from great_expectations import expectations as gxe  # noqa: E402

MIN_AGE, MAX_AGE = 0, 120  # plausible patient ages in years (an unknown age is empty and passes)

# Columns that identify a failing row in each frame (used for unexpected examples).
FRAME_KEYS: dict[str, list[str]] = {
    "images": ["image_id"],
    "lesions": ["lesion_id"],
    "duplicates": ["content_hash"],
    "classes": ["split", "dx"],
}


@dataclass(frozen=True)
class Thresholds:
    """Limits the suites check against (plain values from params.yaml)."""

    image_size: int
    min_pixel_std: float
    min_class_count: int
    min_class_share: float
    max_class_share: float


def set_text(values) -> str:
    """A set written deterministically, e.g. ``{'a', 'b'}`` (sorted, unlike ``str(set)``)."""
    return "{" + ", ".join(repr(v) for v in sorted(values)) + "}"


def about(check: str, meaning: str) -> dict:
    """Keyword arguments every expectation gets: ``meta`` for reports, ``notes`` for Data Docs."""
    return {"meta": {"check": check, "meaning": meaning}, "notes": f"{meaning} ({check})"}


def make_suite(name: str, expectations: list) -> gx.ExpectationSuite:
    """An ExpectationSuite called ``name`` holding ``expectations`` (not yet in a context)."""
    return gx.ExpectationSuite(name=name, expectations=expectations)


def label_expectation(classes: tuple[str, ...]):
    """``dx`` is one of the task labels ``classes`` (params ``data.classes``)."""
    return gxe.ExpectColumnValuesToBeInSet(column="dx", value_set=sorted(classes),
                                           **about(f"dx in {set_text(classes)}",
                                                   "label is a task label (data.classes)"))


def images_suite(thresholds: Thresholds, classes: tuple[str, ...]) -> gx.ExpectationSuite:
    """Per-image checks: labels (one of ``classes``), ids, age, raw-file decoding, prepared shape and content."""
    size = thresholds.image_size
    expectations = [
        label_expectation(classes),
        *[gxe.ExpectColumnValuesToNotBeNull(column=column,
                                            **about(f"{column} not null", f"every image has a {column}"))
          for column in ("image_id", "lesion_id", "dx")],
        gxe.ExpectColumnValuesToBeInSet(column="raw_decodes", value_set=[True],
                                        **about("raw_decodes in {True}", "raw image decodes fully")),
        gxe.ExpectColumnValuesToBeInSet(column="raw_mode", value_set=["RGB"],
                                        **about("raw_mode in {'RGB'}", "raw image is 8-bit RGB colour")),
        *[gxe.ExpectColumnValuesToBeBetween(column=column, min_value=size, max_value=size,
                                            **about(f"{column} == {size}",
                                                      f"prepared image {column} is {size} px"))
          for column in ("height", "width")],
        gxe.ExpectColumnValuesToBeBetween(column="channels", min_value=3, max_value=3,
                                          **about("channels == 3", "prepared image has 3 channels")),
        gxe.ExpectColumnValuesToBeBetween(column="pixel_std", min_value=thresholds.min_pixel_std,
                                          strict_min=True,
                                          **about(f"pixel_std > {thresholds.min_pixel_std}",
                                                    "prepared image is not blank/constant")),
        gxe.ExpectColumnValuesToBeUnique(column="image_id",
                                         **about("image_id unique", "each image is listed once")),
        # Missing ages (NaN; 57 images in HAM10000, whose ages run 0-85) are skipped by GX, so they pass.
        gxe.ExpectColumnValuesToBeBetween(column="age", min_value=MIN_AGE, max_value=MAX_AGE,
                                          **about(f"{MIN_AGE} <= age <= {MAX_AGE}",
                                                    "patient age in years is plausible (or unknown)")),
    ]
    return make_suite("images", expectations)


def lesions_suite() -> gx.ExpectationSuite:
    """Each lesion lives in exactly one split (no lesion leakage between splits)."""
    return make_suite("lesions", [
        gxe.ExpectColumnValuesToBeBetween(column="n_splits", min_value=1, max_value=1,
                                          **about("n_splits == 1", "lesion is in one split only")),
    ])


def duplicates_suite() -> gx.ExpectationSuite:
    """Pixel-identical prepared images never straddle splits."""
    return make_suite("duplicates", [
        gxe.ExpectColumnValuesToBeBetween(column="n_splits", min_value=1, max_value=1,
                                          **about("n_splits == 1",
                                                    "identical pixels are in one split only")),
    ])


def classes_suite(thresholds: Thresholds) -> gx.ExpectationSuite:
    """Every class has enough images in every split, and no class dominates or vanishes."""
    low, high = thresholds.min_class_share, thresholds.max_class_share
    return make_suite("classes", [
        gxe.ExpectColumnValuesToBeBetween(column="count", min_value=thresholds.min_class_count,
                                          **about(f"count >= {thresholds.min_class_count}",
                                                    "enough images of each class per split")),
        gxe.ExpectColumnValuesToBeBetween(column="share", min_value=low, max_value=high,
                                          **about(f"{low} <= share <= {high}",
                                                    "class share of its split within bounds")),
    ])


def build_suites(thresholds: Thresholds, classes: tuple[str, ...]) -> dict[str, gx.ExpectationSuite]:
    """All four suites keyed by frame name (the keys of FRAME_KEYS); ``classes``: the task labels."""
    return {
        "images": images_suite(thresholds, classes),
        "lesions": lesions_suite(),
        "duplicates": duplicates_suite(),
        "classes": classes_suite(thresholds),
    }

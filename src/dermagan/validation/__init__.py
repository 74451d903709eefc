"""Data-quality validation of the prepared dataset with Great Expectations 1.x."""

from dermagan.validation.frames import class_frame, duplicate_frame, image_frame, lesion_frame
from dermagan.validation.runner import (
    ValidationReport,
    build_frames,
    class_balance_table,
    validate_frames,
    validate_prepared,
)
from dermagan.validation.suites import FRAME_KEYS, Thresholds, build_suites

__all__ = [
    "FRAME_KEYS",
    "Thresholds",
    "ValidationReport",
    "build_frames",
    "build_suites",
    "class_balance_table",
    "class_frame",
    "duplicate_frame",
    "image_frame",
    "lesion_frame",
    "validate_frames",
    "validate_prepared",
]

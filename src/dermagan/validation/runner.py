"""Run the data-quality suites on the frames with Great Expectations 1.x and report."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import great_expectations as gx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402

from dermagan.atomic import atomic_dir  # noqa: E402
from dermagan.constants import SPLITS  # noqa: E402
from dermagan.data.prepared import read_split, read_split_table  # noqa: E402
from dermagan.errors import DermaganError  # noqa: E402
from dermagan.validation.frames import class_frame, duplicate_frame, image_frame, lesion_frame  # noqa: E402
from dermagan.validation.suites import FRAME_KEYS, Thresholds, build_suites  # noqa: E402

DOCS_SITE = "dermagan"
MAX_EXAMPLES = 5


def plain(value: Any) -> Any:
    """Recursively turn numpy scalars/arrays and tuples into JSON-serializable Python values."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class ValidationReport:
    """Outcome of all suites: overall success, one dict per failed expectation, stats per frame."""

    success: bool
    failures: list[dict] = field(default_factory=list)
    statistics: dict[str, dict] = field(default_factory=dict)
    docs_index: str | None = None
    class_balance: pd.DataFrame | None = None  # counts and shares per class x split (not in to_dict)

    def summary_text(self) -> str:
        """Short readable lines: one per failed expectation, then a line with the counts."""
        lines = []
        for f in self.failures:
            where = f" (column {f['column']})" if f["column"] else ""
            if f.get("error"):
                lines.append(f"FAILED {f['frame']}: {f['check']}{where}: error: {f['error']}")
                continue
            examples = f", e.g. {f['examples']}" if f["examples"] else ""
            lines.append(f"FAILED {f['frame']}: {f['check']}{where}: "
                         f"{f['unexpected_count']} of {f['element_count']} rows{examples}")
        evaluated = sum(s["evaluated_expectations"] for s in self.statistics.values())
        passed = sum(s["successful_expectations"] for s in self.statistics.values())
        verdict = "PASSED" if self.success else "FAILED"
        lines.append(f"{verdict}: {passed} of {evaluated} expectations passed "
                     f"on {len(self.statistics)} frames, {len(self.failures)} failed")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-serializable form (numpy values cast to Python)."""
        return plain({"success": bool(self.success), "failures": self.failures,
                      "statistics": self.statistics, "docs_index": self.docs_index})


def new_context(docs_dir: Path | None):
    """An in-memory GX context without progress bars; with a Data Docs site at ``docs_dir``."""
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        ctx.add_data_docs_site(site_name=DOCS_SITE, site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(Path(docs_dir).resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
    return ctx


def exception_message(expectation_result) -> str | None:
    """The error GX caught while evaluating an expectation (e.g. a missing column), if any."""
    info = expectation_result.exception_info or {}
    entries = info.values() if "raised_exception" not in info else [info]
    for entry in entries:
        if isinstance(entry, dict) and entry.get("raised_exception"):
            return str(entry.get("exception_message"))
    return None


def examples(result: dict, keys: list[str]) -> list:
    """Identifying key values (or 'a/b' for several keys) of up to MAX_EXAMPLES failing rows."""
    rows = result.get("partial_unexpected_index_list") or []
    found = [row[keys[0]] if len(keys) == 1 else "/".join(str(row[k]) for k in keys)
             for row in rows if all(k in row for k in keys)]
    return list(dict.fromkeys(found))[:MAX_EXAMPLES]


def failure_dict(frame: str, expectation_result, keys: list[str]) -> dict:
    """Describe one failed expectation for the report."""
    config = expectation_result.expectation_config
    result = expectation_result.result or {}
    return plain({
        "frame": frame,
        "expectation": config.type,
        "column": config.kwargs.get("column"),
        "check": (config.meta or {}).get("check", config.type),
        "unexpected_count": result.get("unexpected_count"),
        "element_count": result.get("element_count"),
        "examples": examples(result, keys),
        "error": exception_message(expectation_result),
    })


def run_frame(ctx, source, name: str, frame: pd.DataFrame, suite: gx.ExpectationSuite, keys: list[str]):
    """Register asset, batch definition, suite and validation definition; validate ``frame``."""
    batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
    definition = ctx.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch, suite=ctx.suites.add(suite)))
    result_format = {"result_format": "SUMMARY", "unexpected_index_column_names": keys}
    return definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)


def run_all(frames: dict[str, pd.DataFrame], thresholds: Thresholds, classes: tuple[str, ...],
            docs_dir: Path | None) -> ValidationReport:
    """Validate every frame in one context (``classes``: the task labels); Data Docs into ``docs_dir`` if given."""
    unknown = sorted(set(frames) - set(FRAME_KEYS))
    if unknown:
        raise DermaganError(f"unknown frame(s) {unknown}; expected names from {list(FRAME_KEYS)}")
    return run_suites(frames, build_suites(thresholds, classes), FRAME_KEYS, docs_dir)


def run_suites(frames: dict[str, pd.DataFrame], suites: dict[str, gx.ExpectationSuite],
               keys: dict[str, list[str]], docs_dir: Path | None) -> ValidationReport:
    """Validate each frame with its suite in one context (``keys``: columns naming a failing row)."""
    ctx = new_context(docs_dir)
    source = ctx.data_sources.add_pandas("dermagan")
    report = ValidationReport(success=True)
    for name, frame in frames.items():
        outcome = run_frame(ctx, source, name, frame, suites[name], keys[name])
        report.success = report.success and bool(outcome.success)
        report.statistics[name] = plain({**outcome.statistics, "rows": len(frame)})
        report.failures += [failure_dict(name, r, keys[name]) for r in outcome.results if not r.success]
    if docs_dir is not None:
        ctx.build_data_docs(site_names=[DOCS_SITE])
    return report


def validate_frames(frames: dict[str, pd.DataFrame], thresholds: Thresholds, classes: tuple[str, ...],
                    docs_dir: Path | None = None) -> ValidationReport:
    """Run the suites on the given frames (``classes``: the task labels, params ``data.classes``); Data Docs
    replace ``docs_dir`` only when complete."""
    if docs_dir is None:
        return run_all(frames, thresholds, classes, None)
    with atomic_dir(Path(docs_dir)) as tmp:
        report = run_all(frames, thresholds, classes, tmp)
    index = Path(docs_dir) / "index.html"
    if not index.is_file():
        raise DermaganError(f"{index}: Great Expectations wrote no Data Docs index")
    report.docs_index = str(index)
    return report


def build_frames(table: pd.DataFrame, arrays_by_split: dict, raw_dir: Path,
                 classes: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """The four frames the suites check, from the split table, split arrays and raw folder (``classes``:
    the task labels the arrays' integer labels index)."""
    images = image_frame(table, arrays_by_split, raw_dir, classes)
    return {"images": images, "lesions": lesion_frame(images),
            "duplicates": duplicate_frame(images), "classes": class_frame(images, classes)}


def validate_prepared(prepared_dir: Path, raw_dir: Path, thresholds: Thresholds, classes: tuple[str, ...],
                      docs_dir: Path | None = None) -> ValidationReport:
    """Read a prepared folder, build the frames and validate them against the raw images and the task labels
    ``classes`` (params ``data.classes``; the stage checks the folder was prepared for them)."""
    table = read_split_table(Path(prepared_dir))
    arrays = {split: read_split(Path(prepared_dir), split) for split in SPLITS}
    frames = build_frames(table, arrays, Path(raw_dir), classes)
    report = validate_frames(frames, thresholds, classes, docs_dir)
    report.class_balance = class_balance_table(frames["classes"])
    return report


def class_balance_table(class_frame_: pd.DataFrame) -> pd.DataFrame:
    """Class x split table: image counts, then shares (columns like ``count_train``, ``share_val``)."""
    wide = class_frame_.pivot(index="dx", columns="split", values=["count", "share"])
    wide = wide.reindex(index=list(dict.fromkeys(class_frame_["dx"])))  # the task's class order, not sorted
    splits = [s for s in SPLITS if s in set(class_frame_["split"])]
    ordered = [(value, split) for value in ("count", "share") for split in splits]
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples(ordered))
    wide.columns = [f"{value}_{split}" for value, split in ordered]
    counts = [f"count_{s}" for s in splits]
    wide[counts] = wide[counts].astype(np.int64)
    return wide.rename_axis("dx").reset_index()

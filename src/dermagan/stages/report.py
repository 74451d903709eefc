"""The report stage: one Markdown and one self-contained HTML report from the pipeline's own metrics and
figures, the flat summary files ``dvc metrics show`` lists, and the long CSVs of the top-level DVC plots;
and ``--readme``: README's results block from the committed metrics."""

from __future__ import annotations

from pathlib import Path

from dermagan.atomic import atomic_dir, atomic_file
from dermagan.config import Config
from dermagan.config.layout import LAYOUT
from dermagan.report.document import TITLE, ReportData, build_sections, figure_candidates
from dermagan.report.files import (
    read_histories,
    read_json,
    read_rocs,
    read_run_metrics,
    write_summary,
)
from dermagan.report.plots import (
    TEST_RECALL,
    TEST_ROC,
    VAL_BAL_ACC,
    recall_by_arm,
    roc_by_arm,
    val_bal_acc_long,
    validation_scores,
)
from dermagan.report.readme import results_block, rewrite_readme
from dermagan.report.render import to_html, to_markdown
from dermagan.report.tables import gan_arms, summary_rows


def run_report(cfg: Config, compare_json: Path, ensemble_json: Path, metrics_dir: Path, fidelity_dir: Path,
               history_dir: Path, roc_dir: Path, compare_dir: Path, ensemble_dir: Path, fidelity_plots: Path,
               md: Path, html: Path, summary_dir: Path, plots_dir: Path) -> list[Path]:
    """Read every arm x seed run's metrics and history, compare.json, ensemble.json and each
    ``gan.methods`` fidelity file; write ``md``, ``html`` (figures embedded), ``summary_dir/NAME.json``
    (one flat file per arm and ensemble combiner) and ``plots_dir`` (val_bal_acc.csv, test_recall.csv,
    test_roc.csv). Recall columns: params ``gan.classes`` (the augmented classes). Returns the paths written.
    """
    arms, seeds, classes = list(cfg.arms), list(cfg.train.seeds), tuple(cfg.gan.classes)
    compare = read_json(compare_json, "dvc repro compare")
    ensemble = read_json(ensemble_json, "dvc repro ensemble")
    fidelity = {m: read_json(Path(fidelity_dir) / f"{m}.json", f"dvc repro fidelity@{m}") for m in cfg.gan.methods}
    runs = read_run_metrics(metrics_dir, arms, seeds, LAYOUT.run_name)
    histories = read_histories(history_dir, arms, seeds, LAYOUT.run_name)
    figures = figure_candidates(compare_dir, ensemble_dir, fidelity_plots, list(cfg.gan.methods),
                                binary=cfg.data.positive is not None)
    sources = ", ".join(f"`{p}`" for p in (compare_json, ensemble_json, fidelity_dir, metrics_dir, history_dir))
    data = ReportData(compare=compare, runs=runs, classes=classes, level=cfg.evaluate.ci_level,
                      power=cfg.evaluate.power, ensemble=ensemble, fidelity=fidelity,
                      val_scores=validation_scores(histories), figures=tuple(figures), sources=sources)
    sections = build_sections(data)
    frames = {VAL_BAL_ACC: val_bal_acc_long(histories, LAYOUT.run_name),
              TEST_RECALL: recall_by_arm(compare, cfg.classes),
              TEST_ROC: roc_by_arm(read_rocs(roc_dir, arms, seeds, LAYOUT.run_name), classes)}
    with atomic_file(Path(md)) as tmp_md, atomic_file(Path(html)) as tmp_html, atomic_dir(Path(plots_dir)) as tmp:
        tmp_md.write_text(to_markdown(TITLE, sections, Path(md).parent), encoding="utf-8")
        tmp_html.write_text(to_html(TITLE, sections), encoding="utf-8")
        for name, frame in frames.items():
            frame.to_csv(tmp / name, index=False)
        summaries = write_summary(Path(summary_dir), summary_rows(compare, ensemble, classes))
    return [Path(md), Path(html), Path(plots_dir), *summaries]


def readme_block(cfg: Config, compare_json: Path, metrics_dir: Path, history_dir: Path) -> str:
    """README's results block as the given files render it: compare.json's arms and verdicts, the test size
    (from compare.json, or the runs' metrics files when an older compare.json lacks it) and the
    comparator's validation score (the non-GAN arms' training histories)."""
    compare = read_json(compare_json, "dvc repro compare")
    seeds = list(cfg.train.seeds)
    real = [arm for arm in compare.get("arms", {}) if arm not in gan_arms(compare)]
    runs = None if compare.get("test_counts") else read_run_metrics(metrics_dir, real[:1], seeds[:1], LAYOUT.run_name)
    val = validation_scores(read_histories(history_dir, real, seeds, LAYOUT.run_name))
    return results_block(compare, tuple(cfg.gan.classes), cfg.evaluate.ci_level, cfg.evaluate.power,
                         source=f"{compare_json} and {history_dir}", runs=runs, val_scores=val)


def run_readme(cfg: Config, readme: Path, compare_json: Path, metrics_dir: Path, history_dir: Path) -> bool:
    """Rewrite the block between README's results markers; False when it was already up to date."""
    return rewrite_readme(Path(readme), readme_block(cfg, compare_json, metrics_dir, history_dir))

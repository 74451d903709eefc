"""Every on-disk path and run name of the project, in one place.

The CLI's defaults come from here, and a test renders each ``dvc.yaml`` stage command with DVC's
own parser and checks that every path it passes is the one the CLI would choose by itself, so the
pipeline and the command line cannot disagree. Paths are relative to the repository root (the
working directory of ``dvc repro``). Ad-hoc runs (benchmarks, tuning reports, ``compare-runs``)
default to the git-ignored ``runs/`` folder; committed study records live under ``studies/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Where each stage reads and writes (one instance per repository root)."""

    root: Path = Path(".")

    def _p(self, *parts: str) -> Path:
        return self.root.joinpath(*parts) if self.root != Path(".") else Path(*parts)

    # names ------------------------------------------------------------------------------------------------------
    @staticmethod
    def run_name(arm: str, seed: int) -> str:
        """One (arm, seed) classifier run: its model folder, metrics file, MLflow run and DVC stage suffix."""
        return f"{arm}-s{seed}"

    @staticmethod
    def cv_name(arm: str, folds: int, seed: int, default_seed: int) -> str:
        """A K-fold study of one arm (``-sSEED`` only when the seed differs from ``cv.seed``)."""
        return f"{arm}-k{folds}" + (f"-s{seed}" if seed != default_seed else "")

    @staticmethod
    def tune_name(target: str, method: str | None = None, dx: str | None = None) -> str:
        return target + (f"-{method}-{dx}" if target == "gan" else "")

    # data and checks --------------------------------------------------------------------------------------------
    @property
    def raw(self) -> Path:
        return self._p("data")

    @property
    def prepared(self) -> Path:
        return self._p("artifacts", "prepared")

    @property
    def eda(self) -> Path:
        return self._p("reports", "eda")

    @property
    def validation(self) -> Path:
        return self._p("reports", "validation")

    @property
    def external(self) -> Path:
        """The external test sets of params ``evaluate.external``, prepared (``prepare-external``)."""
        return self._p("artifacts", "external")

    def external_set(self, name: str) -> Path:
        """One prepared external test set: ``artifacts/external/NAME.npz`` (a prepared split's format)."""
        return self.external / f"{name}.npz"

    # generators -------------------------------------------------------------------------------------------------
    def gan_dir(self, method: str) -> Path:
        return self._p("artifacts", "gan", method)

    @property
    def stgan_base(self) -> Path:
        return self.gan_dir("stgan") / "base"

    def gan_class_dir(self, method: str, dx: str) -> Path:
        return self.gan_dir(method) / dx

    @property
    def domain_encoder(self) -> Path:
        return self._p("artifacts", "domain_encoder")

    @property
    def domain_encoder_metrics(self) -> Path:
        return self._p("metrics", "domain_encoder.json")

    @property
    def synthetic_root(self) -> Path:
        return self._p("artifacts", "synthetic")

    def synthetic(self, method: str, set_name: str | None = None) -> Path:
        return self.synthetic_root / method / set_name if set_name else self.synthetic_root / method

    def dedup_report(self, method: str) -> Path:
        return self._p("reports", "dedup", method)

    @property
    def dedup_calibration(self) -> Path:
        return self._p("reports", "dedup", "calibration")

    def fidelity_metrics(self, method: str) -> Path:
        return self._p("metrics", "fidelity", f"{method}.json")

    def fidelity_plots(self, method: str) -> Path:
        return self._p("reports", "fidelity", method)

    # classifiers ------------------------------------------------------------------------------------------------
    def trainset(self, arm: str) -> Path:
        return self._p("artifacts", "trainsets", arm)

    def trainset_report(self, arm: str) -> Path:
        return self._p("reports", "validation_augmented", arm)

    @property
    def models(self) -> Path:
        return self._p("artifacts", "models")

    def model_dir(self, arm: str, seed: int) -> Path:
        return self.models / self.run_name(arm, seed)

    def history(self, arm: str, seed: int) -> Path:
        return self._p("reports", "train", f"{self.run_name(arm, seed)}.csv")

    @property
    def histories(self) -> Path:
        return self._p("reports", "train")

    @property
    def run_metrics_dir(self) -> Path:
        return self._p("metrics", "runs")

    def run_metrics(self, arm: str, seed: int) -> Path:
        return self.run_metrics_dir / f"{self.run_name(arm, seed)}.json"

    def eval_plots(self, arm: str, seed: int) -> Path:
        return self._p("reports", "eval", self.run_name(arm, seed))

    @property
    def predictions_dir(self) -> Path:
        return self._p("reports", "predictions")

    def predictions(self, arm: str, seed: int) -> Path:
        return self.predictions_dir / f"{self.run_name(arm, seed)}.csv"

    def roc(self, arm: str, seed: int) -> Path:
        return self._p("reports", "roc", f"{self.run_name(arm, seed)}.csv")

    def reliability(self, arm: str, seed: int) -> Path:
        return self._p("reports", "reliability", f"{self.run_name(arm, seed)}.csv")

    # comparison and ensembles -----------------------------------------------------------------------------------
    @property
    def compare(self) -> Path:
        return self._p("reports", "compare")

    @property
    def compare_summary(self) -> Path:
        return self._p("metrics", "compare.json")

    @property
    def ensemble(self) -> Path:
        return self._p("reports", "ensemble")

    @property
    def ensemble_metrics(self) -> Path:
        return self._p("metrics", "ensemble.json")

    @property
    def ensemble_predictions(self) -> Path:
        return self._p("reports", "ensemble_predictions")

    # the report (reads the metrics and figures above) ---------------------------------------------------------
    @property
    def fidelity_metrics_dir(self) -> Path:
        return self.fidelity_metrics("METHOD").parent

    @property
    def fidelity_plots_root(self) -> Path:
        return self.fidelity_plots("METHOD").parent

    @property
    def roc_dir(self) -> Path:
        return self.roc("ARM", 0).parent

    @property
    def report_md(self) -> Path:
        return self._p("reports", "report.md")

    @property
    def report_html(self) -> Path:
        """The same report, self-contained (figures as data URIs): it opens offline."""
        return self._p("reports", "report.html")

    @property
    def summary_dir(self) -> Path:
        """Small flat metrics files, one per arm and ensemble combiner: what ``dvc metrics show`` lists."""
        return self._p("metrics", "summary")

    def summary_metrics(self, name: str) -> Path:
        return self.summary_dir / f"{name}.json"

    @property
    def report_plots(self) -> Path:
        """Long-format CSVs of the top-level DVC plots (all runs in one chart)."""
        return self._p("reports", "plots")

    @property
    def readme(self) -> Path:
        """The README whose results block ``dermagan report --readme`` rewrites."""
        return self._p("README.md")

    # exported models (git-ignored; `dermagan export`, not a pipeline stage) ---------------------------------------
    @property
    def bundles(self) -> Path:
        return self._p("bundles")

    def bundle(self, name: str, version: str | int) -> Path:
        """The offline ONNX bundle of one registered version: ``bundles/NAME-vVERSION``."""
        return self.bundles / f"{name}-v{version}"

    # working folders and ad-hoc runs (git-ignored) --------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self._p("checkpoints")

    @property
    def runs(self) -> Path:
        return self._p("runs")

    def tune_report(self, target: str, method: str | None = None, dx: str | None = None) -> Path:
        return self.runs / "tune" / self.tune_name(target, method, dx)

    def cv_report(self, name: str) -> Path:
        return self._p("reports", "cv", name)

    def bench(self, name: str) -> Path:
        return self.runs / "bench" / f"{name}.json"

    def compare_runs(self, arm: str) -> Path:
        return self.runs / "compare-runs" / f"{arm}.json"

    @property
    def predictions_csv(self) -> Path:
        return self._p("preds.csv")

    # profiles: a params overlay run as its own DVC project ------------------------------------------------------
    @property
    def profiles(self) -> Path:
        return self._p("profiles")

    def profile_file(self, name: str) -> Path:
        """The overlay a user writes: ``profiles/NAME.yaml``."""
        return self.profiles / f"{name}.yaml"

    def profile_dir(self, name: str) -> Path:
        """The profile's generated DVC project (its params.yaml, dvc.yaml, dvc.lock, metrics and outputs)."""
        return self.profiles / name

    @property
    def imports(self) -> Path:
        """DVC imports beside the raw data (acquisition sources, external test sets)."""
        return self._p("imports")

    @property
    def tracking_db(self) -> Path:
        return self._p("mlruns", "mlflow.db")


LAYOUT = Layout()

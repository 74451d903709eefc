"""``dermagan`` command line: one subcommand per pipeline stage, plus ui, promote and predict.

Every stage reads ``params.yaml`` and the paths given on the command line (dvc.yaml passes
them), then calls plain library functions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dermagan.errors import DermaganError
from dermagan.params import load_params

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


def cmd_prepare(args: argparse.Namespace) -> None:
    from dermagan.stages.prepare import run_prepare

    summary = run_prepare(load_params(args.params), args.raw, args.out, args.eda)
    for split, info in summary.items():
        print(f"{split:5s}: {info['images']:5d} images, {info['lesions']:5d} lesions, {info['per_class']}")


def cmd_validate(args: argparse.Namespace) -> None:
    from dermagan.stages.validate import run_validate

    run_validate(load_params(args.params), args.prepared, args.raw, args.out)


def cmd_train(args: argparse.Namespace) -> None:
    from dermagan.stages.train import run_train

    info = run_train(load_params(args.params), args.arm, args.prepared, args.out, args.history, args.checkpoints)
    print(f"arm {args.arm}: best val bal_acc {info['best_val_bal_acc']:.4f} at epoch {info['best_epoch']}; "
          f"registered {info['registered_model']} v{info['version']} (run {info['run_id']})")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from dermagan.stages.evaluate import run_evaluate

    doc = run_evaluate(load_params(args.params), args.arm, args.prepared, args.model_dir, args.metrics, args.plots,
                       args.predictions, args.roc)
    test = doc["test"]
    print(f"arm {args.arm} test bal_acc {test['bal_acc']:.4f} "
          f"[{test['bal_acc_ci_low']:.4f}, {test['bal_acc_ci_high']:.4f}]")


def cmd_compare(args: argparse.Namespace) -> None:
    from dermagan.stages.compare import run_compare

    print(run_compare(load_params(args.params), args.metrics_dir, args.out))


def cmd_train_gan(args: argparse.Namespace) -> None:
    from dermagan.stages.train_gan import run_train_gan

    results = run_train_gan(load_params(args.params), args.method, args.prepared, args.out, args.checkpoints)
    for name, info in results.items():
        print(f"{args.method} {name}: {info['images_seen']} images seen in {info['wall_seconds']:.0f} s; "
              f"registered dermagan-generator v{info['version']}")


def cmd_generate(args: argparse.Namespace) -> None:
    from dermagan.stages.generate import run_generate

    manifest = run_generate(load_params(args.params), args.method, args.prepared, args.gan_dir, args.out)
    print(f"wrote {len(manifest)} images: {manifest['class'].value_counts().to_dict()}")


def cmd_dedup(args: argparse.Namespace) -> None:
    from dermagan.stages.dedup import run_dedup

    report = run_dedup(load_params(args.params), args.prepared, args.synthetic, args.out, args.report)
    print(f"dedup: {report['counts']} (holdout-near: {report['holdout_near']})")


def cmd_calibrate_dedup(args: argparse.Namespace) -> None:
    from dermagan.stages.calibrate_dedup import run_calibrate_dedup

    summary = run_calibrate_dedup(load_params(args.params), args.prepared, args.out)
    print(json.dumps(summary, indent=2))


def cmd_promote(args: argparse.Namespace) -> None:
    import mlflow

    from dermagan.tracking.registry import promote
    from dermagan.tracking.setup import configure

    configure(load_params(args.params)["mlflow"]["experiment"])
    if args.force:
        print("--force: promoting without checking that the version beats the current champion")
    decision = promote(mlflow.MlflowClient(), args.name, args.version, force=args.force)
    print(decision.message)
    if not decision.promoted and decision.previous_version != decision.version:
        sys.exit(1)


def cmd_predict(args: argparse.Namespace) -> None:
    import mlflow

    from dermagan.atomic import atomic_file
    from dermagan.classify.predict import predict_folder
    from dermagan.tracking.setup import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    try:
        model = mlflow.pytorch.load_model(args.model, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a bad URI
        raise DermaganError(f"cannot load model '{args.model}' from {tracking_uri()}: {exc}") from exc
    frame, skipped = predict_folder(model, args.images_dir)
    with atomic_file(args.out) as tmp:
        frame.to_csv(tmp, index=False)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    print(f"wrote {len(frame)} predictions to {args.out} ({len(skipped)} unreadable file(s) skipped)")


def cmd_ui(args: argparse.Namespace) -> None:
    from dermagan.tracking.setup import tracking_uri

    command = ["mlflow", "ui", "--backend-store-uri", tracking_uri(), "--host", args.host, "--port", str(args.port)]
    print(" ".join(command))
    os.execvp(command[0], command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dermagan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
        p.set_defaults(func=func)
        return p

    p = add("prepare", cmd_prepare, "Resize raw HAM10000, split by lesion_id, write arrays and EDA figures.")
    p.add_argument("--raw", type=Path, default=Path("data"), help="HAM10000-layout folder (metadata.csv + images/)")
    p.add_argument("--out", type=Path, default=Path("artifacts/prepared"))
    p.add_argument("--eda", type=Path, default=Path("reports/eda"))

    p = add("validate", cmd_validate, "Great Expectations checks of images, labels, splits and balance.")
    p.add_argument("--prepared", type=Path, default=Path("artifacts/prepared"))
    p.add_argument("--raw", type=Path, default=Path("data"))
    p.add_argument("--out", type=Path, default=Path("reports/validation"))

    p = add("train", cmd_train, "Train one classifier arm (see `arms` in params.yaml) and register it.")
    p.add_argument("--arm", required=True, help="arm name from params.yaml `arms`")
    p.add_argument("--prepared", type=Path, default=Path("artifacts/prepared"))
    p.add_argument("--out", type=Path, help="model folder (default: artifacts/models/ARM)")
    p.add_argument("--history", type=Path, help="per-epoch CSV (default: reports/train/ARM.csv)")
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="resume checkpoints folder")

    p = add("evaluate", cmd_evaluate, "Score one trained arm on the real-only test split.")
    p.add_argument("--arm", required=True)
    p.add_argument("--prepared", type=Path, default=Path("artifacts/prepared"))
    p.add_argument("--model-dir", type=Path, help="default: artifacts/models/ARM")
    p.add_argument("--metrics", type=Path, help="default: metrics/ARM.json")
    p.add_argument("--plots", type=Path, help="figures folder (default: reports/eval/ARM)")
    p.add_argument("--predictions", type=Path, help="per-image test predictions (default: reports/predictions/ARM.csv)")
    p.add_argument("--roc", type=Path, help="ROC curves on a shared FPR grid (default: reports/roc/ARM.csv)")

    p = add("compare", cmd_compare, "Table and figure of every arm's test metrics.")
    p.add_argument("--metrics-dir", type=Path, default=Path("metrics"))
    p.add_argument("--out", type=Path, default=Path("reports/compare"))

    p = add("train-gan", cmd_train_gan, "Train DCGANs on the real train split (one per class, or one conditional).")
    p.add_argument("--method", required=True, choices=["dcgan", "cdcgan"])
    p.add_argument("--prepared", type=Path, default=Path("artifacts/prepared"))
    p.add_argument("--out", type=Path, required=True, help="folder for the EMA generators")
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="resume checkpoints folder")

    p = add("generate", cmd_generate, "Sample synthetic PNGs and a manifest from trained generators.")
    p.add_argument("--method", required=True, choices=["dcgan", "cdcgan"])
    p.add_argument("--prepared", type=Path, default=Path("artifacts/prepared"))
    p.add_argument("--gan-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)

    p = add("dedup", cmd_dedup, "Drop synthetic near-duplicates and memorised train images (pHash + wHash).")
    p.add_argument("--prepared", type=Path, default=Path("artifacts/prepared"))
    p.add_argument("--synthetic", type=Path, required=True, help="folder written by `dermagan generate`")
    p.add_argument("--out", type=Path, required=True, help="deduplicated set")
    p.add_argument("--report", type=Path, required=True, help="report folder (counts, histogram)")

    p = add("calibrate-dedup", cmd_calibrate_dedup,
            "Hash distances of same-lesion photo pairs vs nearest other lesions, to choose dedup thresholds.")
    p.add_argument("--prepared", type=Path, default=Path("artifacts/prepared"))
    p.add_argument("--out", type=Path, default=Path("reports/dedup/calibration"))

    p = add("promote", cmd_promote, "Move the `champion` alias to a better model version (by test balanced accuracy).")
    p.add_argument("--name", default="dermagan-classifier", help="registered model (default: %(default)s)")
    p.add_argument("--version", help="version to promote (default: the best evaluated version)")
    p.add_argument("--force", action="store_true", help="promote even if not better than the current champion")

    p = add("predict", cmd_predict, "Classify every JPEG/PNG in a folder with a registered model.")
    p.add_argument("images_dir", type=Path)
    p.add_argument("--model", default="models:/dermagan-classifier@champion", help="model URI (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("preds.csv"))

    p = add("ui", cmd_ui, "Open the MLflow UI on the project's tracking store.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    return parser


def _default_paths(args: argparse.Namespace) -> None:
    arm = getattr(args, "arm", None)
    defaults = {"out": Path(f"artifacts/models/{arm}"), "history": Path(f"reports/train/{arm}.csv"),
                "model_dir": Path(f"artifacts/models/{arm}"), "metrics": Path(f"metrics/{arm}.json"),
                "plots": Path(f"reports/eval/{arm}"),
                "predictions": Path(f"reports/predictions/{arm}.csv"), "roc": Path(f"reports/roc/{arm}.csv")}
    for key, value in defaults.items():
        if arm and getattr(args, key, "unset") is None:
            setattr(args, key, value)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _default_paths(args)
    try:
        args.func(args)
    except DermaganError as exc:
        print(f"dermagan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

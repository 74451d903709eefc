"""dermagan: does GAN augmentation help rare skin-lesion classes? Measured on real-only, lesion-disjoint tests.

`dvc repro` runs the pipeline stages below in order (each is one subcommand); the other commands are
studies (tune, cv, bench-*) and model use (promote, predict, ui). Every command reads params.yaml once
(plus the tuned files it names), checks it, and fills unset paths from the project's one Layout.
Run `dermagan COMMAND --help` for a command's options and defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from dermagan.errors import DermaganError
from dermagan.outputs import check_command_paths
from dermagan.config import load_config
from dermagan.config.layout import LAYOUT

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


def cmd_prepare(args: argparse.Namespace) -> None:
    from dermagan.stages.prepare import run_prepare

    summary = run_prepare(args.config, args.raw, args.out, args.eda)
    for split, info in summary.items():
        print(f"{split:5s}: {info['images']:5d} images, {info['lesions']:5d} lesions, {info['per_class']}")


def cmd_validate(args: argparse.Namespace) -> None:
    from dermagan.stages.validate import run_validate

    run_validate(args.config, args.prepared, args.raw, args.out)


def cmd_prepare_external(args: argparse.Namespace) -> None:
    from dermagan.stages.prepare_external import run_prepare_external

    summary = run_prepare_external(args.config, args.prepared, args.raw, args.out)
    if not summary:
        print(f"no external test sets (params evaluate.external is empty); wrote an empty {args.out}/summary.json")
    for name, info in summary.items():
        print(f"{name}: {info['images']} images from {info['folder']}, {info['per_class']}")
        for warning in info["warnings"]:
            print(f"dermagan prepare-external: warning: {name}: {warning}", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> None:
    from dermagan.stages.train import run_train

    info = run_train(args.config, args.arm, args.seed, args.prepared, args.trainset, args.out,
                     args.history, args.checkpoints)
    print(f"arm {args.arm} seed {args.seed}: best val bal_acc {info['best_val_bal_acc']:.4f} at epoch {info['best_epoch']}; "
          f"registered {info['registered_model']} v{info['version']} (run {info['run_id']})")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from dermagan.stages.evaluate import run_evaluate

    doc = run_evaluate(args.config, args.arm, args.seed, args.prepared, args.model_dir, args.metrics, args.plots,
                       args.predictions, args.roc, reliability_csv=args.reliability, external_dir=args.external)
    test = doc["test"]
    print(f"arm {args.arm} seed {args.seed} test bal_acc {test['bal_acc']:.4f} "
          f"[{test['bal_acc_ci_low']:.4f}, {test['bal_acc_ci_high']:.4f}]")
    for name, block in doc.get("external", {}).items():
        print(f"arm {args.arm} seed {args.seed} external {name} bal_acc {block['bal_acc']:.4f} "
              f"[{block['bal_acc_ci_low']:.4f}, {block['bal_acc_ci_high']:.4f}] ({block['n_images']} images)")


def cmd_compare_runs(args: argparse.Namespace) -> None:
    from dermagan.stages.compare import run_compare_runs

    doc = run_compare_runs(args.config, args.baseline, args.candidate, args.arm, args.out,
                           args.baseline_arm)
    print(f"{args.arm}: {args.candidate} vs {args.baseline} ({len(doc['seeds'])} seeds, {doc['n_test']} test images, "
          f"{doc['ci_level']:.0%} paired bootstrap CI)")
    for metric, r in doc["metrics"].items():
        print(f"  {metric:8s} {r['candidate_value']:.3f} vs {r['baseline_value']:.3f}: {r['diff']:+.3f} "
              f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] {r['verdict']}")


def cmd_compare(args: argparse.Namespace) -> None:
    from dermagan.stages.compare import run_compare

    print(run_compare(args.config, args.metrics_dir, args.out, args.predictions_dir, args.history_dir,
                      summary_json=args.summary, external_dir=args.external, eval_dir=args.eval_dir))


def cmd_ensemble(args: argparse.Namespace) -> None:
    from dermagan.stages.ensemble import default_arms, run_ensemble

    params = args.config
    doc = run_ensemble(params, args.arms or default_arms(params), args.seeds, args.prepared, args.models_dir,
                       args.out, args.metrics, args.predictions_dir, external_dir=args.external)
    for combiner, stats in doc["combiners"].items():
        print(f"{combiner:13s} test bal_acc {stats['bal_acc_mean']:.4f} (val-fitted weights, "
              f"{stats['collapsed_seeds']} collapsed seed(s))")
    reg = doc["registered"]
    print(f"best single arm (by val): {doc['best_single']['arm']}; registered {reg['combiner']} as {reg['model_uri']}")


def cmd_report(args: argparse.Namespace) -> None:
    from dermagan.stages.report import run_readme, run_report

    if args.readme is not None:
        changed = run_readme(args.config, args.readme, args.compare, args.metrics_dir, args.history_dir)
        print(f"{args.readme}: results block {'rewritten' if changed else 'already up to date'} (from {args.compare})")
        return
    for path in run_report(args.config, args.compare, args.ensemble, args.metrics_dir, args.fidelity_dir,
                           args.history_dir, args.roc_dir, args.compare_dir, args.ensemble_dir, args.fidelity_plots,
                           args.md, args.html, args.summary_dir, args.plots):
        print(f"wrote {path}")


def cmd_validate_augmented(args: argparse.Namespace) -> None:
    from dermagan.stages.validate_augmented import run_validate_augmented

    run_validate_augmented(args.config, args.arm, args.prepared, args.synthetic_root, args.out,
                           args.report)


def cmd_fidelity(args: argparse.Namespace) -> None:
    from dermagan.stages.fidelity import run_fidelity

    run_fidelity(args.config, args.method, args.prepared, args.synthetic_root, args.dedup_report,
                 args.gan_dir, args.metrics, args.plots, domain_encoder=args.domain_encoder)


def cmd_train_gan(args: argparse.Namespace) -> None:
    from dermagan.stages.train_gan import run_train_gan

    results = run_train_gan(args.config, args.method, args.prepared, args.out, args.checkpoints)
    for name, info in results.items():
        print(f"{args.method} {name}: {info['images_seen']} images seen in {info['wall_seconds']:.0f} s; "
              f"registered {info['registered_model']} v{info['version']}")


def cmd_train_stgan(args: argparse.Namespace) -> None:
    from dermagan.stages.train_stgan import run_stgan_base, run_stgan_class

    params = args.config
    if args.stage == 1:
        info = run_stgan_base(params, args.prepared, args.out, args.checkpoints)
    elif not args.dx:
        raise DermaganError("train-stgan --stage 2 needs --class (one of params gan.classes)")
    else:
        info = run_stgan_class(params, args.dx, args.prepared, args.base, args.out, args.checkpoints)
    print(f"stgan stage {args.stage} {args.dx or 'all classes'}: {info['images_seen']} images seen in "
          f"{info['wall_seconds']:.0f} s; registered {info['registered_model']} v{info['version']}")


def cmd_train_cyclegan(args: argparse.Namespace) -> None:
    from dermagan.stages.train_cyclegan import run_train_cyclegan

    info = run_train_cyclegan(args.config, args.dx, args.prepared, args.out, args.checkpoints, args.variant)
    print(f"cyclegan {info['translation']}: {info['images_seen']} images seen in {info['wall_seconds']:.0f} s; "
          f"registered {info['registered_model']} v{info['version']}")


def cmd_domain_encoder(args: argparse.Namespace) -> None:
    from dermagan.stages.domain_encoder import run_domain_encoder

    info = run_domain_encoder(args.config, args.prepared, args.out, metrics_json=args.metrics)
    print(f"domain encoder: val balanced accuracy {info['val_bal_acc']:.3f} after {info['epochs']} epochs "
          f"({info['wall_seconds']:.0f} s)")


def cmd_generate(args: argparse.Namespace) -> None:
    from dermagan.stages.generate import run_generate

    manifest = run_generate(args.config, args.method, args.prepared, args.gan_dir, args.out)
    print(f"wrote {len(manifest)} images: {manifest['class'].value_counts().to_dict()}")


def cmd_dedup(args: argparse.Namespace) -> None:
    from dermagan.stages.dedup import run_dedup

    report = run_dedup(args.config, args.prepared, args.synthetic, args.out, args.report, args.method)
    print(f"dedup: {report['counts']} (holdout-near: {report['holdout_near']})")


def cmd_calibrate_dedup(args: argparse.Namespace) -> None:
    from dermagan.stages.calibrate_dedup import run_calibrate_dedup

    summary = run_calibrate_dedup(args.config, args.prepared, args.out)
    print(json.dumps(summary, indent=2))


def cmd_models(args: argparse.Namespace) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    from dermagan.tracking.registry import NO_MODELS_HINT, format_versions, registered_model_names, version_rows
    from dermagan.tracking.setup import check_tracking_uri, sqlite_path, tracking_uri

    if args.limit is not None and args.limit < 1:
        raise DermaganError(f"--limit {args.limit}: need a positive number of versions")
    uri = check_tracking_uri(tracking_uri())
    path = sqlite_path(uri)
    if path is not None and not path.is_file():  # listing must not create an empty store
        raise DermaganError(f"no MLflow tracking database at {path} (tracking URI '{uri}'); {NO_MODELS_HINT}, or "
                            "set MLFLOW_TRACKING_URI to the store that holds them")
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    try:
        names = registered_model_names(client) if args.all else [args.name]
        if not names:
            raise DermaganError(f"no model is registered in {uri}; {NO_MODELS_HINT}")
        tables = [format_versions(name, version_rows(client, name, args.limit), limited=args.limit is not None)
                  for name in names]
    except (MlflowException, SQLAlchemyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DermaganError(f"cannot read the model registry in '{uri}': {type(exc).__name__}: {first}") from exc
    print("\n\n".join(tables))


def cmd_promote(args: argparse.Namespace) -> None:
    import mlflow

    from dermagan.tracking.registry import parse_version, promote
    from dermagan.tracking.setup import configure

    version = parse_version(args.version)  # before the store is opened: a typo fails at once
    cfg = args.config
    configure(cfg.mlflow.experiment)
    if args.force:
        print("--force: promoting without the paired-bootstrap test gate against the current champion")
    decision = promote(mlflow.MlflowClient(), args.name, version, force=args.force,
                       n_boot=cfg.evaluate.bootstrap_samples, level=cfg.evaluate.ci_level,
                       seed=cfg.evaluate.seed)
    print(decision.message)
    if not decision.promoted and decision.previous_version != decision.version:
        sys.exit(1)


def cmd_predict(args: argparse.Namespace) -> None:
    import mlflow
    import torch

    from dermagan.atomic import atomic_file
    from dermagan.classify.preprocess import PREPROCESSING_DEFAULTS, InputError, write_predictions_csv
    from dermagan.device import pick_device
    from dermagan.ensemble.serving import input_rules, load_classifier, predict_folder_any
    from dermagan.tracking.setup import check_tracking_uri, tracking_uri

    if (args.min_side is not None and args.min_side < 1) or (args.max_aspect is not None and not args.max_aspect >= 1):
        raise DermaganError(f"--min-side {args.min_side} / --max-aspect {args.max_aspect}: need --min-side >= 1 "
                            "and --max-aspect >= 1")
    device = pick_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DermaganError("--device cuda: no CUDA device is available here (use --device auto or cpu)")
    mlflow.set_tracking_uri(check_tracking_uri(tracking_uri()))
    try:
        model = load_classifier(args.model)  # a classifier -> nn.Module; an ensemble -> its pyfunc
    except DermaganError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a bad URI
        raise DermaganError(f"cannot load model '{args.model}' from {tracking_uri()}: {exc}") from exc
    rules = {**PREPROCESSING_DEFAULTS, **input_rules(model)}  # the flags, else the model's own, else the defaults
    min_side = int(rules["min_side"] if args.min_side is None else args.min_side)
    max_aspect = float(rules["max_aspect"] if args.max_aspect is None else args.max_aspect)
    frame, skipped = predict_folder_any(model, args.images_dir, device=device, min_side=min_side,
                                        max_aspect=max_aspect)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    try:
        with atomic_file(args.out, "--out") as tmp:
            write_predictions_csv(list(frame.columns), frame.itertuples(index=False, name=None), tmp)
    except InputError as exc:
        raise DermaganError(str(exc)) from exc
    print(f"wrote {len(frame)} predictions to {args.out} ({len(skipped)} unreadable file(s) skipped)")


def cmd_export(args: argparse.Namespace) -> None:
    import mlflow

    from dermagan.export.registered import run_export, summary
    from dermagan.tracking.setup import check_tracking_uri, tracking_uri

    mlflow.set_tracking_uri(check_tracking_uri(tracking_uri()))
    ev = args.config.evaluate
    report = run_export(args.model, args.out, args.prepared, n_boot=ev.bootstrap_samples, level=ev.ci_level,
                        seed=ev.seed, n_bins=ev.calibration_bins, min_count=ev.min_test_count,
                        calibration_count=args.calibration_count)
    print(summary(report))


def cmd_tune(args: argparse.Namespace) -> None:
    from dermagan.stages.tune import apply_best, run_tune

    cfg = args.config
    summary = run_tune(cfg, args.target, args.prepared, args.report, method=args.method, dx=args.dx,
                       workers=args.workers, worker_offset=args.worker_index, storage=args.storage, study=args.study,
                       n_trials=args.n_trials, timeout_minutes=args.timeout_minutes)
    print(json.dumps(summary, indent=2))
    if args.apply:
        path = apply_best(args.params, cfg, args.target, summary)
        print(f"wrote the best values to {path}; `dvc params diff` shows the change, `dvc repro` retrains")
    else:
        target = cfg.tuned_gan_params if args.target == "gan" else cfg.tuned_params
        print(f"not applied (add --apply to write them into {target})")


def cmd_cv(args: argparse.Namespace) -> None:
    from dermagan.stages.cv import run_cv

    summary = run_cv(args.config, args.arm, args.prepared, args.out, args.checkpoints,
                     n_folds=args.folds, seed=args.seed, max_folds=args.max_folds)
    if summary["complete"]:
        print(f"arm {args.arm}: {summary['folds']}-fold balanced accuracy {summary['bal_acc_mean']:.4f} "
              f"± {summary['bal_acc_std']:.4f} (MLflow run {summary['mlflow_run_id']})")


def cmd_bench_train(args: argparse.Namespace) -> None:
    import torch

    from dermagan.atomic import atomic_file
    from dermagan.classify.bench import PHASES, profile_training
    from dermagan.classify.recipe import build_classifier, train_config
    from dermagan.classify.train import Trainer
    from dermagan.data.prepared import read_split
    from dermagan.device import pick_device

    cfg = args.config
    recipe = cfg.recipe(args.arm)
    trainer_cfg = train_config(recipe, args.seed, cfg.augment.plain(), cfg.train.max_batches_per_epoch)
    torch.manual_seed(args.seed)
    model = build_classifier(recipe, cfg.classes, cfg.prepare.image_size)
    trainer = Trainer(model, read_split(args.prepared, "train"), trainer_cfg, pick_device(cfg.train.device))
    result = profile_training(trainer, args.steps)
    print(f"arm {args.arm}: {recipe['backbone']}, batch {trainer_cfg.batch_size}, {torch.get_num_threads()} threads")
    for phase in PHASES:
        print(f"  {phase:9s} {result['ms_per_step'][phase]:7.1f} ms/step  {result['share'][phase]:6.1%}")
    print(f"training step: {result['train_images_per_s']:.0f} img/s; raw forward+backward: "
          f"{result['raw_images_per_s']:.0f} img/s; ratio {result['ratio']:.2f}")
    with atomic_file(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


def cmd_bench_gan(args: argparse.Namespace) -> None:
    import torch

    from dermagan.stages.bench_gan import run_bench_gan

    result = run_bench_gan(args.config, args.prepared, stage=args.stage, dx=args.dx,
                           discriminator=args.discriminator, feature_size=args.feature_size, steps=args.steps,
                           train_images=args.train_images, eval_every=args.eval_every, n_samples=args.samples,
                           domain_encoder=args.domain_encoder, out=args.out, base=args.base)
    t = result["throughput"]
    print(f"stgan stage {args.stage} ({result['discriminator']} D, batch {t['batch_size']}, "
          f"{torch.get_num_threads()} threads): D step {t['d_step_images_per_s']:.1f} img/s, G step "
          f"{t['g_step_images_per_s']:.1f} img/s, whole step {t['step_images_per_s']:.1f} img/s; raw fwd+bwd "
          f"{t['raw_step_images_per_s']:.1f} img/s; ratio {t['ratio']:.2f}")
    for point in result.get("curve", []):
        print(f"  {point['images_seen']:6d} images ({point['train_seconds'] / 60:5.1f} min): "
              f"domain FD {point['fd_domain']:.2f} (yardstick {result['yardstick']['fd_domain']:.2f}), "
              f"k-NN recall {point['knn_recall_domain']:.2f}, precision {point['knn_precision_domain']:.2f}")


def cmd_bench_predict(args: argparse.Namespace) -> None:
    import mlflow

    from dermagan.export.bench import run_bench_predict
    from dermagan.tracking.setup import check_tracking_uri, tracking_uri

    mlflow.set_tracking_uri(check_tracking_uri(tracking_uri()))
    _, table = run_bench_predict(args.model, args.prepared, args.out, seed=args.config.evaluate.seed,
                                 calibration_count=args.calibration_count, reference=not args.no_reference,
                                 threads=tuple(args.threads), batch_size=args.batch_size, repeats=args.repeats)
    print(table)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")


def cmd_bench_serve(args: argparse.Namespace) -> None:
    from dermagan.classify.serving_bench import run_bench_serve
    from dermagan.tracking.setup import check_tracking_uri, tracking_uri

    _, table = run_bench_serve(args.model, args.images, args.out, clients=args.clients, requests=args.requests,
                               count=args.count, time_limit_s=args.time_limit,
                               tracking_uri=check_tracking_uri(tracking_uri()))
    print(table)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")


def cmd_bench_bundle(args: argparse.Namespace) -> None:
    from dermagan.export.bench_bundle import run_bench_bundle

    _, table = run_bench_bundle(args.bundle, args.images, args.out, repeats=args.repeats)
    print(table)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")


def ui_command(host: str, port: int, uri: str | None = None) -> list[str]:
    """``python -m mlflow ui ...`` with this interpreter, so it works without the venv on PATH."""
    from dermagan.tracking.setup import tracking_uri

    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri or tracking_uri(),
            "--host", host, "--port", str(port)]


def _optional_config(args: argparse.Namespace):
    """The command's Config, also for a command that needs none when its params file exists (e.g. a
    profile's, to name its experiments and registered model); None without a params file."""
    if getattr(args, "config", None) is None and Path(args.params).is_file():
        args.config = load_config(args.params)
    return getattr(args, "config", None)


def _experiment_names(args: argparse.Namespace) -> list[str]:
    """The params file's classifier and GAN experiments (the defaults when there is no params file)."""
    cfg = _optional_config(args)
    return [cfg.mlflow.experiment, cfg.gan.experiment] if cfg else ["dermagan", "dermagan-gan"]


def runs_links(uri: str, base: str, names: list[str]) -> list[str]:
    """Links that open each existing experiment on its runs table. MLflow 3's UI lands on its GenAI overview
    until 'Model training' (top left) is picked once in that browser; ``workflowType=machine_learning`` skips
    that. Nothing is created: a store or experiment that does not exist yet is left out."""
    from dermagan.tracking.setup import sqlite_path

    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        return [f"no runs yet ({path} does not exist); the pipeline's experiments appear once `dvc repro` runs"]
    import mlflow

    client = mlflow.MlflowClient(uri)
    lines = []
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            lines.append(f"open {base}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
                         f"   ({name})")
    if lines:
        lines.append("(MLflow 3 opens experiments on its GenAI overview until you pick 'Model training' at the top "
                     "left once; the links above open the runs table)")
    return lines


def cmd_ui(args: argparse.Namespace) -> None:
    from dermagan.tracking.setup import check_tracking_uri, tracking_uri

    uri = check_tracking_uri(tracking_uri())
    command = ui_command(args.host, args.port, uri)
    print(" ".join(command))
    for line in runs_links(uri, f"http://{args.host}:{args.port}", _experiment_names(args)):
        print(line)
    try:
        os.execv(command[0], command)
    except OSError as exc:
        raise DermaganError(f"cannot start the MLflow UI ({command[0]} -m mlflow): {exc}") from exc


def cmd_profile(args: argparse.Namespace) -> None:
    from dermagan.stages.profile import run_profile

    folder = run_profile(args.params, args.name, args.targets, args.dry_run)
    print(f"profile {args.name}: {folder}/ ({'written; run `dvc repro` there' if args.dry_run else 'reproduced'}); "
          f"`cd {folder} && dvc metrics show` lists its metrics")


def _data_commands(add) -> None:
    """Data: import, checks, dedup thresholds."""
    p = add("prepare", cmd_prepare, "Resize raw HAM10000, split by lesion_id, write arrays and EDA figures.",
            example="dermagan prepare --raw data --out artifacts/prepared")
    p.add_argument("--raw", type=Path, help="HAM10000-layout folder (metadata.csv + images/)")
    p.add_argument("--out", type=Path, help="the prepared splits: train/val/test arrays and their tables")
    p.add_argument("--eda", type=Path, help="EDA figures and tables")

    p = add("validate", cmd_validate, "Great Expectations checks of images, labels, splits and balance.",
            example="dermagan validate --prepared artifacts/prepared")
    p.add_argument("--prepared", type=Path)
    p.add_argument("--raw", type=Path)
    p.add_argument("--out", type=Path, help="validation results and Data Docs")

    p = add("prepare-external", cmd_prepare_external,
            "Check and resize the external test sets of params evaluate.external (HAM10000-layout folders): "
            "labels through data.label_map, no image shared with train/val (sha256 of the files), one "
            "OUT/NAME.npz per set plus OUT/summary.json.", example="dermagan prepare-external --out artifacts/external")
    p.add_argument("--prepared", type=Path)
    p.add_argument("--raw", type=Path, help="the raw HAM10000 folder the prepared splits come from")
    p.add_argument("--out", type=Path, help="one NAME.npz per external test set, plus summary.json")

    p = add("calibrate-dedup", cmd_calibrate_dedup,
            "Hash distances of same-lesion photo pairs vs nearest other lesions, to choose dedup thresholds.",
            example="dermagan calibrate-dedup --out reports/dedup/calibration")
    p.add_argument("--prepared", type=Path)
    p.add_argument("--out", type=Path, help="threshold table, distances and figures")


def _generator_commands(add) -> None:
    """Generators: training, sampling, dedup and fidelity of GAN images."""
    from dermagan.gan.methods import METHODS, methods_with

    dcgan_methods = methods_with(train_stage="train_gan")
    methods_text = f"one of {', '.join(sorted(METHODS))} or a gan.cyclegan.variants name"

    p = add("train-gan", cmd_train_gan, "Train DCGANs on the real train split (one per class, or one conditional).",
            example="dermagan train-gan --method dcgan")
    p.add_argument("--method", required=True, choices=dcgan_methods,
                   help="dcgan: one GAN per augmented class; cdcgan: one class-conditional GAN")
    p.add_argument("--prepared", type=Path)
    p.add_argument("--out", type=Path, help="folder for the EMA generators (default: %(default)s)")
    p.add_argument("--checkpoints", type=Path, help="resume checkpoints folder")

    p = add("train-stgan", cmd_train_stgan,
            "STGAN self-transfer: stage 1 (--stage 1) trains a FastGAN on every real train image; stage 2 "
            "(--stage 2 --class DX) fine-tunes it on one class with Freeze-D and Barlow Twins.",
            example="dermagan train-stgan --stage 2 --class df")
    p.add_argument("--stage", type=int, required=True, choices=[1, 2],
                   help="1: the base FastGAN on every train image; 2: fine-tune the base on one class (--class)")
    p.add_argument("--class", dest="dx", help="stage 2: the augmented class, one of params gan.classes (default: "
                   "none; --stage 2 needs it)")
    p.add_argument("--prepared", type=Path)
    p.add_argument("--base", type=Path,
                   help="stage 1's output folder (stage 2 reads it; default: %(default)s)")
    p.add_argument("--out", type=Path, help="output folder (stage 1: the base; stage 2: one class; default: "
                   "%(default)s)")
    p.add_argument("--checkpoints", type=Path, help="resume checkpoints folder")

    p = add("train-cyclegan", cmd_train_cyclegan,
            "CycleGAN nv <-> one augmented class on the real train split; registers the nv -> class generator.",
            example="dermagan train-cyclegan --class df")
    p.add_argument("--class", dest="dx", required=True, help="the augmented class (one of params gan.classes)")
    p.add_argument("--variant", help="a gan.cyclegan.variants entry: the same CycleGAN with those settings, as a "
                   "method of its own, e.g. another label smoothing (default: none, the plain cyclegan method)")
    p.add_argument("--prepared", type=Path)
    p.add_argument("--out", type=Path, help="output folder (<class>.pt + generators.json; default: %(default)s)")
    p.add_argument("--checkpoints", type=Path, help="resume checkpoints folder")

    p = add("domain-encoder", cmd_domain_encoder,
            "Train the domain feature encoder (a from-scratch CNN on the real train split only) that fidelity "
            "measures generators in; no discriminator ever sees it.",
            example="dermagan domain-encoder --out artifacts/domain_encoder")
    p.add_argument("--prepared", type=Path)
    p.add_argument("--out", type=Path, help="encoder.pt + history.csv")
    p.add_argument("--metrics", type=Path, help="its real-val scores, a DVC metrics file")

    p = add("generate", cmd_generate, "Sample synthetic PNGs and a manifest from trained generators.",
            example="dermagan generate --method stgan")
    p.add_argument("--method", required=True, metavar="METHOD", help=methods_text)
    p.add_argument("--prepared", type=Path)
    p.add_argument("--gan-dir", type=Path, help="trained generators (default: %(default)s)")
    p.add_argument("--out", type=Path, help="PNGs per class + manifest.csv (default: %(default)s)")

    p = add("dedup", cmd_dedup, "Drop synthetic near-duplicates and memorised train images (pHash + wHash).",
            example="dermagan dedup --method stgan")
    p.add_argument("--prepared", type=Path)
    p.add_argument("--method", required=True, metavar="METHOD", help=f"the generator method whose images to "
                   f"check: {methods_text}")
    p.add_argument("--synthetic", type=Path, help="folder written by `dermagan generate` (default: %(default)s)")
    p.add_argument("--out", type=Path, help="deduplicated set (default: %(default)s)")
    p.add_argument("--report", type=Path, help="report folder: counts, decisions, histogram (default: %(default)s)")

    p = add("fidelity", cmd_fidelity, "FID/KID (EfficientNet-Lite0 features), k-NN precision/recall and "
            "real-vs-synthetic figures per class.", example="dermagan fidelity --method stgan")
    p.add_argument("--method", required=True, metavar="METHOD", help=methods_text)
    p.add_argument("--prepared", type=Path)
    p.add_argument("--domain-encoder", type=Path,
                   help="folder written by `dermagan domain-encoder` (default: %(default)s)")
    p.add_argument("--synthetic-root", type=Path, help="the method's synthetic images: generated/ and dedup/ "
                   "(default: artifacts/synthetic/METHOD)")
    p.add_argument("--dedup-report", type=Path, help="folder written by `dermagan dedup --report` "
                   "(default: reports/dedup/METHOD)")
    p.add_argument("--gan-dir", type=Path, help="trained generators (default: artifacts/gan/METHOD)")
    p.add_argument("--metrics", type=Path, help="the scores, a DVC metrics file "
                   "(default: metrics/fidelity/METHOD.json)")
    p.add_argument("--plots", type=Path, help="real-vs-synthetic figures (default: reports/fidelity/METHOD)")


def _classifier_commands(add) -> None:
    """Classifiers: augmented training sets, training, evaluation, comparison, ensembles."""
    p = add("validate-augmented", cmd_validate_augmented,
            "Assemble one arm's extra training images (GAN or oversampled) and check them with Great Expectations.",
            example="dermagan validate-augmented --arm effnet_stgan")
    p.add_argument("--arm", required=True, help="arm name from params.yaml `arms`")
    p.add_argument("--prepared", type=Path)
    p.add_argument("--synthetic-root", type=Path,
                   help="holds <method>/generated and <method>/dedup (default: %(default)s)")
    p.add_argument("--out", type=Path, help="checked extras for training (default: artifacts/trainsets/ARM)")
    p.add_argument("--report", type=Path, help="report + Data Docs (default: reports/validation_augmented/ARM)")

    p = add("train", cmd_train, "Train one classifier arm (see `arms` in params.yaml) with one seed and register it.",
            example="dermagan train --arm effnet_ros --seed 0")
    p.add_argument("--arm", required=True, help="arm name from params.yaml `arms`")
    p.add_argument("--seed", type=int, help="training seed (default: the first of train.seeds)")
    p.add_argument("--prepared", type=Path)
    p.add_argument("--trainset", type=Path, help="extras from validate-augmented (default: artifacts/trainsets/ARM)")
    p.add_argument("--out", type=Path, help="model folder (default: artifacts/models/ARM-sSEED)")
    p.add_argument("--history", type=Path, help="per-epoch CSV (default: reports/train/ARM-sSEED.csv)")
    p.add_argument("--checkpoints", type=Path, help="resume checkpoints folder")

    p = add("evaluate", cmd_evaluate, "Score one trained arm and seed on the real-only test split.",
            example="dermagan evaluate --arm effnet_ros --seed 0")
    p.add_argument("--arm", required=True, help="arm name from params.yaml `arms`")
    p.add_argument("--seed", type=int, help="training seed (default: the first of train.seeds)")
    p.add_argument("--prepared", type=Path)
    p.add_argument("--model-dir", type=Path, help="folder written by `dermagan train` (default: "
                   "artifacts/models/ARM-sSEED)")
    p.add_argument("--metrics", type=Path, help="test scores, a DVC metrics file (default: metrics/ARM-sSEED.json)")
    p.add_argument("--plots", type=Path, help="figures folder (default: reports/eval/ARM-sSEED)")
    p.add_argument("--predictions", type=Path,
                   help="per-image test predictions (default: reports/predictions/ARM-sSEED.csv)")
    p.add_argument("--roc", type=Path, help="ROC curves on a shared FPR grid (default: reports/roc/ARM-sSEED.csv)")
    p.add_argument("--reliability", type=Path,
                   help="reliability-diagram bins, non-empty only (default: reports/reliability/ARM-sSEED.csv)")
    p.add_argument("--external", type=Path,
                   help="prepare-external's folder: each external test set in it is scored too, its predictions "
                        "written to PLOTS/external/NAME.csv (default: %(default)s)")

    p = add("compare", cmd_compare, "Every arm over its seeds, and whether GAN arms beat the best non-GAN arm.",
            example="dermagan compare --out reports/compare")
    p.add_argument("--metrics-dir", type=Path, help="the evaluate stage's test scores, ARM-sSEED.json")
    p.add_argument("--predictions-dir", type=Path, help="the evaluate stage's per-image test predictions, "
                   "ARM-sSEED.csv")
    p.add_argument("--history-dir", type=Path,
                   help="per-epoch training histories; the GAN arms' comparator is the non-GAN arm with the best "
                        "real-val balanced accuracy in them (default: %(default)s)")
    p.add_argument("--out", type=Path, help="tables and figures")
    p.add_argument("--summary", type=Path, help="also write the summary (means, spreads, verdicts) here, "
                   "e.g. a DVC metrics file")
    p.add_argument("--external", type=Path,
                   help="prepare-external's folder: names the external test sets reported beside the internal "
                        "test (default: %(default)s)")
    p.add_argument("--eval-dir", type=Path,
                   help="the evaluate stage's figures folders, holding ARM-sSEED/external/NAME.csv "
                        "(default: %(default)s)")

    p = add("compare-runs", cmd_compare_runs,
            "Paired bootstrap of an arm's test predictions against an earlier run of it (e.g. tuned vs default GAN "
            "settings): the same statistic as compare, on the same test images, seeds paired.",
            example="dermagan compare-runs --arm effnet_stgan --baseline old/reports/predictions")
    p.add_argument("--arm", required=True, help="arm whose <arm>-s<seed>.csv predictions are compared")
    p.add_argument("--baseline", type=Path, required=True, help="folder with the earlier predictions")
    p.add_argument("--candidate", type=Path, help="folder with the newer predictions (default: %(default)s)")
    p.add_argument("--baseline-arm", help="arm name of the baseline files (default: --arm)")
    p.add_argument("--out", type=Path, help="also write the verdicts as JSON here")

    p = add("ensemble", cmd_ensemble, "Combine the arms of each seed (BMA, tempered BMA, stacking, average; "
            "weights fitted on real val only), score them on test against the best single arm (chosen on val), "
            "and register one combiner as a pyfunc version of mlflow.registered_model.",
            example="dermagan ensemble --seeds 0 1 2")
    p.add_argument("--arms", nargs="+", help="member arms (default: params ensemble.arms, else every arm)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: params train.seeds)")
    p.add_argument("--prepared", type=Path)
    p.add_argument("--models-dir", type=Path,
                   help="holds ARM-sSEED/model.pt from the train stage (default: %(default)s)")
    p.add_argument("--out", type=Path, help="tables and figures")
    p.add_argument("--metrics", type=Path, help="every combiner's scores, a DVC metrics file")
    p.add_argument("--predictions-dir", type=Path,
                   help="per-image test predictions, ensemble_COMBINER-sSEED.csv (default: %(default)s)")
    p.add_argument("--external", type=Path,
                   help="prepare-external's folder: every combiner is also scored on each external test set "
                        "(weights unchanged) (default: %(default)s)")

    p = add("report", cmd_report, "The pipeline's report from its own metrics and figures: reports/report.md and a "
            "self-contained reports/report.html (arms, verdicts with CI and MDD, calibration, ensembles, fidelity), "
            "the flat metrics/summary/*.json `dvc metrics show` lists and the CSVs of the top-level DVC plots. "
            "With --readme: only rewrite README's results block (between its results markers) from the metrics.",
            example="dermagan report --readme")
    p.add_argument("--readme", type=Path, nargs="?", const=LAYOUT.readme, metavar="README",
                   help=f"only rewrite the block between README's results markers (file default: {LAYOUT.readme}; "
                        "default: off); reads --compare, --history-dir and, for an older compare.json, --metrics-dir")
    for flag, what in (("--compare", "the compare stage's summary"), ("--ensemble", "the ensemble stage's metrics"),
                       ("--metrics-dir", "every run's test metrics (ECE)"),
                       ("--fidelity-dir", "METHOD.json of every gan.methods entry"),
                       ("--history-dir", "per-epoch training histories"), ("--roc-dir", "every run's test ROC CSV"),
                       ("--compare-dir", "the compare stage's figures"), ("--ensemble-dir", "the ensemble's figures"),
                       ("--fidelity-plots", "METHOD/ folders of fidelity figures")):
        p.add_argument(flag, type=Path, help=f"{what} (default: %(default)s)")
    p.add_argument("--md", type=Path, help="the report in Markdown, figures linked (default: %(default)s)")
    p.add_argument("--html", type=Path, help="the same report with its figures embedded: opens offline")
    p.add_argument("--summary-dir", type=Path, help="one flat JSON per arm and ensemble combiner (DVC metrics)")
    p.add_argument("--plots", type=Path, help="long CSVs of the top-level DVC plots")

    p = add("cv", cmd_cv, "Lesion-grouped K-fold evaluation of one arm on train+val (the test split is never "
            "read): per-fold and mean ± std balanced accuracy, report folder and MLflow runs (one parent, one "
            "nested run per fold). Arms with extra: null or oversample (copies drawn from each fold's training "
            "part); GAN and class-expert arms are refused (their models saw every fold's validation images). "
            "A killed run resumes: finished folds are kept under CHECKPOINTS/cv/NAME and skipped.",
            example="dermagan cv --arm effnet --folds 5 --max-folds 2")
    p.add_argument("--arm", required=True, help="arm name from params.yaml `arms`")
    p.add_argument("--folds", type=int, help="K (default: params cv.folds)")
    p.add_argument("--seed", type=int, help="fold assignment and training seed (default: params cv.seed)")
    p.add_argument("--prepared", type=Path)
    p.add_argument("--out", type=Path, help="report folder: folds.csv, summary.json, folds.png "
                   "(default: reports/cv/ARM-kK, with -sSEED when the seed is not cv.seed)")
    p.add_argument("--checkpoints", type=Path,
                   help="resume files go to CHECKPOINTS/cv/NAME (default: %(default)s)")
    p.add_argument("--max-folds", type=int, help="train at most this many unfinished folds, then stop (run the "
                   "same command again to continue); the report is written once all K are done (default: all)")


def _model_commands(add) -> None:
    """Models: the registry, prediction, the MLflow UI."""
    p = add("models", cmd_models, "List the versions of a registered model, newest first: arm, seed, validation "
            "and test balanced accuracy (the version's tags), aliases (e.g. champion), kind (classifier, ensemble, "
            "pickled-legacy, generator: read from each version's MLmodel file; no model is loaded) and when it was "
            "registered. The tracking store is MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db.",
            needs_config=False, example="dermagan models --limit 10")
    p.add_argument("--name", help=f"registered model (default: {MODEL_DEFAULT_HELP})")
    p.add_argument("--all", action="store_true", help="every registered model, one table each (default: off: "
                   "only --name)")
    p.add_argument("--limit", type=int, help="at most this many versions per model, the newest (default: all)")

    p = add("promote", cmd_promote,
            "Move the `champion` alias to the evaluated version with the best validation balanced accuracy, "
            "unless a paired bootstrap on the test split shows it worse than the current champion beyond the CI.",
            example="dermagan promote --version 3")
    p.add_argument("--name", help=f"registered model (default: {MODEL_DEFAULT_HELP})")
    p.add_argument("--version", help="version to promote (default: the evaluated version with the highest val_bal_acc)")
    p.add_argument("--force", action="store_true", help="skip the test-set gate against the current champion "
                   "(default: off: a candidate worse on test beyond the CI is refused)")

    p = add("predict", cmd_predict, "Classify one JPEG/PNG or every JPEG/PNG directly in a folder with a registered "
            "model; writes image_id, pred_dx, prob_<class>... Each entry not read (another suffix, a folder, a pipe "
            "or device, a broken link, an undecodable, oversized, too small, too thin or 16-bit image) is named on "
            "stderr; nothing readable is an error and no CSV. Ids are the file stems, full names where two share "
            "one (dup.jpg, dup.png); cells a spreadsheet would run as formulas (=, +, -, @) get a leading '.",
            needs_config=False, example="dermagan predict photos/ --out predictions.csv")
    p.add_argument("images_dir", type=Path, metavar="INPUT", help="an image file or a folder of images")
    p.add_argument("--model", help=f"model URI (default: models:/NAME@champion, NAME = {MODEL_DEFAULT_HELP})")
    p.add_argument("--out", type=Path, help="the CSV to write")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where a pytorch model runs; auto = CUDA when available (default: %(default)s; an "
                        "ensemble version runs on the CPU)")
    # defaults: the model's logged values, else dermagan.classify.preprocess.PREPROCESSING_DEFAULTS (filled in
    # cmd_predict, so every other command starts without numpy/Pillow; tests/test_predict_inputs.py checks the numbers)
    p.add_argument("--min-side", type=int, help="refuse images whose shorter side is below this, in px (default: "
                   "the model's min_side, else 32)")
    p.add_argument("--max-aspect", type=float, help="refuse images whose long side / short side exceeds this "
                   "(default: the model's max_aspect, else 4)")

    p = add("export", cmd_export, "Export a registered classifier version to ONNX, fp32 and int8 (static, calibrated "
            "on real train images), as an offline bundle folder whose predict.py needs only onnxruntime, numpy and "
            "Pillow. Checks parity with torch on real val (max |dp| <= 1e-4) and int8 against fp32 on real test "
            "(top-1 agreement; balanced accuracy and ECE with paired-bootstrap CIs, params evaluate); logs the ONNX "
            "files and parity.json to the version's MLflow run (onnx/) and tags the version. Ensembles are "
            "refused. Not a pipeline stage.", example="dermagan export --model models:/dermagan-classifier/3")
    p.add_argument("--model", help="registered version: models:/NAME@ALIAS or models:/NAME/VERSION (default: "
                   f"models:/NAME@champion, NAME = {MODEL_DEFAULT_HELP})")
    p.add_argument("--out", type=Path, help="bundle folder; replaces only an earlier bundle (default: "
                   "bundles/NAME-vVERSION of the resolved version)")
    p.add_argument("--prepared", type=Path, help="the prepared folder the model was trained on: val for parity, "
                   "train for int8 calibration, test for the int8 comparison")
    p.add_argument("--calibration-count", type=int, default=256,
                   help="train images calibrating int8, a sample seeded by params evaluate.seed (default: %(default)s)")

    p = add("ui", cmd_ui, "Open the MLflow UI on the project's tracking store.", needs_config=False,
            example="dermagan ui --port 5001")
    p.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default: %(default)s)")
    p.add_argument("--port", type=int, default=5000, help="port the UI listens on (default: %(default)s)")


def _study_commands(add) -> None:
    """Studies run on purpose: tuning and benchmarks."""
    p = add("tune", cmd_tune, "Optuna study of a target's hyperparameters on real-only validation scores "
            "(classifier: val balanced accuracy; gan: val recall of one class, with val balanced accuracy as a "
            "constraint; search space: params.yaml tune.<target>.space); resumes an existing study.",
            example="dermagan tune gan --class df --n-trials 20")
    p.add_argument("target", choices=["classifier", "gan"], help="what to tune")
    p.add_argument("--method", default="stgan", help="gan: the generator method whose per-class stage is tuned "
                   "(default: %(default)s)")
    p.add_argument("--class", dest="dx", help="gan: the augmented class, e.g. df (default: none; target gan needs it)")
    p.add_argument("--prepared", type=Path)
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes sharing the study (default: %(default)s)")
    p.add_argument("--worker-index", type=int, default=0,
                   help="first worker number (sampler seed = tune seed + worker); give commands started side by "
                        "side on one study different indices, e.g. 0 and 2 with --workers 2 each "
                        "(default: %(default)s)")
    p.add_argument("--storage", help="Optuna storage: a journal file path or an RDB URL such as "
                   "postgresql+psycopg2://user:pw@host/db (default: tune.storage, else tune.dir/STUDY.journal)")
    p.add_argument("--study", help="study name (default: tune.<target>.study)")
    p.add_argument("--n-trials", type=int, help="stop when the study has this many finished trials "
                   "(complete + pruned, all workers; default: tune.<target>.n_trials)")
    p.add_argument("--timeout-minutes", type=float, help="stop starting trials after this long "
                   "(default: tune.<target>.timeout_minutes)")
    p.add_argument("--report", type=Path, help="summary, trials table and figures (default: runs/tune/TARGET)")
    p.set_defaults(apply_target=None)  # filled from params.yaml when --apply is given (checked before the study)
    p.add_argument("--apply", action="store_true", help="write the best values into the tuned-params file "
                   "(params.yaml `tuned_params`; gan: `tuned_gan_params`) (default: off: they are only printed)")

    p = add("profile", cmd_profile, "Run a profile: params.yaml with the keys of profiles/NAME.yaml changed, as its "
            "own DVC project in profiles/NAME/ (own outputs, lock file and MLflow experiment; the default "
            "pipeline's are untouched). Profiles shipped: melanoma (seed 004's binary task), rosendahl (a "
            "domain-shift test).", needs_config=False, example="dermagan profile melanoma --dry-run")
    p.add_argument("name", help="the profile (profiles/NAME.yaml)")
    p.add_argument("targets", nargs="*", help="dvc stages to reproduce (default: compare ensemble, with every "
                   "stage they need)")
    p.add_argument("--dry-run", action="store_true", help="write profiles/NAME/ and stop, to `dvc repro` there "
                   "later (default: off: write it and reproduce the targets now)")

    p = add("bench-train", cmd_bench_train, "Time the phases of an arm's training step (data, augment, forward, "
            "backward, optimiser) against raw forward+backward of the same network.",
            example="dermagan bench-train --arm effnet --steps 30")
    p.add_argument("--arm", default="effnet", help="arm whose recipe to time (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the fresh network and the batches (default: %(default)s)")
    p.add_argument("--steps", type=int, default=30, help="timed steps after 3 warm-up steps (default: %(default)s)")
    p.add_argument("--prepared", type=Path)
    p.add_argument("--out", type=Path, help="also write the figures as JSON here")

    p = add("bench-gan", cmd_bench_gan,
            "STGAN throughput (images/s of D, G and whole steps against raw forward+backward of the same "
            "networks) and, with --train-images, domain-space fidelity against images seen.",
            example="dermagan bench-gan --stage 2 --class df")
    p.add_argument("--stage", type=int, choices=[1, 2], default=1,
                   help="1: all train images, stage-1 settings; 2: one class (--class), stage-2 settings "
                        "(timed on a fresh network: the speed does not depend on the weights) (default: %(default)s)")
    p.add_argument("--class", dest="dx", help="stage 2: the class (default: the first of gan.classes)")
    p.add_argument("--discriminator", help="override gan.stgan.net.discriminator, projected | fastgan "
                   "(default: the params value)")
    p.add_argument("--feature-size", type=int, help="override gan.stgan.net.feature_size of the projected D "
                   "(default: the params value)")
    p.add_argument("--steps", type=int, default=10, help="timed steps after 2 warm-up steps (default: %(default)s)")
    p.add_argument("--train-images", type=int, default=0,
                   help="then train a fresh network this long, scoring it every --eval-every images (default: "
                        "%(default)s: time only)")
    p.add_argument("--eval-every", type=int, default=4000, help="training images between two curve points "
                   "(default: %(default)s)")
    p.add_argument("--samples", type=int, default=1000, help="generated images per curve point (default: %(default)s)")
    p.add_argument("--base", type=Path, help="stage 2: start the curve's run from this stage-1 folder "
                   "(e.g. artifacts/gan/stgan/base), as the train_stgan stage does (default: none: a fresh network)")
    p.add_argument("--prepared", type=Path)
    p.add_argument("--domain-encoder", type=Path)
    p.add_argument("--out", type=Path, help="write the figures (JSON) here; with --train-images the sample "
                   "grids go to a folder beside it, named like it without the suffix")
    p.set_defaults(grids=None)  # that folder (derived from --out, checked before anything runs)

    p = add("bench-serve", cmd_bench_serve,
            "Load test of `mlflow models serve` for a registered classifier on 127.0.0.1: CLIENTS concurrent "
            "clients send REQUESTS requests, one real image each; p50/p95 latency, throughput, errors.",
            needs_config=False, example="dermagan bench-serve --clients 8 --requests 500")
    p.add_argument("--model", help=f"registered classifier to serve (default: models:/NAME@champion, NAME = "
                   f"{MODEL_DEFAULT_HELP})")
    p.add_argument("--images", type=Path, help="folder of JPEG/PNG images to send (default: the raw HAM10000 "
                                               "images)")
    p.add_argument("--count", type=int, default=32, help="distinct images, sorted by name (default: %(default)s)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default: %(default)s)")
    p.add_argument("--requests", type=int, default=500, help="requests in all (default: %(default)s)")
    p.add_argument("--time-limit", type=float, default=600, help="stop sending after this many s (default: 600)")
    p.add_argument("--out", type=Path, help="the figures as JSON; the Markdown table goes beside it (.md)")

    p = add("bench-bundle", cmd_bench_bundle,
            "The export bundle in a fresh venv holding only onnxruntime, numpy and Pillow: cold start on one "
            "image, a folder run, peak memory, size on disk (fp32 and int8).", needs_config=False,
            example="dermagan bench-bundle bundles/dermagan-classifier-v3")
    p.add_argument("bundle", type=Path, help="a folder written by `dermagan export`")
    p.add_argument("--images", type=Path, help="folder of images for the folder run (default: the raw HAM10000 "
                                               "images; use a small folder)")
    p.add_argument("--repeats", type=int, default=3, help="cold starts timed per model (default: %(default)s)")
    p.add_argument("--out", type=Path, help="the figures as JSON; the Markdown table goes beside it (.md)")

    p = add("bench-predict", cmd_bench_predict,
            "Prediction speed of a registered classifier: torch eager vs ONNX Runtime fp32 vs int8 (calibrated on "
            "real train images) with 1 and 2 threads: single-image p50/p95 latency, throughput at one batch size, "
            "file size; and, for scale, a fresh tf_efficientnet_lite0 at 224 px (packaged ImageNet weights; its "
            "int8 calibrated on synthetic images, for timing only). Writes JSON and a Markdown table.",
            example="dermagan bench-predict --threads 1 2")
    p.add_argument("--model", help=f"registered classifier to time (default: models:/NAME@champion, NAME = "
                   f"{MODEL_DEFAULT_HELP})")
    p.add_argument("--prepared", type=Path)
    p.add_argument("--out", type=Path, help="the figures as JSON; the Markdown table goes beside it (.md)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    p.add_argument("--batch-size", type=int, default=64, help="throughput batch (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=50,
                   help="timed single-image calls per engine, after 5 warm-up calls (default: %(default)s)")
    p.add_argument("--calibration-count", type=int, default=256, help="train images calibrating int8 "
                   "(default: %(default)s)")
    p.add_argument("--no-reference", action="store_true", help="skip the 224 px EfficientNet-Lite0 (default: off: "
                   "it is timed too)")


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions and option help to the terminal, but prints an ``example:`` epilog and any text with
    line breaks (the top-level command list) as written, so an example stays one line to copy."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example:") or "\n" in text:
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)


DESCRIPTION = ("dermagan: does GAN augmentation help rare skin-lesion classes? Every score is measured on real-only, "
               "lesion-disjoint test images. Each command reads params.yaml once (plus the tuned files it names), "
               "checks it, and fills unset paths from the project's one Layout.")

# The top-level --help: (group, ((command, one-line summary), ...)) in workflow order, the one place that orders
# and groups the commands. tests/test_cli_help.py checks that it lists every subcommand once and that its first
# group is exactly the subcommands dvc.yaml runs.
COMMAND_GROUPS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("pipeline stages (`dvc repro` runs them, in this order; see dvc.yaml)", (
        ("prepare", "resize raw HAM10000, split by lesion, write arrays + EDA"),
        ("validate", "Great Expectations checks of the prepared splits"),
        ("prepare-external", "check and resize the external test sets, if any"),
        ("train-gan", "train DCGANs (one per class, or one conditional)"),
        ("train-stgan", "STGAN: a FastGAN on all images, then one per class"),
        ("train-cyclegan", "CycleGAN nv <-> one augmented class"),
        ("domain-encoder", "train the feature encoder fidelity measures in"),
        ("generate", "sample synthetic images from trained generators"),
        ("dedup", "drop near-duplicate and memorised synthetic images"),
        ("fidelity", "FID/KID and k-NN precision/recall per class"),
        ("validate-augmented", "assemble and check one arm's extra training images"),
        ("train", "train one classifier arm with one seed; register it"),
        ("evaluate", "score one arm and seed on the real-only test split"),
        ("ensemble", "combine the arms of each seed; register one combiner"),
        ("compare", "every arm over its seeds: do GAN arms beat the rest?"),
        ("report", "the results as Markdown + offline HTML, DVC metrics/plots"),
    )),
    ("studies (run on purpose, outside the pipeline)", (
        ("calibrate-dedup", "hash distances that choose the dedup thresholds"),
        ("tune", "Optuna study of classifier or GAN hyperparameters"),
        ("cv", "lesion-grouped K-fold evaluation of one arm"),
        ("compare-runs", "paired bootstrap: an arm against an earlier run of it"),
        ("bench-train", "time the phases of a classifier training step"),
        ("bench-gan", "STGAN throughput, and fidelity against images seen"),
        ("bench-predict", "prediction speed: torch vs ONNX fp32 vs int8"),
        ("bench-serve", "load test of `mlflow models serve`"),
        ("bench-bundle", "the export bundle in a fresh venv: start, memory, size"),
    )),
    ("registry and serving", (
        ("models", "list a registered model's versions, scores and aliases"),
        ("promote", "move the champion alias, gated on the test split"),
        ("predict", "classify image files with a registered model"),
        ("export", "a registered classifier -> ONNX fp32/int8 bundle"),
        ("ui", "open the MLflow UI on the project's tracking store"),
    )),
    ("tools", (
        ("profile", "run the pipeline with a profile's params, apart"),
    )),
)


def command_list(parsers: dict[str, argparse.ArgumentParser]) -> str:
    """The top-level epilog: the commands by group, in ``COMMAND_GROUPS`` order, with their summaries. A command
    missing from the table is listed last, under "other", so none is hidden (the test fails on it)."""
    listed = {name for _, rows in COMMAND_GROUPS for name, _ in rows}
    groups = [(title, [(n, s) for n, s in rows if n in parsers]) for title, rows in COMMAND_GROUPS]
    groups.append(("other", [(n, (p.description or "")[:60]) for n, p in parsers.items() if n not in listed]))
    width = max(map(len, parsers)) + 2
    lines = []
    for title, rows in groups:
        if rows:
            lines += ["", f"{title}:", *(f"  {name.ljust(width)}{summary}".rstrip() for name, summary in rows)]
    footer = "`dermagan COMMAND --help` shows a command's options, their defaults and an example."
    return "\n".join([*lines[1:], "", footer])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dermagan", description=DESCRIPTION, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of the commands below")

    def add(name: str, func, help_text: str, needs_config: bool = True,
            example: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, description=help_text, epilog=example and f"example: {example}",
                           formatter_class=HelpFormatter)
        p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
        p.set_defaults(func=func, needs_config=needs_config)
        return p

    for group in (_data_commands, _generator_commands, _classifier_commands, _model_commands, _study_commands):
        group(add)  # subcommands in workflow order
    _document_defaults(sub)
    parser.epilog = command_list(sub.choices)
    return parser


# What a path option shared by many subcommands holds (its Layout default is added to it).
SHARED_HELP = {"prepared": "the prepared splits, written by `dermagan prepare`",
               "raw": "the raw HAM10000 folder (metadata.csv + images/)",
               "domain_encoder": "folder written by `dermagan domain-encoder`"}


def _document_defaults(sub: argparse._SubParsersAction) -> None:
    """Show each path option's Layout default in --help (``ARM``, ``SEED``, ``METHOD``, ``CLASS`` stand
    for the values given on the command line); a shared option without help gets its ``SHARED_HELP``."""
    for command, parser in sub.choices.items():
        stand_in = argparse.Namespace(command=command, arm="ARM", seed="SEED", method="METHOD", dx="CLASS",
                                      stage="STAGE", target="TARGET")
        defaults = _layout_defaults(stand_in)
        if command == "train-stgan":
            defaults["out"] = f"{LAYOUT.stgan_base} (stage 1) or {LAYOUT.gan_class_dir('stgan', 'CLASS')} (stage 2)"
        for action in parser._actions:
            if action.dest not in defaults or action.default is not None:
                continue
            text = str(defaults[action.dest])
            action.help = action.help or SHARED_HELP.get(action.dest)
            if not action.help:
                action.help = f"default: {text}"
            elif "%(default)s" in action.help:
                action.help = action.help.replace("%(default)s", text)
            elif "default:" in action.help:  # one source of truth: the Layout, not the help string
                action.help = re.sub(r"default: [^;)]*", lambda _: f"default: {text}", action.help)
            else:
                action.help = f"{action.help} (default: {text})"


def _layout_defaults(args: argparse.Namespace) -> dict:
    """Each subcommand's default paths, from the one ``Layout`` (dvc.yaml passes the same ones)."""
    L, cmd = LAYOUT, args.command
    arm, seed, method, dx = (getattr(args, k, None) for k in ("arm", "seed", "method", "dx"))
    common = {"raw": L.raw, "prepared": L.prepared, "checkpoints": L.checkpoints, "domain_encoder": L.domain_encoder}
    per_command = {
        "prepare": lambda: {"out": L.prepared, "eda": L.eda},
        "validate": lambda: {"out": L.validation},
        "prepare-external": lambda: {"out": L.external},
        "validate-augmented": lambda: {"synthetic_root": L.synthetic_root, "out": L.trainset(arm),
                                       "report": L.trainset_report(arm)},
        "train": lambda: {"trainset": L.trainset(arm), "out": L.model_dir(arm, seed), "history": L.history(arm, seed)},
        "evaluate": lambda: {"model_dir": L.model_dir(arm, seed), "metrics": L.run_metrics(arm, seed),
                             "plots": L.eval_plots(arm, seed), "predictions": L.predictions(arm, seed),
                             "roc": L.roc(arm, seed), "reliability": L.reliability(arm, seed),
                             "external": L.external},
        "compare-runs": lambda: {"candidate": L.predictions_dir, "out": L.compare_runs(arm)},
        "compare": lambda: {"metrics_dir": L.run_metrics_dir, "predictions_dir": L.predictions_dir,
                            "history_dir": L.histories, "out": L.compare, "summary": L.compare_summary,
                            "external": L.external,
                            "eval_dir": L.eval_plots("ARM", 0).parent},  # reports/eval
        "ensemble": lambda: {"models_dir": L.models, "out": L.ensemble, "metrics": L.ensemble_metrics,
                             "predictions_dir": L.ensemble_predictions, "external": L.external},
        "report": lambda: {"compare": L.compare_summary, "ensemble": L.ensemble_metrics,
                           "metrics_dir": L.run_metrics_dir, "fidelity_dir": L.fidelity_metrics_dir,
                           "history_dir": L.histories, "roc_dir": L.roc_dir, "compare_dir": L.compare,
                           "ensemble_dir": L.ensemble, "fidelity_plots": L.fidelity_plots_root, "md": L.report_md,
                           "html": L.report_html, "summary_dir": L.summary_dir, "plots": L.report_plots},
        "train-gan": lambda: {"out": L.gan_dir(method)},
        "train-stgan": lambda: {"base": L.stgan_base,  # stage 2 without --class: cmd_train_stgan names the problem
                                "out": L.stgan_base if args.stage == 1 else (L.gan_class_dir("stgan", dx) if dx else None)},
        "train-cyclegan": lambda: {"out": L.gan_class_dir(getattr(args, "variant", None) or "cyclegan", dx)},
        "domain-encoder": lambda: {"out": L.domain_encoder, "metrics": L.domain_encoder_metrics},
        "generate": lambda: {"gan_dir": L.gan_dir(method), "out": L.synthetic(method, "generated")},
        "dedup": lambda: {"synthetic": L.synthetic(method, "generated"), "out": L.synthetic(method, "dedup"),
                          "report": L.dedup_report(method)},
        "fidelity": lambda: {"synthetic_root": L.synthetic(method), "dedup_report": L.dedup_report(method),
                             "gan_dir": L.gan_dir(method), "metrics": L.fidelity_metrics(method),
                             "plots": L.fidelity_plots(method)},
        "calibrate-dedup": lambda: {"out": L.dedup_calibration},
        "predict": lambda: {"out": L.predictions_csv},
        "tune": lambda: {"report": L.tune_report(args.target, method, dx), "apply_target": _apply_target(args)},
        "cv": lambda: {"out": _cv_report(args)},
        "bench-train": lambda: {"out": L.bench(f"train-{arm}")},
        "bench-gan": lambda: {"out": L.bench(f"gan-stage{args.stage}" + (f"-{dx}" if dx else ""))},
        "bench-predict": lambda: {"out": L.bench("predict")},
        "bench-serve": lambda: {"out": L.bench("serving"), "images": L.raw / "images"},
        "bench-bundle": lambda: {"out": L.bench("bundle"), "images": L.raw / "images"},
    }
    return {**common, **per_command.get(cmd, dict)()}


def _cv_report(args: argparse.Namespace) -> Path | str:
    """``reports/cv/ARM-kK[-sSEED]`` from the arm, --folds/--seed and params ``cv`` (as the cv stage names it)."""
    cfg = getattr(args, "config", None)
    if cfg is None or cfg.cv is None:
        return f"{LAYOUT.cv_report('ARM-kK')} (ARM-kK-sSEED when --seed is not params cv.seed)"
    folds = args.folds if args.folds is not None else cfg.cv.folds
    seed = args.seed if args.seed is not None else cfg.cv.seed
    return LAYOUT.cv_report(LAYOUT.cv_name(args.arm, folds, seed, cfg.cv.seed))


def _apply_target(args: argparse.Namespace) -> Path | str | None:
    """The tuned-params file ``tune --apply`` rewrites (params.yaml names it; relative to the params file)."""
    cfg = getattr(args, "config", None)
    if cfg is None:
        return "the file params.yaml names under tuned_params / tuned_gan_params"
    name = cfg.tuned_gan_params if args.target == "gan" else cfg.tuned_params
    return Path(args.params).parent / name if (args.apply and name) else None


MODEL_DEFAULT_HELP = "the params file's mlflow.registered_model, dermagan-classifier in params.yaml"
MODEL_COMMANDS = ("models", "promote", "predict", "export", "bench-serve", "bench-predict")


def _registered_name(args: argparse.Namespace) -> str:
    """The params file's ``mlflow.registered_model`` (a profile's own model with ``--params
    profiles/NAME/params.yaml``); ``dermagan-classifier`` when a command without config finds no params file."""
    cfg = _optional_config(args)
    return cfg.mlflow.registered_model if cfg else "dermagan-classifier"


def _default_paths(args: argparse.Namespace) -> None:
    """Fill every unset path (and the seed of train/evaluate) from the Layout, and the registered model from
    params."""
    if args.command in MODEL_COMMANDS:
        if getattr(args, "name", "unset") is None:
            args.name = _registered_name(args)
        if getattr(args, "model", "unset") is None:
            args.model = f"models:/{_registered_name(args)}@champion"
    if hasattr(args, "seed") and args.seed is None and args.command in ("train", "evaluate", "bench-train"):
        args.seed = args.config.train.seeds[0]
    for key, value in _layout_defaults(args).items():
        if getattr(args, key, "unset") is None:
            setattr(args, key, value)
    if args.command == "bench-gan":  # the grids' folder, as dermagan.gan.bench.bench_grid_dir names it
        args.grids = Path(args.out).with_suffix("")


# The paths each subcommand reads (inputs; work: folders it keeps working files in) and writes
# (dirs, files): dermagan.outputs.check_command_paths refuses, before anything is touched, an output
# that is an input or nested with one, two nested outputs, a symlink, ".", a repository root, and an
# existing path dermagan did not write. Entries: "attr" (label --attr), (attr, label) or
# (attr, label, when(args)). --params always counts as an input. Unset (None) paths are skipped.
COMMAND_PATHS: dict[str, dict[str, tuple]] = {
    "prepare": {"inputs": ("raw",), "dirs": ("out", "eda")},
    "validate": {"inputs": ("prepared", "raw"), "dirs": ("out",)},
    "prepare-external": {"inputs": ("prepared", "raw"), "dirs": ("out",)},
    "validate-augmented": {"inputs": ("prepared", "synthetic_root"), "dirs": ("out", "report")},
    "train": {"inputs": ("prepared", "trainset"), "work": ("checkpoints",), "dirs": ("out",), "files": ("history",)},
    "evaluate": {"inputs": ("prepared", "model_dir", "external"), "dirs": ("plots",),
                 "files": ("metrics", "predictions", "roc", "reliability")},
    "compare-runs": {"inputs": ("baseline", "candidate"), "files": ("out",)},
    "compare": {"inputs": ("metrics_dir", "predictions_dir", "history_dir", "external", "eval_dir"), "dirs": ("out",),
                "files": ("summary",)},
    "ensemble": {"inputs": ("prepared", "models_dir", "external"), "dirs": ("out", "predictions_dir"),
                 "files": ("metrics",)},
    "report": {"inputs": ("compare", "ensemble", "metrics_dir", "fidelity_dir", "history_dir", "roc_dir", "compare_dir",
                          "ensemble_dir", "fidelity_plots", "readme"),  # --readme: edited between its markers only
               "work": (("summary_dir", "--summary-dir", lambda a: a.readme is None),),  # its files: atomic_file each
               "dirs": (("plots", "--plots", lambda a: a.readme is None),),
               "files": (("md", "--md", lambda a: a.readme is None), ("html", "--html", lambda a: a.readme is None))},
    "train-gan": {"inputs": ("prepared",), "work": ("checkpoints",), "dirs": ("out",)},
    "train-stgan": {"inputs": ("prepared", ("base", "--base", lambda a: a.stage == 2)), "work": ("checkpoints",),
                    "dirs": ("out",)},
    "train-cyclegan": {"inputs": ("prepared",), "work": ("checkpoints",), "dirs": ("out",)},
    "domain-encoder": {"inputs": ("prepared",), "dirs": ("out",), "files": ("metrics",)},
    "generate": {"inputs": ("prepared", "gan_dir"), "dirs": ("out",)},
    "dedup": {"inputs": ("prepared", "synthetic"), "dirs": ("out", "report")},
    "fidelity": {"inputs": ("prepared", "domain_encoder", "synthetic_root", "dedup_report", "gan_dir"),
                 "dirs": ("plots",), "files": ("metrics",)},
    "calibrate-dedup": {"inputs": ("prepared",), "dirs": ("out",)},
    "predict": {"inputs": (("images_dir", "images_dir"),), "files": ("out",)},
    "tune": {"inputs": ("prepared",), "dirs": ("report",),
             "work": (("storage", "--storage", lambda a: bool(a.storage) and "://" not in a.storage),),
             "files": (("apply_target", "--apply (the tuned-params file)", lambda a: a.apply),)},
    "cv": {"inputs": ("prepared",), "work": ("checkpoints",), "dirs": ("out",)},
    "bench-train": {"inputs": ("prepared",), "files": ("out",)},
    "bench-gan": {"inputs": ("prepared", "domain_encoder", "base"), "files": ("out",),
                  "dirs": (("grids", "the sample grids (OUT without its suffix)", lambda a: a.train_images > 0),)},
    "export": {"inputs": ("prepared",), "dirs": ("out",)},
    "bench-predict": {"inputs": ("prepared",), "files": ("out",)},
    "bench-serve": {"inputs": ("images",), "files": ("out",)},
    "bench-bundle": {"inputs": ("bundle", "images"), "files": ("out",)},
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.needs_config:  # params.yaml + tuned files, read and validated once for the whole command
            args.config = load_config(args.params)
        _default_paths(args)
        check_command_paths(args, COMMAND_PATHS)
        args.func(args)
    except DermaganError as exc:
        print(f"dermagan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

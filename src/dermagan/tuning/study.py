"""Optuna studies: storage, sampler, pruner, MLflow runs (one parent per study, one nested per trial).

General machinery: an objective is any ``objective(trial, report) -> float`` built by a target's
factory from plain values (see ``TARGETS``), so worker processes can rebuild it. ``report(step,
value, metrics)`` records the intermediate value (for the pruner) and the trial's MLflow
metrics, and raises ``optuna.TrialPruned`` when the pruner says so.

Storage: a journal file (``JournalStorage(JournalFileBackend(path))``) by default, which several
local processes can share; any RDB URL (``postgresql+psycopg2://...``) for workers on several
machines. Every worker calls ``create_study(load_if_exists=True)`` on the same name.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import optuna
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from dermagan.errors import DermaganError

# target name -> "module:factory"; factory(config: dict) -> objective(trial, report) -> float
TARGETS = {"classifier": "dermagan.tuning.classifier:make_objective", "gan": "dermagan.tuning.gan:make_objective"}
PARENT_ATTR = "mlflow_parent_run_id"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PARENT_SETTLE_SECONDS = 2.0  # longer than a worker takes to create a parent run (see parent_run_id)


@dataclass(frozen=True)
class StudyConfig:
    name: str
    storage: str  # journal file path, or an RDB URL such as postgresql+psycopg2://user@host/db
    n_trials: int  # finished (complete + pruned) trials the study stops at, over all workers
    timeout_seconds: float | None
    seed: int  # sampler seed
    n_startup_trials: int  # random trials before TPE takes over
    pruner: dict  # {kind: median|hyperband|none, n_startup_trials, n_warmup_steps, max_resource}
    experiment: str  # MLflow experiment of the parent and trial runs
    direction: str = "maximize"
    enqueue: tuple = ()  # trials (dicts of values) to run first, e.g. a known-good hand recipe


def is_url(storage: str) -> bool:
    return "://" in str(storage)


def make_storage(storage: str) -> optuna.storages.BaseStorage:
    """A journal file for local workers, or an RDB storage (with heartbeats) for a URL."""
    if is_url(storage):
        from sqlalchemy.exc import IntegrityError, ProgrammingError

        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(storage, heartbeat_interval=60, grace_period=180)
            except (IntegrityError, ProgrammingError) as exc:
                # Workers started together on a fresh database race to create Optuna's tables
                # ("duplicate key ... pg_type_typname_nsp_index", "relation ... already exists"):
                # once the other one has made them, opening again succeeds.
                if attempt == 4:
                    raise DermaganError(f"cannot open Optuna storage {_storage_label(storage)}: "
                                        f"{type(exc).__name__}: {exc}") from exc
                time.sleep(0.5 + attempt)
            except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds for a bad URL/server
                raise DermaganError(f"cannot open Optuna storage {_storage_label(storage)}: "
                                    f"{type(exc).__name__}: {exc}") from exc
    path = Path(storage)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DermaganError(f"Optuna journal {path}: cannot create its folder: {exc}") from exc
    check_journal(path)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def check_journal(path: Path) -> None:
    """Refuse a journal file Optuna could not read, naming the file and the 1-based line; never writes.

    Every line must be a JSON object and a non-empty file must end with a newline. A cut-off last
    line (a killed write, a full disk) is not an error to Optuna's reader, but the next append
    glues a new record onto it and the journal stays unreadable for good, so it is refused too.
    Read under the journal's own lock, so a record another worker is appending is never half seen.
    """
    from optuna.storages.journal import JournalFileSymlinkLock

    path = Path(path)
    if path.is_dir():
        raise DermaganError(f"Optuna journal {path} is a folder, not a journal file; pass another --storage")
    if not path.exists():
        return
    lock = JournalFileSymlinkLock(str(path))
    locked = False
    try:
        locked = lock.acquire()
    except OSError:  # a read-only folder: no lock file can be made; read without it
        pass
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DermaganError(f"Optuna journal {path}: cannot read it: {exc}") from exc
    finally:
        if locked:
            lock.release()
    recover = (f"restore it from a copy if it is tracked (git: `git checkout -- {path}`; DVC: `dvc checkout`), "
               "or move it away to start the study afresh; it was not modified")
    offset = 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        if last and not line:
            break  # the file ends with a newline (or is empty)
        if last:  # bytes after the final newline: a record cut off while it was written
            if _is_record(line):
                fix = (f"if that last record is complete, add the newline yourself (`echo >> {path}`); "
                       f"otherwise remove the line (`truncate -s {offset} {path}` keeps the {number - 1} "
                       "line(s) before it)")
            else:
                fix = (f"a write was interrupted: remove that partial line yourself (`truncate -s {offset} "
                       f"{path}` keeps the {number - 1} complete line(s) before it)")
            raise DermaganError(f"Optuna journal {path}: line {number} is cut off (the file does not end with a "
                                f"newline: {_preview(line)}); {fix}, or {recover}")
        try:
            record = json.loads(line)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise DermaganError(f"Optuna journal {path}: line {number} is not valid JSON ({exc}: "
                                f"{_preview(line)}); {recover}") from exc
        if not isinstance(record, dict):
            raise DermaganError(f"Optuna journal {path}: line {number} is not a JSON object "
                                f"({_preview(line)}); {recover}")
        offset += len(line) + 1


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _preview(line: bytes, limit: int = 60) -> str:
    text = line[:limit].decode("utf-8", errors="replace")
    return repr(text) + ("..." if len(line) > limit else "")


def make_pruner(cfg: dict) -> optuna.pruners.BasePruner:
    kind = cfg.get("kind", "median")
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(cfg.get("n_startup_trials", 5)),
                                           n_warmup_steps=int(cfg.get("n_warmup_steps", 1)))
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.get("max_resource", "auto"),
                                              reduction_factor=int(cfg.get("reduction_factor", 3)))
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise DermaganError(f"params: tune pruner kind must be median, hyperband or none, got '{kind}'")


def open_study(cfg: StudyConfig, worker: int = 0) -> optuna.Study:
    """Create the study, or load it when it exists (a resumed or parallel worker).

    Worker ``k`` samples with seed ``cfg.seed + k``: workers with one seed would draw the same
    random start-up trials (seen in the first study: three trials ran twice).
    """
    sampler = optuna.samplers.TPESampler(seed=cfg.seed + worker, n_startup_trials=cfg.n_startup_trials,
                                         multivariate=True, constant_liar=True)
    return optuna.create_study(study_name=cfg.name, storage=make_storage(cfg.storage), sampler=sampler,
                               pruner=make_pruner(cfg.pruner), direction=cfg.direction, load_if_exists=True)


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials of dead processes on this host as FAIL (a killed run left them behind)."""
    stale = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = trial.user_attrs.get("host"), trial.user_attrs.get("pid")
        if host == socket.gethostname() and pid and not _alive(int(pid)):
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            stale.append(trial.number)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


# --- MLflow ------------------------------------------------------------------------------------

def parent_run_id(study: optuna.Study, cfg: StudyConfig) -> str:
    """The study's MLflow parent run: reused when the study already has one, else created."""
    client = mlflow.MlflowClient()
    existing = study.user_attrs.get(PARENT_ATTR)
    if existing:
        try:
            client.get_run(existing)
            return existing
        except mlflow.exceptions.MlflowException:
            pass
    experiment = mlflow.set_experiment(cfg.experiment).experiment_id
    run = client.create_run(experiment, run_name=f"study-{cfg.name}",
                            tags={"optuna_study": cfg.name, "optuna_storage": _storage_label(cfg.storage),
                                  "stage": "tune"})
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in _study_params(cfg).items()])
    study.set_user_attr(PARENT_ATTR, run.info.run_id)
    # Workers started together may each have found no parent and created one: after a pause the
    # last one written wins, the others delete theirs, and every worker nests under the same run.
    time.sleep(PARENT_SETTLE_SECONDS)
    winner = study.user_attrs[PARENT_ATTR]
    if winner != run.info.run_id:
        client.delete_run(run.info.run_id)
    return winner


def _storage_label(storage: str) -> str:
    """The storage without a password, for tags and logs."""
    if is_url(storage) and "@" in storage:
        scheme, rest = storage.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':')[0]}@{host}"
    return str(storage)


def _study_params(cfg: StudyConfig) -> dict:
    flat = {f"study.{k}": v for k, v in asdict(cfg).items() if k != "pruner"}
    flat.update({f"study.pruner.{k}": v for k, v in cfg.pruner.items()})
    flat["study.storage"] = _storage_label(cfg.storage)
    return flat


class Reporter:
    """``report(step, value, metrics)`` for one trial: pruner value, MLflow metrics, pruning."""

    def __init__(self, trial: optuna.Trial):
        self.trial, self.steps = trial, 0

    def plan(self, steps: int) -> None:
        """How many steps the trial would run unpruned (for the time-saved-by-pruning estimate)."""
        self.trial.set_user_attr("planned_steps", int(steps))

    def __call__(self, step: int, value: float, metrics: dict | None = None) -> None:
        self.trial.report(float(value), int(step))
        self.steps += 1
        self.trial.set_user_attr("steps_run", self.steps)
        mlflow.log_metrics({**(metrics or {}), "objective/intermediate": float(value)}, step=int(step))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (value {value:.4f})")


def tracked(objective: Callable, cfg: StudyConfig, parent: str) -> Callable[[optuna.Trial], float]:
    """Wrap ``objective`` so every trial is a nested MLflow run under the study's parent run."""
    experiment = mlflow.set_experiment(cfg.experiment).experiment_id

    def run_trial(trial: optuna.Trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        run = mlflow.start_run(run_name=f"{cfg.name}-trial-{trial.number}", experiment_id=experiment, nested=True,
                               parent_run_id=parent, tags={"optuna_study": cfg.name, "optuna_trial": str(trial.number),
                                                           "stage": "tune-trial"})
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        started, state = time.perf_counter(), "FAIL"
        try:
            value = objective(trial, Reporter(trial))
            mlflow.log_metric("objective/value", value)
            state = "COMPLETE"
            return value
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        finally:
            seconds = time.perf_counter() - started
            trial.set_user_attr("seconds", seconds)
            mlflow.log_metric("trial/seconds", seconds)
            mlflow.set_tag("optuna_state", state)
            mlflow.end_run("FAILED" if state == "FAIL" else "FINISHED")

    return run_trial


# --- running -----------------------------------------------------------------------------------

def build_objective(target: str, target_config: dict) -> Callable:
    if target not in TARGETS:
        raise DermaganError(f"unknown tuning target '{target}'; choose one of {sorted(TARGETS)}")
    module, factory = TARGETS[target].split(":")
    return getattr(importlib.import_module(module), factory)(target_config)


def optimize(cfg: StudyConfig, target: str, target_config: dict, parent: str, worker: int = 0) -> None:
    """One worker: run trials until the study has ``n_trials`` finished trials or time is up."""
    study = open_study(cfg, worker)
    if finished_trials(study) >= cfg.n_trials:
        return
    objective = tracked(build_objective(target, target_config), cfg, parent)
    stop = optuna.study.MaxTrialsCallback(cfg.n_trials, states=FINISHED)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, timeout=cfg.timeout_seconds, callbacks=[stop, _progress], gc_after_trial=True)


def _progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    try:
        best = study.best_value  # the best feasible trial's value in a constrained study
    except ValueError:  # no complete (feasible) trial yet
        best = None
    value = f"{trial.value:.4f}" if trial.value is not None else "-"
    seconds = trial.user_attrs.get("seconds", 0.0)
    print(f"[tune {study.study_name}] trial {trial.number} {trial.state.name.lower()} value {value} "
          f"({seconds / 60:.1f} min; {finished_trials(study)} finished; best {best if best is None else f'{best:.4f}'})",
          flush=True)


def _worker(cfg: StudyConfig, target: str, target_config: dict, parent: str, threads: int, tracking: str,
            worker: int) -> None:
    import torch

    torch.set_num_threads(threads)
    mlflow.set_tracking_uri(tracking)
    optimize(cfg, target, target_config, parent, worker)


def run_study(cfg: StudyConfig, target: str, target_config: dict, workers: int = 1,
              worker_offset: int = 0) -> optuna.Study:
    """Open (or resume) the study and run ``workers`` local processes on it; return the study.

    The processes are workers ``worker_offset .. worker_offset + workers - 1`` (sampler seeds);
    give commands started side by side on one study different offsets.
    """
    study = open_study(cfg)
    stale = fail_stale_trials(study)
    if stale:
        print(f"[tune {cfg.name}] marked trial(s) {stale} of a killed run as FAIL; resuming")
    parent = parent_run_id(study, cfg)
    if not study.get_trials(deepcopy=False):
        for values in cfg.enqueue:
            study.enqueue_trial(dict(values), user_attrs={"enqueued": True})
    if workers <= 1:
        optimize(cfg, target, target_config, parent, worker_offset)
    else:
        context = multiprocessing.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // workers)
        procs = [context.Process(target=_worker, args=(cfg, target, target_config, parent, threads,
                                                       mlflow.get_tracking_uri(), worker_offset + k))
                 for k in range(workers)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        failed = [p.exitcode for p in procs if p.exitcode]
        if failed:
            raise DermaganError(f"{len(failed)} tuning worker(s) exited with codes {failed}")
    return open_study(cfg)


# --- results -----------------------------------------------------------------------------------

def study_summary(study: optuna.Study, cfg: StudyConfig) -> dict:
    """Trials by state, best value and params, wall minutes, and minutes pruning saved (estimated)."""
    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    done = [t for t in trials if t.datetime_start and t.datetime_complete]
    wall = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds() if done else 0
    trial_seconds = sum(t.user_attrs.get("seconds", 0.0) for t in trials)
    saved = sum(pruning_saved_seconds(t) for t in trials if t.state == TrialState.PRUNED)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    feasible = [t for t in complete if all(v <= 0 for v in t.constraints.values())]
    best = study.best_trial if feasible else None  # Optuna's best trial is the best *feasible* one
    return {
        "study": cfg.name, "storage": _storage_label(cfg.storage), "direction": cfg.direction,
        "trials": len(trials), "states": {k: v for k, v in states.items() if v},
        "best_value": best.value if best else None, "best_trial": best.number if best else None,
        "best_enqueued": bool(best and best.user_attrs.get("enqueued")),
        "best_params": dict(best.params) if best else {},
        "wall_minutes": round(wall / 60, 2), "trial_minutes": round(trial_seconds / 60, 2),
        "pruning_saved_minutes": round(saved / 60, 2),
    }


def pruning_saved_seconds(trial: optuna.trial.FrozenTrial) -> float:
    """Steps a pruned trial did not run, times its own seconds per step."""
    planned, run = trial.user_attrs.get("planned_steps"), trial.user_attrs.get("steps_run")
    seconds = trial.user_attrs.get("seconds")
    if not (planned and run and seconds):
        return 0.0
    return max(0, planned - run) * seconds / run


def study_figures(study: optuna.Study) -> dict:
    """Optimisation history, parameter importances and parallel coordinates (matplotlib)."""
    from optuna.visualization import matplotlib as ovm

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    figures = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's matplotlib backend is marked experimental
        figures["optimization_history.png"] = ovm.plot_optimization_history(study).figure
        if len(complete) >= 2:
            figures["param_importances.png"] = ovm.plot_param_importances(study).figure
            figures["parallel_coordinate.png"] = ovm.plot_parallel_coordinate(study).figure
    for fig in figures.values():
        fig.set_size_inches(11, 6)
        fig.tight_layout()
    return figures


def log_results(study: optuna.Study, cfg: StudyConfig, summary: dict, figures: dict) -> None:
    """Best value and params, counts, minutes and figures onto the study's parent run."""
    client, run_id = mlflow.MlflowClient(), study.user_attrs[PARENT_ATTR]
    metrics = {"best_value": summary["best_value"], "trials": summary["trials"],
               "wall_minutes": summary["wall_minutes"], "pruning_saved_minutes": summary["pruning_saved_minutes"],
               **{f"trials_{k}": v for k, v in summary["states"].items()}}
    for key, value in metrics.items():
        if value is not None:
            client.log_metric(run_id, key, float(value))
    client.set_tag(run_id, "best_trial", str(summary["best_trial"]))
    for key, value in summary["best_params"].items():
        client.set_tag(run_id, f"best.{key}", str(value))
    client.log_dict(run_id, summary, "study_summary.json")
    for name, fig in figures.items():
        client.log_figure(run_id, fig, f"figures/{name}")
    client.set_terminated(run_id, "FINISHED")

"""The image sets a run used, as MLflow dataset inputs (the runs table's Dataset column).

Each set is logged as a small table (image_id, label), never its pixels, under a name such as
``ham10000-train`` with a context (``training``, ``validation``, ``test``, ``external``). Its digest
identifies the content: the first 32 hex digits of a sha256 over the image ids, the integer labels
and the image array bytes (MLflow keeps at most 36 characters); the input's ``sha256`` tag holds the
whole hash. Two runs that show the same digest were trained or scored on the same images.
"""

from __future__ import annotations

import hashlib
import warnings

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from dermagan.data.prepared import SplitArrays

DIGEST_CHARS = 32  # MLflow's datasets table holds digests of at most 36 characters
SHA256_TAG = "sha256"


def split_sha256(arrays: SplitArrays) -> str:
    """sha256 (hex) over a split's image ids, integer labels and images (dtype, shape and bytes)."""
    digest = hashlib.sha256()
    digest.update("\n".join(np.asarray(arrays.image_ids).astype(str)).encode())
    digest.update(np.ascontiguousarray(np.asarray(arrays.labels, dtype=np.int64)).tobytes())
    images = np.ascontiguousarray(arrays.images)
    digest.update(f"{images.dtype.str}{images.shape}".encode())
    digest.update(memoryview(images).cast("B"))
    return digest.hexdigest()


def dataset_name(dataset: str, split: str) -> str:
    """``ham10000-train`` for dataset ``HAM10000`` and split ``train`` (lower case, spaces as '-')."""
    return "-".join(f"{dataset}-{split}".lower().split())


def split_dataset(name: str, arrays: SplitArrays, classes: tuple[str, ...] | list[str], source: str):
    """An MLflow dataset of one split: the table image_id, label (class name), targets ``label``;
    ``source``: where the arrays were read (a path). Returns it with the full sha256."""
    sha = split_sha256(arrays)
    labels = np.asarray(arrays.labels, dtype=np.int64)
    table = pd.DataFrame({"image_id": np.asarray(arrays.image_ids).astype(str),
                          "label": np.asarray(list(classes), dtype=object)[labels] if len(labels) else []})
    with warnings.catch_warnings():  # MLflow registers its local-path source twice ('' and file://) and says so
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset = mlflow.data.from_pandas(table, source=source, targets="label", name=name, digest=sha[:DIGEST_CHARS])
    return dataset, sha


def dataset_input(name: str, arrays: SplitArrays, classes, source: str, context: str) -> DatasetInput:
    """One split as a run input with its context (and ``sha256``) tags."""
    dataset, sha = split_dataset(name, arrays, classes, source)
    return DatasetInput(dataset._to_mlflow_entity(),
                        tags=[InputTag(SHA256_TAG, sha), InputTag(MLFLOW_DATASET_CONTEXT, context)])


def log_datasets(inputs: list[DatasetInput], run_id: str | None = None) -> None:
    """Log dataset inputs to ``run_id`` through the client (the run keeps its times and status), or to
    the active run when ``run_id`` is None."""
    if inputs:
        run_id = run_id or mlflow.active_run().info.run_id
        mlflow.MlflowClient().log_inputs(run_id, datasets=inputs)


def training_inputs(dataset: str, classes, train: SplitArrays, n_extra: int, extra: str, val: SplitArrays,
                    prepared: str, trainset_dir: str | None) -> list[DatasetInput]:
    """The train stage's inputs: the real train split (``<dataset>-train``, context ``training``), the
    arm's extra images when it has some (``extra-<label>``, ``training``; ``train`` holds them after the
    real images) and the val split (``<dataset>-val``, ``validation``). ``prepared``: the prepared folder."""
    n_real = len(train) - n_extra
    real = SplitArrays(train.images[:n_real], train.labels[:n_real], train.image_ids[:n_real])
    inputs = [dataset_input(dataset_name(dataset, "train"), real, classes, f"{prepared}/train.npz", "training")]
    if n_extra:
        extras = SplitArrays(train.images[n_real:], train.labels[n_real:], train.image_ids[n_real:])
        inputs.append(dataset_input(f"extra-{extra}", extras, classes, str(trainset_dir), "training"))
    return inputs + [dataset_input(dataset_name(dataset, "val"), val, classes, f"{prepared}/val.npz", "validation")]

"""Load a logged or registered classifier without running anything the model folder brings.

A model folder is data from wherever it came from (a shared registry, a colleague's disk), so
loading one must not execute it:

- a dermagan classifier (MLmodel ``metadata.kind: classifier``) is rebuilt by dermagan's own code
  from ``model.pt``, read with ``torch.load(weights_only=True)``; its ``python_model`` file is never run;
- a dermagan ensemble (``kind: ensemble``) is loaded through MLflow only when its ``python_model``
  file is byte-identical to the one installed with dermagan; its members are ``model.pt`` files;
- anything else, in particular a pickled ``mlflow.pytorch`` model or a cloudpickled pyfunc, is
  refused with a message saying why. Nothing is unpickled.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from dermagan.classify.artifact import MODEL_FILE, load_weights_file
from dermagan.data.external import file_sha256
from dermagan.errors import DermaganError

PICKLE_REFUSAL = ("it stores a pickled Python object, and unpickling runs whatever code the file carries; "
                  "dermagan loads only weights files (torch.load(weights_only=True)). Re-train it with this "
                  "version of dermagan (`dvc repro`), or export it where it was made (`dermagan export`)")


def read_mlmodel(folder: Path) -> dict:
    """The parsed ``MLmodel`` file of a model folder (plain YAML: ``yaml.safe_load``)."""
    path = Path(folder) / "MLmodel"
    if not path.is_file():
        raise DermaganError(f"{folder}: not an MLflow model folder (no MLmodel file)")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DermaganError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(document, dict):
        raise DermaganError(f"{path}: not an MLmodel document")
    return document


def _python_model_file(folder: Path, mlmodel: dict) -> Path | None:
    pyfunc = (mlmodel.get("flavors") or {}).get("python_function") or {}
    name = pyfunc.get("model_code_path")  # the path it was logged from; MLflow loads the copy of that name
    return Path(folder) / Path(str(name)).name if name else None  # in the model folder, never outside it


def check_code_file(folder: Path, mlmodel: dict, expected: Path) -> None:
    """Refuse a pyfunc whose ``python_model`` code is not the installed ``expected`` file, byte for byte."""
    found = _python_model_file(folder, mlmodel)
    if found is None or not found.is_file():
        raise DermaganError(f"{folder}: the model is not a models-from-code pyfunc (no model_code_path); "
                            f"refused because {PICKLE_REFUSAL}")
    if file_sha256(found) != file_sha256(expected):
        raise DermaganError(f"{found}: this model's code differs from the {expected.name} installed with dermagan; "
                            "refused, since loading it would run that code. Load models only from sources you "
                            "trust, and re-log them with this version of dermagan")


def load_model_folder(folder: Path):
    """A local model folder -> an ``nn.Module`` (classifier) or the ensemble pyfunc; see the module doc."""
    folder = Path(folder)
    mlmodel = read_mlmodel(folder)
    flavors = mlmodel.get("flavors") or {}
    kind = (mlmodel.get("metadata") or {}).get("kind")
    if kind == "classifier":
        from dermagan.classify.pyfunc_model import WEIGHTS

        weights = folder / "artifacts" / MODEL_FILE
        if not weights.is_file():
            found = sorted(str(p.relative_to(folder)) for p in folder.rglob(MODEL_FILE))
            if len(found) != 1:
                raise DermaganError(f"{folder}: classifier model without its '{WEIGHTS}' file ({MODEL_FILE})")
            weights = folder / found[0]
        return load_weights_file(weights)
    if kind == "ensemble":
        import mlflow

        from dermagan.ensemble.model import CODE_FILE
        check_code_file(folder, mlmodel, CODE_FILE)
        return mlflow.pyfunc.load_model(str(folder))
    if "pytorch" in flavors:
        raise DermaganError(f"{folder}: a pickled torch model (mlflow.pytorch flavor); refused because "
                            f"{PICKLE_REFUSAL}")
    raise DermaganError(f"{folder}: not a dermagan classifier or ensemble (MLmodel metadata kind: {kind!r}, "
                        f"flavors: {sorted(flavors)}); refused because loading an unknown pyfunc may run its code")


def load_registered(uri: str, dst: Path | None = None):
    """The model at ``uri`` (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/...`` or a local
    folder), loaded by :func:`load_model_folder` after its files are downloaded (to ``dst`` or a
    temporary folder that is removed afterwards)."""
    import mlflow

    from dermagan.tracking.registry import registered_version

    if Path(uri).is_dir():
        return load_model_folder(Path(uri))
    registered_version(mlflow.MlflowClient(), uri)  # a models:/ URI naming nothing: say what exists, what to run
    with tempfile.TemporaryDirectory(prefix="dermagan-load-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst or tmp))
        return load_model_folder(Path(local))

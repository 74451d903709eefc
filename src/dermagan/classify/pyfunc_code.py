"""MLflow models-from-code entry point of a trained classifier: copied into every logged classifier.

MLflow runs this file when it loads the model (``mlflow models serve``, ``mlflow.pyfunc.load_model``);
``ClassifierModel.load_context`` then reads ``model.pt`` with ``torch.load(weights_only=True)``.
``dermagan predict`` checks that this file is byte-identical to the installed one before it lets
MLflow run it (:mod:`dermagan.classify.registry_load`).
"""

import mlflow

from dermagan.classify.pyfunc_model import ClassifierModel

mlflow.models.set_model(ClassifierModel())

"""MLflow models-from-code entry point of the ensemble pyfunc: copied into every logged ensemble.

MLflow runs this file when it loads the model; ``EnsembleModel.load_context`` then reads the
members and weights from the model's artifacts and ``model_config``.
"""

import mlflow

from dermagan.ensemble.model import EnsembleModel

mlflow.models.set_model(EnsembleModel())

"""MLflow set-up, run logging and the model registry (aliases and tags, never stages)."""

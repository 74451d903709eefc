"""One module per pipeline stage: read params and paths, call library functions, log to MLflow."""

"""Ensembles of trained classifier arms: Bayesian model averaging, stacking, plain averaging.

``weights``: pure numpy weight fitting on validation probabilities; ``model``: the MLflow pyfunc
that serves a weighted ensemble; ``serving``: ``dermagan predict`` for torch and pyfunc versions.
The stage that fits, scores and registers an ensemble is ``dermagan.stages.ensemble``.
"""

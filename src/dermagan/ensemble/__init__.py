"""Ensembles of trained classifier arms: Bayesian model averaging, stacking, plain averaging.

``weights``: pure numpy weight fitting on validation probabilities; ``fit``: every combiner fitted
on val and scored on test, per seed; ``report``: the report folder and figures; ``tracking``: the
MLflow run and the registered version; ``model``: the MLflow pyfunc that serves a weighted
ensemble; ``serving``: ``dermagan predict`` for torch and pyfunc versions. The stage that glues
them together is ``dermagan.stages.ensemble``.
"""

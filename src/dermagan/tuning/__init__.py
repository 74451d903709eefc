"""Optuna studies for any dermagan objective: storage, pruning, MLflow parent/nested runs, results.

``study`` is the general machinery; ``classifier`` is one objective (the GAN issue adds others).
"""

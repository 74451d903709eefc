"""Metrics on real-only splits, bootstrap confidence intervals, figures and comparisons."""

"""Scoring runs and datasets: ``evaluate_run`` (metrics with CIs, result files) and ``compare``.

The metric functions themselves are in :mod:`medlens.metrics`.
"""

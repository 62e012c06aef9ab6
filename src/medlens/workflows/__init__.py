"""Everything that trains more than one model, or orchestrates runs: one call for any config
(:func:`train`, :func:`resume`), ensembles, cross-validation and seed groups, the bench.

Above ``engine`` (one training run) and ``evaluate``; below ``report`` and the commands.
"""

from medlens.workflows.training import resume, train

__all__ = ["resume", "train"]

"""Training engine: config, Lightning module and trainer, checkpoints, tracking.

``medlens.engine.train.train(config, out)`` runs one training run; ``resume(run_dir)`` continues
one. Importing this package imports nothing heavy; the submodules import torch and Lightning.
"""

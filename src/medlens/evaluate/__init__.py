"""Evaluation: metrics as pure functions on numpy arrays."""

"""Evaluation: metrics, zero-shot classifiers, linear probe."""

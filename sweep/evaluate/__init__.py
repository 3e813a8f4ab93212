"""Evaluation: generation, the SFT baseline and the evaluator, and the estimators behind its metrics."""

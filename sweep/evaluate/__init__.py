"""Evaluation: generation, the SFT baseline, the evaluator, and the metrics, records, estimators it uses."""

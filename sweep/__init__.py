"""posweep: hyperparameter sweeps for preference optimization, with robustness reports."""

__version__ = "0.1.0"

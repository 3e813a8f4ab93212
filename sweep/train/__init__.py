"""Training: work shared by the trials of a sweep, the TRL hooks, and one trial."""

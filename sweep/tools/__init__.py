"""Tools on their own: reward-model training, preference-data statistics, perplexity filtering."""

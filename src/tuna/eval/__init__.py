"""Evaluation: held-out loss and perplexity, generation, exact match."""

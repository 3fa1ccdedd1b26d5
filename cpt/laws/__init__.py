"""Scaling laws for continual pre-training: the perplexity-aware data law (Paper A) and the CMR law (Paper B)."""

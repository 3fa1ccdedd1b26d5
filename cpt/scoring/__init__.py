"""Chunk perplexity under a frozen base model: window policy, batching, and the NLL computation."""

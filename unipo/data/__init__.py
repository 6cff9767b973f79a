"""Datasets, built-in tasks, prompt formatting and the rollout batch."""

"""Rollout fixtures: the tokenizer and the sandbox backends are tests/conftest.py's."""

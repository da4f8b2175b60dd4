"""Environments the agent acts in: sandboxes, tool executors, task sources, grading.

This layer imports nothing else of `dagger_jax`.
"""

"""Anything that maps an agent's state to its next action text."""

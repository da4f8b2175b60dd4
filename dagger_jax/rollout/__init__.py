"""Running episodes: the agent loop in a sandbox, turn by turn."""

"""Where a run's files live: the workdir layout every layer shares (it imports nothing of ours)."""

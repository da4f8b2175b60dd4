"""What a run shows: curves of its history, what an iteration costs at scale."""

"""``python -m producer``: plan a discovery run, enqueue it, follow it."""

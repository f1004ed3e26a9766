"""Training: one loop (train/loop.py) that every stage feeds with its own task."""

"""Offline work on the stored history: load, split, train, evaluate, report, publish."""

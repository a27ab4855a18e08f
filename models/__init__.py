"""Recommendation and next-best-offer models: fit / recommend / save / load, no NATS inside."""

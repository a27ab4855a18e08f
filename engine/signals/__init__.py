"""Interest signals: who is showing interest in what, with the evidence (broker-free)."""

from engine.signals.detector import Detector, Evidence, Firing, describe, matches

__all__ = ["Detector", "Evidence", "Firing", "describe", "matches"]

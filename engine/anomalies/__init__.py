"""Anomaly detection, broker-free: per-user and site-wide detectors over the log.

Methods and parameters: `engine.anomalies.config` (`[anomalies.<name>]` of the slots file);
the fold that runs them with cooldowns: `engine.anomalies.detector.Detectors`; the service that
publishes `anomaly_detected`: `engine.services.anomalies`.
"""

from engine.anomalies.base import Baseline, Evidence, Finding
from engine.anomalies.config import KINDS, AnomalyDef
from engine.anomalies.detector import Detectors

__all__ = ["KINDS", "AnomalyDef", "Baseline", "Detectors", "Evidence", "Finding"]

"""The gateway's Prometheus metrics, kept and rendered by `prometheus_client`.

`Metrics` keeps the small interface the gateway's routes already use (`inc`, `set`, `get`,
`describe`) and adds `observe` (histograms) and `replace` (gauges sampled from the broker, whose
label sets come and go: a deleted consumer must not keep reporting its last lag). Each metric is
a `prometheus_client` object in the instance's own `CollectorRegistry`, so two gateways in one
process (tests) do not share counts, and the exposition is the library's: exact integers
(`1234567`, never `1.23457e+06`) and labels escaped as the format says.

A metric's label names are fixed by its first use (or by `describe(..., labels=)`); a later call
with other names raises `ValueError`, which is a bug in the caller. Names are given without the
`nerve_` namespace; a counter's `_total` suffix is kept in the exposed name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds, for request handling: the gateway answers in milliseconds, an outage in ~2 s."""
FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds from an event's arrival to the list that reflects it (the design's goal: < 1 s)."""
CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The exposition's media type (text format 0.0.4)."""

Labels = tuple[tuple[str, str], ...]
"""A series' labels as sorted (name, value) pairs."""
KINDS = ("counter", "gauge", "histogram")


class Metrics:
    """Named counters, gauges and histograms in one registry (module doc)."""

    def __init__(self, namespace: str = "nerve") -> None:
        self.namespace = namespace
        self.registry = CollectorRegistry(auto_describe=True)
        self._specs: dict[str, tuple[str, str, tuple[float, ...]]] = {}
        self._metrics: dict[str, MetricWrapperBase] = {}

    def describe(
        self,
        name: str,
        kind: str,
        help_text: str,
        *,
        labels: Sequence[str] | None = None,
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        """Say what `name` is (`counter`, `gauge`, `histogram`) before its first use; with
        `labels`, it is created at once (exposed at zero before anything happens)."""
        if kind not in KINDS:
            raise ValueError(f"metric kind {kind!r}: one of {', '.join(KINDS)}")
        self._specs[name] = (kind, help_text, tuple(buckets))
        if labels is not None and name not in self._metrics:
            self._create(name, kind, tuple(sorted(labels)))

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` (>= 0) to a counter."""
        self._series(name, "counter", labels).inc(amount)  # type: ignore[attr-defined]

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        self._series(name, "gauge", labels).set(value)  # type: ignore[attr-defined]

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Count one observation (seconds, usually) in a histogram."""
        self._series(name, "histogram", labels).observe(value)  # type: ignore[attr-defined]

    def replace(self, name: str, values: Mapping[Labels, float]) -> None:
        """Set a gauge's series to exactly `values`: series not named are dropped."""
        names = {tuple(k for k, _ in key) for key in values}
        if len(names) > 1:
            raise ValueError(f"{name}: series with different label names {sorted(names)}")
        label_names = next(iter(names), ())
        metric = self._metrics.get(name) or self._create(name, "gauge", label_names)
        metric.clear()
        for key, value in values.items():
            child = metric.labels(**dict(key)) if key else metric
            child.set(value)  # type: ignore[attr-defined]

    def get(self, name: str, **labels: str) -> float:
        """A counter's or gauge's current value (0 when never touched)."""
        kind = self._kind(name, "counter")
        sample = f"{self.namespace}_{name}"
        if kind == "histogram":
            sample += "_count"
        found = self.registry.get_sample_value(sample, labels)
        return 0.0 if found is None else found

    def render(self) -> str:
        """The text exposition of every metric."""
        return generate_latest(self.registry).decode()

    # -- internals -------------------------------------------------------------------------
    def _kind(self, name: str, default: str) -> str:
        return self._specs.get(name, (default, "", ()))[0]

    def _series(self, name: str, kind: str, labels: Mapping[str, str]) -> MetricWrapperBase:
        metric = self._metrics.get(name)
        if metric is None:
            metric = self._create(name, self._kind(name, kind), tuple(sorted(labels)))
        return metric.labels(**labels) if labels else metric

    def _create(self, name: str, kind: str, label_names: tuple[str, ...]) -> MetricWrapperBase:
        _, help_text, buckets = self._specs.get(name, (kind, "", LATENCY_BUCKETS))
        common = {
            "name": name,
            "documentation": help_text or name.replace("_", " "),
            "labelnames": label_names,
            "namespace": self.namespace,
            "registry": self.registry,
        }
        metric: MetricWrapperBase
        if kind == "counter":
            metric = Counter(**common)  # type: ignore[arg-type]
        elif kind == "gauge":
            metric = Gauge(**common)  # type: ignore[arg-type]
        else:
            metric = Histogram(buckets=buckets or LATENCY_BUCKETS, **common)  # type: ignore[arg-type]
        self._metrics[name] = metric
        return metric

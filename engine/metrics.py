"""A few Prometheus counters and gauges, rendered in the text exposition format."""

from __future__ import annotations

from collections import defaultdict


class Metrics:
    """Counters keyed by (name, sorted labels); `render` writes the Prometheus text format."""

    def __init__(self, namespace: str = "nerve") -> None:
        self.namespace = namespace
        self._help: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)

    def describe(self, name: str, kind: str, help_text: str) -> None:
        self._help[name] = (kind, help_text)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        series = self._values[name]
        series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self._values[name][tuple(sorted(labels.items()))] = value

    def get(self, name: str, **labels: str) -> float:
        return self._values[name].get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines = []
        for name in sorted(set(self._help) | set(self._values)):
            full = f"{self.namespace}_{name}"
            kind, help_text = self._help.get(name, ("untyped", ""))
            lines += [f"# HELP {full} {help_text}", f"# TYPE {full} {kind}"]
            for key, value in sorted(self._values.get(name, {}).items()):
                label = ",".join(f'{k}="{v}"' for k, v in key)
                lines.append(f"{full}{{{label}}} {value:g}" if label else f"{full} {value:g}")
        return "\n".join(lines) + "\n"

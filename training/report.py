"""The training report: one self-contained HTML page with inline SVG plots (drawn here: no plotting
library, no network), for every kind of model: the data range and slices, the metrics beside
popularity and the slot's active model on the same split, a learning curve and the long tail with
labelled axes, the tuning search, and the card.

Each plot is an SVG `figure` whose axes carry `class="x-label"` / `class="y-label"` texts and
tick values, so a reader (or a test) can tell what is measured against what.
"""

from __future__ import annotations

import html as escape
import json
from collections.abc import Mapping, Sequence
from typing import Any

from training.result import Points, TrainResult

W, H, LEFT, BOTTOM, TOP, RIGHT = 560, 260, 64, 44, 14, 140
COLOURS = ("#2f6fb0", "#c8553d", "#5a9e6f", "#8e6bb8")


def _e(x: object) -> str:
    return escape.escape(str(x))


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _frame(title: str, body: str, xlabel: str, ylabel: str, ticks: str = "") -> str:
    x1, y1 = W - RIGHT, H - BOTTOM
    return (
        f"<figure><figcaption>{_e(title)}</figcaption>"
        f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{_e(title)}">'
        f'<line x1="{LEFT}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="#888"/>'
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{y1}" stroke="#888"/>{ticks}{body}'
        f'<text class="x-label" x="{(LEFT + x1) / 2:.0f}" y="{H - 6}" font-size="11" '
        f'text-anchor="middle">{_e(xlabel)}</text>'
        f'<text class="y-label" x="12" y="{(TOP + y1) / 2:.0f}" font-size="11" '
        f'text-anchor="middle" transform="rotate(-90 12 {(TOP + y1) / 2:.0f})">{_e(ylabel)}</text>'
        "</svg></figure>"
    )


def _ticks(lo: float, hi: float, axis: str) -> str:
    """Three tick values (low, middle, high) along an axis."""
    out = []
    for f in (0.0, 0.5, 1.0):
        v = lo + f * (hi - lo)
        if axis == "x":
            x = LEFT + f * (W - RIGHT - LEFT)
            out.append(
                f'<text class="x-tick" x="{x:.0f}" y="{H - BOTTOM + 14}" font-size="10" '
                f'text-anchor="middle">{_fmt(v)}</text>'
            )
        else:
            y = H - BOTTOM - f * (H - BOTTOM - TOP)
            out.append(
                f'<text class="y-tick" x="{LEFT - 4}" y="{y + 3:.0f}" font-size="10" '
                f'text-anchor="end">{_fmt(v)}</text>'
            )
    return "".join(out)


def _legend(names: Sequence[str]) -> str:
    return "".join(
        f'<text class="legend" x="{W - RIGHT + 8}" y="{TOP + 10 + 14 * i}" font-size="11" '
        f'fill="{COLOURS[i % len(COLOURS)]}">{_e(n)}</text>'
        for i, n in enumerate(names)
    )


def bars(title: str, groups: Mapping[str, Mapping[str, float]], keys: Sequence[str]) -> str:
    """Grouped bars: one group per metric in `keys`, one bar per model."""
    groups = {n: v for n, v in groups.items() if all(k in v for k in keys)}
    if not groups or not keys:
        return ""
    top = max((v[k] for v in groups.values() for k in keys), default=1.0) or 1.0
    slot = (W - RIGHT - LEFT - 10) / len(keys)
    width = slot / (len(groups) + 1)
    parts = []
    for gi, key in enumerate(keys):
        x0 = LEFT + 10 + gi * slot
        parts.append(
            f'<text class="x-tick" x="{x0 + slot / 3:.0f}" y="{H - BOTTOM + 14}" '
            f'font-size="10">{_e(key)}</text>'
        )
        for mi, (name, values) in enumerate(groups.items()):
            h = (H - BOTTOM - TOP) * values[key] / top
            parts.append(
                f'<rect x="{x0 + mi * width:.1f}" y="{H - BOTTOM - h:.1f}" '
                f'width="{width * 0.9:.1f}" height="{h:.1f}" fill="{COLOURS[mi % len(COLOURS)]}">'
                f"<title>{_e(name)} {_e(key)}: {values[key]:.4f}</title></rect>"
            )
    body = "".join(parts) + _legend(list(groups))
    return _frame(title, body, "metric", "value", _ticks(0.0, top, "y"))


def lines(title: str, series: Mapping[str, Points], xlabel: str, ylabel: str) -> str:
    """One polyline per named series of (x, y) points, on shared linear axes."""
    series = {n: p for n, p in series.items() if p}
    if not series:
        return ""
    xs = [x for p in series.values() for x, _ in p]
    ys = [y for p in series.values() for _, y in p]
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y_lo, y_hi = min(0.0, min(ys)), max(ys) if max(ys) > 0 else 1.0
    body = []
    for i, points in enumerate(series.values()):
        coords = " ".join(
            f"{LEFT + (W - RIGHT - LEFT) * (x - x_lo) / (x_hi - x_lo):.1f},"
            f"{H - BOTTOM - (H - BOTTOM - TOP) * (y - y_lo) / (y_hi - y_lo):.1f}"
            for x, y in points
        )
        colour = COLOURS[i % len(COLOURS)]
        body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
    ticks = _ticks(x_lo, x_hi, "x") + _ticks(y_lo, y_hi, "y")
    return _frame(title, "".join(body) + _legend(list(series)), xlabel, ylabel, ticks)


def cumulative(points: Points, most: int = 120) -> Points:
    """(rank, share) per item as the cumulative share by rank, thinned to about `most` points."""
    out, total = [], 0.0
    step = max(1, len(points) // most)
    for i, (rank, share) in enumerate(points):
        total += share
        if i % step == 0 or i == len(points) - 1:
            out.append((rank, total))
    return out


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], cls: str) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(_cell(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_cell(x)}" for k, x in v.items())
    return "" if v is None else str(v)


def _slices(card: Mapping[str, Any]) -> str:
    data = card["data"]
    rows = [{"slice": "all data", **{k: data.get(k) for k in ("from", "to", "events", "users")}}]
    for name, s in card.get("split", {}).get("slices", {}).items():
        rows.append({"slice": f"{name} part", **s})
    tuning = card.get("tuning") or {}
    for name in ("fit", "validation"):
        if name in tuning:
            rows.append({"slice": f"tuning {name}", **tuning[name]})
    seq = f" (ACTIVITY {data.get('seq_from')}&ndash;{data.get('seq_to')})"
    return (
        f'<section id="data"><h2>Data</h2><p>{data.get("events", 0):,} events from '
        f"{_e(data.get('from'))} to {_e(data.get('to'))}{seq}; split: "
        f"{_e(card.get('split', {}).get('how', 'time cuts'))}.</p>"
        + _table(rows, ["slice", "from", "to", "events", "users"], "slices")
        + "</section>"
    )


def _active(card: Mapping[str, Any]) -> str:
    active = card.get("active") or {}
    if active.get("version"):
        text = (
            f"Beside the active model of slot {_e(active.get('slot'))}: "
            f"{_e(active['version'])} ({_e(active.get('model'))}), refitted with its "
            "parameters on this split's training part."
        )
        if active.get("error"):
            text += f" It could not be evaluated: {_e(active['error'])}."
    else:
        text = f"No active model: {_e(active.get('reason', 'not looked up'))}."
    return f'<p id="active">{text}</p>'


def _tuning(card: Mapping[str, Any]) -> str:
    tuning = card.get("tuning")
    if not tuning:
        return '<section id="tuning"><h2>Tuning</h2><p>Not tuned: fixed parameters.</p></section>'
    rows = [{"": "best" if t["params"] == tuning["best"] else "", **t} for t in tuning["trials"]]
    return (
        f'<section id="tuning"><h2>Tuning</h2><p>{_e(tuning["search"])} search of '
        f"{len(rows)} settings by {_e(tuning['metric'])} on the validation slice; the best "
        f"({_cell(tuning['best'])}, {tuning['best_score']:.4f}) was refitted on the whole "
        "training part.</p>"
        + _table(rows, ["", "params", "score", "seconds"], "trials")
        + "</section>"
    )


def page(
    card: Mapping[str, Any],
    keys: Sequence[str],
    curve: Mapping[str, Points],
    curve_axes: tuple[str, str],
    tail: Mapping[str, Points],
    tail_axes: tuple[str, str],
) -> str:
    """The report of any model from its card and figures."""
    metrics: Mapping[str, Mapping[str, float]] = card["metrics"]
    rows = [{"model": name, **values} for name, values in metrics.items()]
    tails = {name: cumulative(points) for name, points in tail.items()}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(card["version"])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:64rem;margin:2rem auto;color:#222}}
table{{border-collapse:collapse;margin:.5rem 0}}td,th{{padding:.2rem .6rem;
border-bottom:1px solid #ddd;text-align:right}}figure{{display:inline-block;margin:1rem}}
pre{{background:#f5f5f5;padding:1rem;overflow:auto}}</style></head><body>
<h1>Model {_e(card["version"])}</h1>
<p>{_e(card["model"])} with {_e(_cell(card.get("params", {})))}</p>
{_slices(card)}
<section id="metrics"><h2>Metrics (same split)</h2>{_active(card)}
{_table(rows, ["model", *keys], "metrics")}
{bars("Metrics per model (same split)", metrics, keys[:4])}</section>
<section id="curves"><h2>Learning curve and long tail</h2>
{lines("Learning curve", curve, *curve_axes)}
{lines("Long tail of the recommendations", tails, *tail_axes)}</section>
{_tuning(card)}
<h2>Model card</h2><pre>{_e(json.dumps(card, indent=2))}</pre>
</body></html>
"""


def html(result: TrainResult) -> str:
    """The report of a trained recommender."""
    k = result.card["k"]
    keys = [f"ndcg@{k}", f"recall@{k}", f"hr@{k}", f"map@{k}", "coverage", "novelty"]
    return page(
        result.card,
        keys,
        {result.card["model"]: result.curve},
        ("training events", f"nDCG@{k} on the test part"),
        result.tail,
        ("item popularity rank (1 = used by most users)", "cumulative share of recommendations"),
    )

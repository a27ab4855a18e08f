"""The training report: one self-contained HTML page with inline SVG plots (no plotting library,
no network): metrics per model, the popularity long tail, the learning curve, and the card."""

from __future__ import annotations

import html as escape
import json
from collections.abc import Sequence

from training.result import TrainResult

W, H, PAD = 520, 220, 40
COLOURS = ("#2f6fb0", "#c8553d", "#5a9e6f", "#8e6bb8")


def _frame(title: str, body: str) -> str:
    return (
        f"<figure><figcaption>{escape.escape(title)}</figcaption>"
        f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
        f'aria-label="{escape.escape(title)}">'
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 10}" y2="{H - PAD}" stroke="#888"/>'
        f'<line x1="{PAD}" y1="10" x2="{PAD}" y2="{H - PAD}" stroke="#888"/>{body}</svg></figure>'
    )


def bars(title: str, groups: dict[str, dict[str, float]], keys: Sequence[str]) -> str:
    """Grouped bars: one group per metric in `keys`, one bar per model."""
    top = max((v[k] for v in groups.values() for k in keys), default=1.0) or 1.0
    slot = (W - PAD - 20) / max(len(keys), 1)
    width = slot / (len(groups) + 1)
    parts = []
    for gi, key in enumerate(keys):
        x0 = PAD + 10 + gi * slot
        parts.append(
            f'<text x="{x0 + slot / 3:.0f}" y="{H - PAD + 16}" font-size="11">'
            f"{escape.escape(key)}</text>"
        )
        for mi, (name, values) in enumerate(groups.items()):
            h = (H - PAD - 20) * values[key] / top
            x = x0 + mi * width
            parts.append(
                f'<rect x="{x:.1f}" y="{H - PAD - h:.1f}" width="{width * 0.9:.1f}" '
                f'height="{h:.1f}" fill="{COLOURS[mi % len(COLOURS)]}">'
                f"<title>{escape.escape(name)} {key}: {values[key]:.4f}</title></rect>"
            )
    legend = "".join(
        f'<text x="{W - 130}" y="{20 + 14 * i}" font-size="11" fill="{COLOURS[i % 4]}">'
        f"{escape.escape(n)}</text>"
        for i, n in enumerate(groups)
    )
    return _frame(title, "".join(parts) + legend)


def line(title: str, points: Sequence[tuple[float, float]], xlabel: str, log: bool = False) -> str:
    if not points:
        return ""
    import math

    xs = [p[0] for p in points]
    ys = [math.log10(max(p[1], 1)) if log else p[1] for p in points]
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y_hi = max(ys) or 1.0
    coords = " ".join(
        f"{PAD + (W - PAD - 20) * (x - x_lo) / (x_hi - x_lo):.1f},"
        f"{H - PAD - (H - PAD - 20) * y / y_hi:.1f}"
        for x, y in zip(xs, ys, strict=True)
    )
    label = f'<text x="{W / 2:.0f}" y="{H - 8}" font-size="11">{escape.escape(xlabel)}</text>'
    return _frame(
        title,
        f'<polyline fill="none" stroke="{COLOURS[0]}" stroke-width="2" points="{coords}"/>{label}',
    )


def html(result: TrainResult) -> str:
    k = result.card["k"]
    keys = [f"ndcg@{k}", f"recall@{k}", f"hr@{k}", f"map@{k}", "coverage"]
    rows = "".join(
        f"<tr><th>{escape.escape(name)}</th>"
        + "".join(f"<td>{values[key]:.4f}</td>" for key in keys)
        + "</tr>"
        for name, values in result.metrics.items()
    )
    tail = [(float(i), float(c)) for i, c in enumerate(result.item_counts)]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape.escape(result.version)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}}
table{{border-collapse:collapse}}td,th{{padding:.2rem .6rem;border-bottom:1px solid #ddd;
text-align:right}}figure{{display:inline-block;margin:1rem}}pre{{background:#f5f5f5;
padding:1rem;overflow:auto}}</style></head><body>
<h1>Model {escape.escape(result.version)}</h1>
<p>{result.card["data"]["events"]:,} events, {result.card["data"]["users"]:,} users,
{result.card["data"]["items"]:,} items, {escape.escape(result.card["data"]["from"])} to
{escape.escape(result.card["data"]["to"])} (ACTIVITY {result.card["data"]["seq_from"]}&ndash;{
        result.card["data"]["seq_to"]
    }); split: {escape.escape(result.card["split"]["how"])}.</p>
<table><tr><th></th>{"".join(f"<th>{escape.escape(key)}</th>" for key in keys)}</tr>{rows}
</table>
{bars("Metrics per model (same split)", result.metrics, keys[:4])}
{line("Popularity long tail: users per item, log scale", tail, "items by popularity", log=True)}
{
        line(
            f"Learning curve: nDCG@{k} by share of training users",
            result.curve,
            "share of training users",
        )
    }
<h2>Model card</h2><pre>{escape.escape(json.dumps(result.card, indent=2))}</pre>
</body></html>
"""

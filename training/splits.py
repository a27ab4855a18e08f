"""Temporal splits of a history DataFrame: train on the past, test on what came after."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import pandas as pd

Split = Literal["global", "last"]


def split(
    frame: pd.DataFrame, how: Split, at: float = 0.8, last_n: int = 2
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The earlier and the later part of `frame` by rule `how`: `global`, a time cut at the
    `at` quantile of event times; `last`, each user's last `last_n` viewed or bought items.
    Tuning carves its validation slice out of the earlier part by the same rule."""
    if how == "global":
        return global_cut(frame, at)
    return leave_last_n(frame, last_n, item_types=("item_viewed", "item_purchased"))


def span(frame: pd.DataFrame) -> dict[str, object]:
    """The date range and size of a slice, for the card and the report."""
    if frame.empty:
        return {"from": None, "to": None, "events": 0, "users": 0}
    return {
        "from": frame["time"].min().isoformat(),
        "to": frame["time"].max().isoformat(),
        "events": len(frame),
        "users": int(frame["user"].nunique()),
    }


def global_cut(
    frame: pd.DataFrame, at: str | datetime | float = 0.8
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Everything before `at` trains, everything from it tests. `at` is a time, or a fraction
    of the events (0.8: the cut falls at the 80th percentile of event times)."""
    if isinstance(at, float):
        if not 0 < at < 1:
            raise ValueError("a fractional cut must be between 0 and 1")
        cut = frame["time"].quantile(at)
    else:
        cut = pd.Timestamp(at)
        cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut
    return frame[frame["time"] < cut], frame[frame["time"] >= cut]


def leave_last_n(
    frame: pd.DataFrame,
    n: int = 1,
    *,
    user: str = "user",
    item_types: tuple[str, ...] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's last `n` item events (of `item_types`, if given) test; the rest trains.
    Users with fewer than n + 1 such events only train."""
    ordered = frame.sort_values(["time", "seq"] if "seq" in frame else ["time"])
    eligible = ordered["item_id"].notna()
    if item_types is not None:
        eligible &= ordered["type"].isin(item_types)
    candidates = ordered[eligible]
    rank = candidates.groupby(user).cumcount(ascending=False)
    size = candidates.groupby(user)[user].transform("size")
    test_index = candidates.index[(rank < n) & (size > n)]
    return ordered.drop(index=test_index), ordered.loc[test_index]

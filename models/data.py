"""Interactions: who did what to which item, as a sparse user x item matrix of weights.

Events become weights through `EventWeights` (a purchase counts more than a view); repeated
events of a user on an item add up. The matrix is what every model fits on; the id arrays map
rows and columns back to user and item ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_WEIGHTS: dict[str, float] = {
    "item_viewed": 1.0,
    "recommendation_clicked": 2.0,
    "simulator_used": 3.0,
    "item_added_to_cart": 4.0,
    "item_purchased": 8.0,
    "item_rated": 1.0,
}


class EventWeights(BaseModel):
    """How much each event type counts; types not listed are ignored.

    `rating_scale`: for `item_rated`, the weight is multiplied by rating / rating_scale.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    rating_scale: float = Field(default=5.0, gt=0)


@dataclass(frozen=True)
class Interactions:
    """A user x item matrix of summed weights, with the ids of its rows and columns."""

    matrix: sp.csr_matrix
    users: np.ndarray  # row -> user id
    items: np.ndarray  # column -> item id

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def user_index(self) -> dict[str, int]:
        return {str(user): i for i, user in enumerate(self.users)}

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        weights: EventWeights | None = None,
        *,
        user: str = "user",
        items: Sequence[str] | None = None,
        half_life_days: float | None = None,
    ) -> Interactions:
        """From a history DataFrame (`training.load_history`): columns `user`, `item_id`, `type`
        and, for ratings, `value`. `items` fixes the columns (unknown items are dropped). With
        `half_life_days`, a weight halves for every half-life between its event and the newest
        event (trending)."""
        weights = weights or EventWeights()
        wanted = [c for c in (user, "item_id", "type", "value", "time") if c in frame.columns]
        view = frame[wanted]  # only the columns used: a warehouse frame also holds properties
        df = view[view["item_id"].notna() & view["type"].isin(list(weights.weights))]
        w = df["type"].map(weights.weights).astype("float64").to_numpy()
        rated = (df["type"] == "item_rated").to_numpy()
        if rated.any():
            values = df["value"].fillna(weights.rating_scale).to_numpy(dtype="float64")
            w = np.where(rated, w * values / weights.rating_scale, w)
        if half_life_days is not None and len(df):
            age = (df["time"].max() - df["time"]).dt.total_seconds().to_numpy() / 86_400.0
            w = w * np.power(0.5, age / half_life_days)
        return cls.from_triples(df[user], df["item_id"], w, columns=items)

    @classmethod
    def from_triples(
        cls,
        users: Iterable[str],
        items: Iterable[str],
        weights: Iterable[float] | None = None,
        *,
        columns: Sequence[str] | None = None,
    ) -> Interactions:
        """From parallel (user, item, weight) sequences; `columns` fixes the items. Ids are
        compared as strings; rows and (without `columns`) columns come sorted by id.

        Built from codes, never row by row: a pandas categorical (`training.read_interactions`)
        is used as it is, anything else is factorised once; with 1 M rows this takes a fraction
        of a second and little more memory than the codes themselves."""
        user_ids, row = _codes(users)
        w = (
            np.ones(len(row))
            if weights is None
            else np.asarray(weights if hasattr(weights, "__len__") else list(weights), "float64")
        )
        if columns is not None:
            cols = np.asarray([str(c) for c in columns], dtype=object)
            item_ids, col = _codes(items)
            col = pd.Index(cols).get_indexer(item_ids)[col]
            keep = col >= 0
            row, col, w = row[keep], col[keep], w[keep]
            present = np.zeros(len(user_ids), dtype=bool)
            present[row] = True  # users whose every item is unknown get no row, as before
            user_ids, row = user_ids[present], (np.cumsum(present) - 1)[row]
        else:
            cols, col = _codes(items)
        matrix = sp.csr_matrix((w, (row, col)), shape=(len(user_ids), len(cols)))
        matrix.sum_duplicates()
        return cls(matrix.astype(np.float32), user_ids, cols)

    def history(self, user_row: int) -> dict[str, float]:
        """One user's items and weights, as the dict `Recommender.recommend` takes."""
        start, end = self.matrix.indptr[user_row], self.matrix.indptr[user_row + 1]
        cols, vals = self.matrix.indices[start:end], self.matrix.data[start:end]
        return {str(self.items[c]): float(v) for c, v in zip(cols, vals, strict=True)}


def _codes(values: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct ids of `values` (as `str`, object array) and each value's position
    in them: vectorised (a hash table over the values, a sort of the distinct ones only)."""
    series = values if isinstance(values, pd.Series) else pd.Series(_sequence(values))
    if isinstance(series.dtype, pd.CategoricalDtype) and not series.isna().any():
        cats = series.cat.categories
        names = cats.astype(str) if cats.dtype != object else cats
        if names.is_unique:
            order = np.argsort(names.to_numpy(dtype=object), kind="stable")
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order))
            codes = rank[series.cat.codes.to_numpy()]
            used = np.zeros(len(order), dtype=bool)
            used[codes] = True  # categories no row uses (a filtered frame) get no row or column
            ids = names.to_numpy(dtype=object)[order][used]
            return ids, (np.cumsum(used) - 1)[codes]
    codes, uniques = pd.factorize(series.astype(str), sort=True)
    return np.asarray(uniques, dtype=object), codes.astype(np.int64)


def _sequence(values: Iterable[str]) -> Sequence[str] | np.ndarray:
    return values if isinstance(values, Sequence | np.ndarray) else list(values)


def history_rows(
    histories: Sequence[Mapping[str, float]],
    items: np.ndarray,
    index: Mapping[str, int] | None = None,
) -> sp.csr_matrix:
    """Histories (item -> weight) as rows over `items`; unknown items are ignored. Pass the
    item -> column `index` when calling often."""
    if index is None:
        index = {str(item): i for i, item in enumerate(items)}
    indptr, indices, data = [0], [], []
    for h in histories:
        for item, weight in h.items():
            col = index.get(item)
            if col is not None:
                indices.append(col)
                data.append(weight)
        indptr.append(len(indices))
    return sp.csr_matrix(
        (np.asarray(data, dtype=np.float32), np.asarray(indices, dtype=np.int64), indptr),
        shape=(len(histories), len(items)),
    )

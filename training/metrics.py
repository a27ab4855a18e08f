"""Top-k metrics for recommendation lists, and catalogue-level measures.

`recommended` maps a user to the ranked list of items shown; `relevant` maps a user to the set
of items they went on to use (the held-out part of a split). Users without relevant items are
left out of the averages, as is usual.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

Ranked = Mapping[str, Sequence[str]]
Truth = Mapping[str, set[str]]


def _users(recommended: Ranked, relevant: Truth) -> list[str]:
    return [u for u in relevant if relevant[u]]


def recall_at_k(recommended: Ranked, relevant: Truth, k: int = 10) -> float:
    """Share of a user's relevant items found in the top k (relevant items capped at k)."""
    users = _users(recommended, relevant)
    if not users:
        return 0.0
    total = 0.0
    for u in users:
        hits = len(set(list(recommended.get(u, []))[:k]) & relevant[u])
        total += hits / min(len(relevant[u]), k)
    return total / len(users)


def hit_rate_at_k(recommended: Ranked, relevant: Truth, k: int = 10) -> float:
    """Share of users with at least one relevant item in the top k."""
    users = _users(recommended, relevant)
    if not users:
        return 0.0
    return sum(bool(set(list(recommended.get(u, []))[:k]) & relevant[u]) for u in users) / len(
        users
    )


def ndcg_at_k(recommended: Ranked, relevant: Truth, k: int = 10) -> float:
    """Normalised discounted cumulative gain with binary relevance."""
    users = _users(recommended, relevant)
    if not users:
        return 0.0
    total = 0.0
    for u in users:
        ranked = list(recommended.get(u, []))[:k]
        dcg = sum(1.0 / math.log2(i + 2) for i, item in enumerate(ranked) if item in relevant[u])
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant[u]), k)))
        total += dcg / ideal
    return total / len(users)


def map_at_k(recommended: Ranked, relevant: Truth, k: int = 10) -> float:
    """Mean average precision at k."""
    users = _users(recommended, relevant)
    if not users:
        return 0.0
    total = 0.0
    for u in users:
        hits, precision_sum = 0, 0.0
        for i, item in enumerate(list(recommended.get(u, []))[:k]):
            if item in relevant[u]:
                hits += 1
                precision_sum += hits / (i + 1)
        total += precision_sum / min(len(relevant[u]), k)
    return total / len(users)


def coverage(recommended: Ranked, catalogue: Sequence[str], k: int = 10) -> float:
    """Share of the catalogue that appears in at least one top-k list."""
    if not catalogue:
        return 0.0
    shown = {item for items in recommended.values() for item in list(items)[:k]}
    return len(shown & set(catalogue)) / len(set(catalogue))


def novelty(recommended: Ranked, popularity: Mapping[str, float], k: int = 10) -> float:
    """Mean self-information -log2 p(item) of recommended items, p = share of users who used
    the item in training (unseen items count as seen by one user in a million)."""
    values = [
        -math.log2(max(popularity.get(item, 0.0), 1e-6))
        for items in recommended.values()
        for item in list(items)[:k]
    ]
    return sum(values) / len(values) if values else 0.0

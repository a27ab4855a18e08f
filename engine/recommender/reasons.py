"""The short reason shown beside each recommended item, phrased from what its model says raised
its score (`Scorer.explain`: a history item `item:<id>` or a profile feature such as `sim:loan`).

An item its model cannot attribute gets the reason of its model's name in `UNEXPLAINED`, else
"recommended for you" (or "popular with visitors" when the model saw no history at all).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

VERBS = {
    "item_viewed": "looked at",
    "simulator_used": "simulated",
    "item_purchased": "have",
    "item_added_to_cart": "put",
    "recommendation_clicked": "clicked",
    "item_rated": "rated",
}
"""What the user did to a history item, by the type of their last event on it."""

COUNT_REASONS = {
    "simulator_used": "because you ran a simulation",
    "item_viewed": "because of what you looked at",
    "search_performed": "because of what you searched for",
    "item_added_to_cart": "because of what you applied for",
    "item_purchased": "because of what you have",
}
"""The reason of a `count:<event type>` feature."""

UNEXPLAINED = {
    "popular": "popular right now",
    "popular-segment": "popular with people like you",
    "nbo": "popular with people like you",
}
"""The reason of an item its model does not attribute, by model name."""


class Phrasing:
    """Turns drivers into reasons for one list (the profile's last event per item is looked up
    once, and only if a history item is a driver)."""

    def __init__(self, name: Callable[[str], str], profile: Mapping[str, Any]) -> None:
        self.name = name
        self.profile = profile
        self._last_type: dict[str, str] | None = None

    def similar(self, items: Sequence[str], anchor: str) -> dict[str, str]:
        return {i: f"similar to {self.name(anchor)}" for i in items}

    def reasons(
        self,
        model: str,
        items: Sequence[str],
        drivers: Mapping[str, str],
        history: Mapping[str, float],
    ) -> dict[str, str]:
        """The reason of each of `items`, from its driver if any."""
        default = UNEXPLAINED.get(model) or (
            "recommended for you" if history else "popular with visitors"
        )
        out = {}
        said: dict[str, str | None] = {}  # a driver's phrase, when it does not name the item
        for item in items:
            driver = drivers.get(item)
            if driver is None:
                out[item] = default
                continue
            if driver in said:
                phrase = said[driver]
            else:
                phrase = self.phrase(item, driver)
                if not driver.startswith(("simulated:", "seen:")):
                    said[driver] = phrase
            out[item] = phrase or default
        return out

    def phrase(self, item: str, driver: str) -> str | None:
        """The reason `driver` (`kind:key`) gives for `item`, or None for a kind with none."""
        kind, _, key = driver.partition(":")
        if kind == "item":
            return f"because you {self._verb(key)} {self.name(key)}"
        if kind == "sim":
            return f"because you simulated a {key.replace('_', ' ')}"
        if kind in ("simulated", "seen"):  # the offer itself, or another item
            verb = "simulated" if kind == "simulated" else "looked at"
            return f"because you {verb} {'it' if key == item else self.name(key)}"
        if kind == "cat":
            return f"because you looked at {key.replace('_', ' ')}"
        if kind == "held":
            return f"because you have {self.name(key)}"
        if kind == "count":
            return COUNT_REASONS.get(key)
        return None

    def _verb(self, item: str) -> str:
        if item in self.profile.get("held", {}):
            return "have"
        if self._last_type is None:
            recent = reversed(self.profile.get("recent_items", ()))
            self._last_type = {r["item_id"]: r["type"] for r in recent}
        return VERBS.get(self._last_type.get(item, "")) or "looked at"

"""Every model's report (recommenders and next-best-offer) holds the data range, the metrics
beside the slot's active model on the same split (or says there is none, and why), a learning
curve and the long tail with labelled axes, and the tuning search: read from the parsed HTML."""

from __future__ import annotations

from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS

from engine.bus import Bus
from engine.settings import BrokerSettings
from engine.synth import generate
from nerve_client.events import parse_event
from training import api, load_history


class Report(HTMLParser):
    """The parts of a report a reader looks for: sections, table rows, figures and their axes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}  # element id -> its text
        self.tables: dict[str, list[list[str]]] = {}
        self.figures: list[dict[str, Any]] = []
        self._open: list[tuple[str, str | None, str | None]] = []
        self._text: dict[int, list[str]] = {}
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self._open.append((tag, a.get("id"), a.get("class")))
        self._text[len(self._open)] = []
        if tag == "table":
            self.tables[a.get("class") or ""] = []
        elif tag == "tr" and self.tables:
            list(self.tables.values())[-1].append([])
        elif tag == "figure":
            self.figures.append({"caption": "", "x": "", "y": "", "lines": 0, "ticks": 0})
        elif tag == "polyline":
            self.figures[-1]["lines"] += 1

    def handle_endtag(self, tag: str) -> None:
        depth = len(self._open)
        name, ident, cls = self._open.pop()
        text = " ".join("".join(self._text.pop(depth)).split())
        if self._open:
            self._text[depth - 1].append(text)
        if ident:
            self.ids[ident] = text
        if name in ("td", "th") and self.tables:
            list(self.tables.values())[-1][-1].append(text)
        if name == "figcaption":
            self.figures[-1]["caption"] = text
        if name == "text" and cls in ("x-label", "y-label"):
            self.figures[-1][cls[0]] = text
        if name == "text" and cls in ("x-tick", "y-tick"):
            self.figures[-1]["ticks"] += 1

    def handle_data(self, data: str) -> None:
        if self._open:
            self._text[len(self._open)].append(data)

    def figure(self, caption: str) -> dict[str, Any]:
        return next(f for f in self.figures if f["caption"].startswith(caption))


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    path = tmp_path_factory.mktemp("reports") / "h.jsonl"
    generate(path, users=800, days=20, seed=9, end=datetime(2026, 6, 1, tzinfo=UTC))
    return path.read_bytes().splitlines()


def read(trained: api.Trained) -> Report:
    return Report((trained.folder / "report.html").read_text())


def assert_figures(report: Report, curve_x: str, tail_x: str) -> None:
    curve, tail = report.figure("Learning curve"), report.figure("Long tail")
    assert curve["x"] == curve_x and curve["y"] and curve["lines"] == 1 and curve["ticks"] == 6
    assert tail["x"] == tail_x and "share of" in tail["y"] and tail["lines"] >= 1


async def test_a_recommenders_report_sits_beside_the_active_model_and_shows_the_search(
    fresh: NATS, nats_url: str, tmp_path: Path, lines: list[bytes]
) -> None:
    await Bus(fresh).publish_events([parse_event(orjson.loads(x)) for x in lines])
    frame = load_history("stream", nats_url=nats_url)
    where: dict[str, Any] = {"nats_url": nats_url, "data_dir": tmp_path}
    first = api.train(frame, "itemknn", curve=False, **where)
    assert "No active model: slot similar has no active model" in read(first).ids["active"]
    api.publish(first, **where)
    second = api.train(frame, "ease", tune=True, budget=2, **where)
    report = read(second)
    assert first.version in report.ids["active"]
    rows = {r[0]: r for r in report.tables["metrics"][1:]}
    assert set(rows) == {"ease", "popular", f"active {first.version}"}
    assert (
        second.card["metrics"][f"active {first.version}"]["users"]
        == (
            second.card["metrics"]["ease"]["users"]  # the same split: the same users measured
        )
    )
    slices = {r[0]: r for r in report.tables["slices"][1:]}
    assert {"all data", "training part", "test part", "tuning fit", "tuning validation"} <= set(
        slices
    )
    assert slices["all data"][1] == frame["time"].min().isoformat()
    trials = report.tables["trials"][1:]
    assert len(trials) == 2 and [r[0] for r in trials].count("best") == 1
    assert "random search of 2 settings by ndcg@10" in report.ids["tuning"]
    assert_figures(report, "training events", "item popularity rank (1 = used by most users)")


async def test_next_best_offer_gets_a_report_and_says_when_no_active_model_is_known(
    fresh: NATS, nats_url: str, tmp_path: Path, lines: list[bytes]
) -> None:
    await Bus(fresh).publish_events([parse_event(orjson.loads(x)) for x in lines])
    frame = load_history("stream", nats_url=nats_url)
    away = BrokerSettings(nats_url="nats://127.0.0.1:1", data_dir=tmp_path, connect_timeout=0.5)
    trained = api.train(frame, "nbo", tune=True, budget=2, broker=away)
    report = read(trained)
    assert "No active model: the broker is not reachable" in report.ids["active"]
    rows = {r[0] for r in report.tables["metrics"][1:]}
    assert rows == {"nbo"}
    assert report.tables["metrics"][0][:3] == ["model", "auc", "hit@1"]
    assert len(report.tables["trials"]) == 3 and trained.card["tuning"]["metric"] == "auc"
    slices = {r[0] for r in report.tables["slices"][1:]}
    assert {"all data", "test part", "tuning validation"} <= slices
    assert_figures(
        report, "users the offers were fitted on", "offer popularity rank (1 = most acquired)"
    )

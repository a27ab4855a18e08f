"""The short version of `bench/faults.py`: two kill -9 cycles of the gateway and of the profiles
service under load, one 5 s broker outage, the poison run, and proof that the ledger's audit
finds what it is meant to find (a planted loss, duplicate and stranger).

One rig for the module: its own nats-server (killed and restarted by the outage test, so not the
shared `broker` fixture) and every service as its own `nerve run` process.
"""

from __future__ import annotations

import random
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import faults  # noqa: E402
from bench.audit import audit, violations  # noqa: E402
from bench.ledger import Ledger, make_event  # noqa: E402
from engine.bus import Bus, Outgoing  # noqa: E402
from nerve_client.events import parse_event  # noqa: E402
from nerve_client.ids import uuid7  # noqa: E402

RATE = 100.0  # events/s: the suite shares two cores


@pytest.fixture(scope="module")
async def rig() -> AsyncIterator[faults.Rig]:
    with tempfile.TemporaryDirectory(prefix="nerve-faults-") as work:
        rig = await faults.open_rig(Path(work))
        try:
            yield rig
        finally:
            await faults.close_rig(rig)


@pytest.mark.parametrize("service", ["gateway", "profiles"])
async def test_a_service_killed_twice_under_load_loses_and_duplicates_nothing(
    rig: faults.Rig, service: str
) -> None:
    figures = await faults.service_kills(rig, service, 2, RATE, random.Random(7), patience=60)
    assert figures["violations"] == [], figures
    assert figures["acked"] == figures["attempted"] > RATE * 3
    assert rig.services[service].starts >= 3
    if service == "gateway":  # its clients saw it die, and re-sent
        assert figures["answers"].get("refused", 0) + figures["answers"].get("reset", 0) > 0
        assert figures["resent"] > 0


async def test_a_broker_outage_answers_only_202_or_503_and_resumes_within_10_s(
    rig: faults.Rig,
) -> None:
    figures = await faults.broker_outages(rig, [5.0], RATE, up_s=3.0, patience=60)
    (outage,) = figures["outages"]
    assert figures["violations"] == [], figures
    assert set(outage["answers"]) <= faults.ALLOWED
    assert outage["resume_s"] is not None and outage["resume_s"] <= 10.0
    assert figures["lost"] == figures["duplicated"] == 0 and figures["acked"] > 0


async def test_poison_messages_are_deadlettered_and_the_stream_moves_on(rig: faults.Rig) -> None:
    figures = await faults.poison_run.run(rig.nc, timeout=20)
    assert figures["violations"] == [], figures
    assert {r["kind"] for r in figures["poison"]} == {
        "json array",
        "json string",
        "not json",
        "other user",
    }
    assert all(r["reason"] for r in figures["poison"])
    assert figures["profiles_updated"] == figures["lists_published"] == figures["valid_users"]


async def test_the_audit_finds_a_planted_loss_duplicate_and_stranger(rig: faults.Rig) -> None:
    """The invariants can fail: an acked event never stored, one stored twice, one stored that
    nobody attempted, and one stored without a 202 (allowed, and counted)."""
    ledger = Ledger()
    lost, twice, quiet, stranger = (make_event(i, 10, "planted") for i in range(4))
    for body in (lost, twice, quiet):
        ledger.new(body).attempts = 1
    for body in (lost, twice):
        ledger.entries[body["id"]].acked_at = 1.0
    bus = Bus(rig.nc)
    for body in (twice, quiet, stranger):
        await bus.publish([Outgoing.event(parse_event(body))])
    again = parse_event(twice)  # the same event under another message id: dedupe cannot help
    await bus.publish([Outgoing(again.subject, again.to_json(), uuid7())])
    figures = await audit(rig.nc, ledger, "planted", rig.warehouse, patience=30)
    assert (figures["lost"], figures["duplicated"], figures["unexpected"]) == (1, 1, 1)
    assert (figures["never_acked"], figures["never_acked_stored"]) == (1, 1)
    assert {"lost=1", "duplicated=1", "unexpected=1"} <= set(violations(figures))


def test_bad_usage_exits_2() -> None:
    with pytest.raises(SystemExit) as exc:
        faults.main(["--scenarios", "kills,floods"])
    assert exc.value.code == 2

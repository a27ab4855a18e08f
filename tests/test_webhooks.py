"""Webhooks (issue 16 item 11): interest signals POSTed, signed, to real HTTP receivers.

Before: a CRM that does not speak NATS could not receive a signal at all. Each test runs a
real receiver (FastAPI under uvicorn on a loopback port) that verifies the signature itself,
and the webhooks service on its own broker credential against the real nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from fastapi import FastAPI, Request, Response
from nats.aio.client import Client as NATS
from rich.cells import cell_len
from typer.testing import CliRunner

from engine import credstore
from engine.broker import EmbeddedBroker
from engine.bus import Bus, Outgoing
from engine.bus.reader import read_all
from engine.services.webhooks import WebhookService
from engine.webhooks import DeliveryOptions, Subscription, WebhookStore, verify
from engine.webhooks.signing import BadSignature
from engine.webhooks.subscriptions import subscribe
from nerve_client.errors import ConfigError
from nerve_client.events import DeadLetter, parse_event
from nerve_client.subjects import DEADLETTER, anomaly_subject, signal_subject, user_token
from tests.conftest import event as make_event
from tests.conftest import serving

SECRET = "whsec_test-secret-0123456789"
FAST = DeliveryOptions(attempts=3, backoff_s=0.05, max_backoff_s=0.2, refresh_s=0.1)
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Hit:
    signal_id: str
    attempt: int
    body: bytes
    verified: bool


@dataclass
class Receiver:
    """A webhook receiver: verifies each request's signature, answers `status` to the first
    `failures` requests (forever with -1), and 204 after that. With `hold` set, the first
    request waits for it before answering (a POST in flight when the service dies)."""

    secret: str = SECRET
    failures: int = 0
    status: int = 500
    hold: asyncio.Event | None = None
    hits: list[Hit] = field(default_factory=list)
    arrived: asyncio.Queue[Hit] = field(default_factory=asyncio.Queue)

    def app(self) -> FastAPI:
        api = FastAPI()

        @api.post("/hook")
        async def hook(request: Request) -> Response:
            body = await request.body()
            try:
                verify(self.secret, request.headers["nerve-signature"], body)
                verified = True
            except (BadSignature, KeyError):
                verified = False
            hit = Hit(
                request.headers["nerve-signal-id"],
                int(request.headers["nerve-delivery-attempt"]),
                body,
                verified,
            )
            self.hits.append(hit)
            self.arrived.put_nowait(hit)
            if self.hold is not None and len(self.hits) == 1:
                await self.hold.wait()
            if self.failures != 0:
                self.failures -= 1
                return Response(status_code=self.status)
            return Response(status_code=204)

        return api

    async def next(self) -> Hit:
        return await asyncio.wait_for(self.arrived.get(), 30)


@contextlib.asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[str]:
    try:
        async with serving(receiver.app()) as url:
            yield url + "/hook"
    finally:
        if receiver.hold is not None:
            receiver.hold.set()


async def service_bus(broker: EmbeddedBroker) -> Bus:
    """A `Bus` as the `webhooks` component: the service's own, least-privilege credential."""
    assert broker.url is not None
    cred = credstore.component(broker.data_dir, "webhooks")
    return await Bus.connect(broker.url, "nerve-webhooks", timeout=5, credential=cred)


@contextlib.asynccontextmanager
async def running(
    broker: EmbeddedBroker, options: DeliveryOptions = FAST, ack_wait: float = 30.0
) -> AsyncIterator[WebhookService]:
    bus = await service_bus(broker)
    service = WebhookService(bus, options, ack_wait=ack_wait)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await until(lambda: done(service.ready.is_set()))
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await bus.close()


async def done(value: bool) -> bool:
    return value


async def until(check: Callable[[], Awaitable[bool]], tries: int = 600) -> None:
    """Wait until `check()` holds (a guard against hanging, not a timing assertion)."""
    for _ in range(tries):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the condition never held")


async def workers_for(service: WebhookService, n: int) -> None:
    await until(lambda: done(len(service.workers) == n))


async def publish_signal(bus: Bus, user: str, topic: str = "loan") -> tuple[str, bytes]:
    """Store an interest_signal on `signals.<topic>.<user>`: its id and stored bytes."""
    base = make_event("interest_signal", user_id=user, source="signals")
    base["properties"] = {**base["properties"], "topic": topic}
    e = parse_event(base)
    payload = e.to_json()
    await bus.publish([Outgoing(signal_subject(topic, user_token(user)), payload, e.id)])
    return e.id, payload


async def publish_anomaly(bus: Bus, user: str, detector: str = "bursts") -> str:
    """Store an anomaly_detected on `anomalies.<detector>.<user>`: its id."""
    base = make_event("anomaly_detected", user_id=user, source="anomalies")
    base["properties"] = {**base["properties"], "detector": detector}
    e = parse_event(base)
    await bus.publish([Outgoing(anomaly_subject(detector, user_token(user)), e.to_json(), e.id)])
    return e.id


async def deadletters(nc: NATS) -> list[DeadLetter]:
    rows = await read_all(nc.jetstream(), DEADLETTER)
    return [DeadLetter.model_validate_json(d) for _, _, d in rows]


async def test_a_signal_is_posted_signed_with_its_id_and_nothing_stored_before_is_sent(
    fresh: NATS, broker: EmbeddedBroker
) -> None:
    admin = Bus(fresh)
    old_id, _ = await publish_signal(admin, "before")
    receiver = Receiver()
    async with receiving(receiver) as url, running(broker) as service:
        sub = await subscribe(admin, url, topic="loan", secret=SECRET)
        await workers_for(service, 1)
        signal_id, payload = await publish_signal(admin, "ada")
        hit = await receiver.next()
        assert hit.verified and hit.signal_id == signal_id and hit.attempt == 1
        assert hit.body == payload  # the stored event, byte for byte
        assert orjson.loads(hit.body)["type"] == "interest_signal"
        with pytest.raises(BadSignature):
            verify("whsec_another-secret-000000", f"t=1,v1={'0' * 64}", hit.body, now=1)
        await until(lambda: done(service.stats.skipped == 1))
    assert [h.signal_id for h in receiver.hits] == [signal_id]  # not old_id: before `add`
    assert old_id != signal_id and sub.start_seq == 2


async def test_a_topic_subscription_receives_only_its_topic_and_one_without_gets_all(
    fresh: NATS, broker: EmbeddedBroker
) -> None:
    admin = Bus(fresh)
    loans, everything = Receiver(), Receiver()
    async with (
        receiving(loans) as loan_url,
        receiving(everything) as all_url,
        running(broker) as service,
    ):
        await subscribe(admin, loan_url, topic="loan", secret=SECRET)
        await subscribe(admin, all_url, secret=SECRET)
        await workers_for(service, 2)
        card_id, _ = await publish_signal(admin, "ada", topic="card")
        loan_id, _ = await publish_signal(admin, "ada", topic="loan")
        assert {(await everything.next()).signal_id for _ in range(2)} == {card_id, loan_id}
        assert (await loans.next()).signal_id == loan_id  # the card signal came first: skipped
    assert [h.signal_id for h in loans.hits] == [loan_id]


async def test_a_receiver_that_fails_twice_gets_the_signal_again_with_the_same_id(
    fresh: NATS, broker: EmbeddedBroker
) -> None:
    admin = Bus(fresh)
    receiver = Receiver(failures=2, status=503)
    async with receiving(receiver) as url, running(broker) as service:
        await subscribe(admin, url, secret=SECRET)
        await workers_for(service, 1)
        signal_id, _ = await publish_signal(admin, "ada")
        hits = [await receiver.next() for _ in range(3)]
        await until(lambda: done(service.stats.delivered == 1))
    assert [(h.signal_id, h.attempt, h.verified) for h in hits] == [
        (signal_id, 1, True),
        (signal_id, 2, True),
        (signal_id, 3, True),
    ]
    assert service.stats.retried == 2 and await deadletters(fresh) == []


async def test_a_receiver_that_always_fails_gets_its_signal_dead_lettered_with_the_reason(
    fresh: NATS, broker: EmbeddedBroker
) -> None:
    admin = Bus(fresh)
    receiver = Receiver(failures=-1, status=500)
    async with receiving(receiver) as url, running(broker) as service:
        sub = await subscribe(admin, url, secret=SECRET)
        await workers_for(service, 1)
        signal_id, payload = await publish_signal(admin, "ada")
        await until(lambda: done(service.stats.deadlettered == 1))
        consumer = service.consumer(sub)
        await until(lambda: _zero(consumer.backlog()))  # acknowledged once dead-lettered
    (record,) = await deadletters(fresh)
    assert record.source == "webhooks" and record.event_id == signal_id
    assert f"webhook {sub.id}" in record.reason
    assert "gave up after 3 attempts; last: HTTP 500" in record.reason
    assert record.raw == payload
    assert [h.attempt for h in receiver.hits] == [1, 2, 3]


async def _zero(backlog: Awaitable[int]) -> bool:
    return await backlog == 0


KILLABLE = """
import asyncio, sys
from pathlib import Path
from engine.bus import Bus
from engine.credentials import Credential
from engine.services.webhooks import WebhookService
from engine.webhooks import DeliveryOptions

async def main() -> None:
    cred = Credential.load(Path(sys.argv[2]))
    bus = await Bus.connect(sys.argv[1], "nerve-webhooks", timeout=5, credential=cred)
    options = DeliveryOptions.model_validate_json(sys.argv[3])
    await WebhookService(bus, options, ack_wait=float(sys.argv[4])).run(asyncio.Event())

asyncio.run(main())
"""


async def test_a_service_killed_mid_post_delivers_again_after_a_restart(
    fresh: NATS, broker: EmbeddedBroker
) -> None:
    """At least once: the POST in flight when the process died was never acknowledged, so the
    next process delivers it again (attempt 2, same id), and the signal stored while no
    service ran is delivered too."""
    assert broker.url is not None
    admin = Bus(fresh)
    receiver = Receiver(hold=asyncio.Event())
    options = FAST.model_copy(update={"timeout_s": 0.3})
    async with receiving(receiver) as url:
        sub = await subscribe(admin, url, secret=SECRET)
        cred = credstore.path_of(broker.data_dir, "webhooks")
        args = [broker.url, str(cred), options.model_dump_json(), "1.0"]
        proc = subprocess.Popen([sys.executable, "-c", KILLABLE, *args], cwd=ROOT)
        try:
            first_id, _ = await publish_signal(admin, "ada")
            first = await receiver.next()  # in flight: the receiver holds its answer
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        receiver.hold.set()  # type: ignore[union-attr]
        second_id, _ = await publish_signal(admin, "bob")
        async with running(broker, options, ack_wait=1.0) as service:
            got = {(await receiver.next()).signal_id for _ in range(2)}
            await until(lambda: done(service.stats.delivered == 2))
            await until(lambda: _zero(service.consumer(sub).backlog()))
    assert first.signal_id == first_id and first.attempt == 1
    assert got == {first_id, second_id}
    again = [h for h in receiver.hits[1:] if h.signal_id == first_id]
    assert [h.attempt for h in again] == [2] and again[0].verified


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://crm.example/x", "gopher://x"])
async def test_non_http_urls_are_refused(fresh: NATS, url: str) -> None:
    with pytest.raises(ConfigError, match="URL: only http and https"):
        await subscribe(Bus(fresh), url)
    with pytest.raises(ValueError, match="only http and https"):
        Subscription.model_validate(
            {"id": "wh_" + "0" * 16, "url": url, "secret": SECRET, "created_at": "2026-01-01Z"}
        )


async def test_the_webhooks_credential_reads_signals_but_may_not_publish_or_read_activity(
    fresh: NATS, broker: EmbeddedBroker
) -> None:
    bus = await service_bus(broker)
    try:
        with pytest.raises(Exception):  # noqa: B017 - the server refuses: a timeout or an error
            await bus.publish([Outgoing(signal_subject("loan", "ada"), b"{}", "forged-1")])
        with pytest.raises(Exception):  # noqa: B017
            await bus.last_messages("ACTIVITY", 1)
        assert await bus.last_messages("SIGNALS", 1) == (0, [])
    finally:
        await bus.close()
    assert await read_all(fresh.jetstream(), "SIGNALS") == []


def cli(nats_url: str, *args: str) -> str:
    import engine.cli.webhooks  # noqa: F401  (registers `nerve webhooks` until cli/__init__ does)
    from engine.cli import app

    result = CliRunner().invoke(app, ["--nats-url", nats_url, "webhooks", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_cli_adds_lists_masked_and_removes_subscriptions(nats_url: str) -> None:
    added = cli(nats_url, "add", "https://crm.example/hooks", "--topic", "loan", "--json")
    info = orjson.loads(added)
    secret = info["secret"]
    assert secret.startswith("whsec_") and len(secret) > 30 and info["topic"] == "loan"
    listed = orjson.loads(cli(nats_url, "list", "--json"))
    mine = next(s for s in listed if s["id"] == info["id"])
    assert mine["url"] == "https://crm.example/hooks" and mine["topic"] == "loan"
    assert secret not in cli(nats_url, "list", "--json") and secret not in cli(nats_url, "list")
    assert mine["secret"].endswith(secret[-4:]) and "…" in mine["secret"]
    cli(nats_url, "remove", info["id"])
    assert info["id"] not in cli(nats_url, "list", "--json")


async def test_two_adds_at_once_keep_both_subscriptions(fresh: NATS) -> None:
    admin = Bus(fresh)
    urls = [f"https://crm.example/{i}" for i in range(8)]
    await asyncio.gather(*(subscribe(admin, u) for u in urls))
    subs, _ = await (await WebhookStore.open(admin)).load()
    assert sorted(s.url for s in subs) == sorted(urls)


def nerve(nats_url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`nerve webhooks ARGS` as a user runs it, in an 80-column terminal (COLUMNS=80), with
    none of the caller's NERVE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NERVE_")}
    pre = ["--nats-url", nats_url, "--data-dir", str(data_dir)]
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *pre, "webhooks", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**env, "COLUMNS": "80"},
    )


def test_the_list_in_80_columns_keeps_every_id_whole_so_remove_can_take_it(
    fresh: NATS, nats_url: str, tmp_path: Path
) -> None:
    """Before: the id column was cut (`wh_cd05b8e1…`) and the URL kept whole."""
    long_url = "https://crm.example.com/hooks/nerve/receiver-with-a-long-path/v2?tenant=bank"
    for url in (long_url, "https://x.io/h"):
        assert nerve(nats_url, tmp_path, "add", url, "--topic", "loan").returncode == 0
    listed = nerve(nats_url, tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines and max(cell_len(line) for line in lines) <= 80, listed.stdout
    ids = {s["id"] for s in orjson.loads(nerve(nats_url, tmp_path, "list", "--json").stdout)}
    assert set(re.findall(r"wh_[0-9a-f]{16}", listed.stdout)) == ids and len(ids) == 2
    assert long_url not in listed.stdout and "https://crm.example.com/" in listed.stdout
    assert "…" in listed.stdout and "https://x.io/h" in listed.stdout
    for sub_id in re.findall(r"wh_[0-9a-f]{16}", listed.stdout):
        removed = nerve(nats_url, tmp_path, "remove", sub_id)
        assert removed.returncode == 0, removed.stderr
    assert "no webhook subscriptions" in nerve(nats_url, tmp_path, "list").stdout


CARDS_SLOTS = """
[slots.home]
k = 3

[signals.cards]
window_days = 7
cooldown_days = 14
[[signals.cards.conditions]]
type = "item_viewed"
category = ["cards"]
min_count = 1
"""


async def test_an_anomalies_subscription_gets_anomalies_of_its_detector_and_no_signal(
    fresh: NATS, broker: EmbeddedBroker
) -> None:
    admin = Bus(fresh)
    receiver = Receiver()
    async with receiving(receiver) as url, running(broker) as service:
        await subscribe(admin, url, topic="bursts", secret=SECRET, feed="anomalies")
        await workers_for(service, 1)
        await publish_signal(admin, "ada")
        await publish_anomaly(admin, "ada", detector="amounts")
        wanted = await publish_anomaly(admin, "ada")
        hit = await receiver.next()
        assert hit.verified and hit.signal_id == wanted
        assert orjson.loads(hit.body)["type"] == "anomaly_detected"
    assert [h.signal_id for h in receiver.hits] == [wanted]


def test_the_cli_checks_an_anomalies_topic_against_the_detectors(
    fresh: NATS, nats_url: str, tmp_path: Path
) -> None:
    feed = ("--feed", "anomalies")
    ok = nerve(nats_url, tmp_path, "add", "https://crm.example/a", "--topic", "bursts", *feed)
    assert ok.returncode == 0, ok.stderr
    bad = nerve(nats_url, tmp_path, "add", "https://crm.example/b", "--topic", "loan", *feed)
    assert bad.returncode == 2 and "no [anomalies.loan]" in bad.stderr and "bursts" in bad.stderr
    odd = nerve(nats_url, tmp_path, "add", "https://crm.example/c", "--feed", "weather")
    assert odd.returncode == 2 and "--feed: one of signals, anomalies" in odd.stderr


def test_a_topic_the_signals_service_does_not_detect_is_refused_naming_those_it_does(
    fresh: NATS, nats_url: str, tmp_path: Path
) -> None:
    """Before: `add --topic nosuchtopic` was stored, and would never receive a signal."""
    refused = nerve(nats_url, tmp_path, "add", "https://crm.example/a", "--topic", "nosuchtopic")
    assert refused.returncode == 2 and refused.stdout == "", refused.stdout
    (line,) = refused.stderr.splitlines()  # one line, no traceback
    assert "--topic" in line and "[signals.nosuchtopic]" in line and "default_slots.toml" in line
    assert "investment, loan, mortgage" in line  # the shipped file's topics
    slots = tmp_path / "cards.toml"
    slots.write_text(CARDS_SLOTS)
    config = ("--config", str(slots))
    wrong = nerve(nats_url, tmp_path, "add", "https://crm.example/b", "--topic", "loan", *config)
    assert wrong.returncode == 2 and "(there: cards)" in wrong.stderr, wrong.stderr
    assert nerve(nats_url, tmp_path, "list", "--json").stdout.strip() == "[]"  # none stored
    added = nerve(nats_url, tmp_path, "add", "https://crm.example/c", "--topic", "cards", *config)
    assert added.returncode == 0, added.stderr
    (tmp_path / "slots.toml").write_text(CARDS_SLOTS)  # the data dir's, as the service reads it
    again = nerve(nats_url, tmp_path, "add", "https://crm.example/d", "--topic", "cards")
    assert again.returncode == 0, again.stderr
    anything = nerve(nats_url, tmp_path, "add", "https://crm.example/e")  # no topic: all of them
    assert anything.returncode == 0, anything.stderr
    listed = orjson.loads(nerve(nats_url, tmp_path, "list", "--json").stdout)
    assert sorted((s["url"][-1], s["topic"]) for s in listed) == [
        ("c", "cards"),
        ("d", "cards"),
        ("e", "*"),
    ]

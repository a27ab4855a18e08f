"""The embedded broker is authenticated and least-privilege (issue 12, finding 1).

Before: a process with no credential could read every user's activity and the profile keys,
delete SIGNALS and publish a fake list on `reco.<user>.home`. Each test below connects to the
real embedded nats-server as an anonymous client, a wrong password, or one role, and checks
what the server lets it do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client as NATS

from engine import credentials, credstore
from engine.broker import EmbeddedBroker, reload
from engine.bus import AuthRefused, Bus, accepts, connect
from engine.gateway import SITE_KEY_HEADER
from engine.profiles.store import ProfileStore
from engine.runner import run_services
from engine.settings import BrokerSettings, GatewaySettings, SiteKey
from nerve_client.client import CrmContact, InterestSignal, NerveClient
from nerve_client.credentials import Credential, auth_options
from nerve_client.errors import BrokerUnavailable
from nerve_client.events import parse_event
from nerve_client.subjects import RECOMMENDATIONS, reco_subject, signal_subject, user_token
from tests.conftest import count
from tests.conftest import event as make_event
from tests.reco_world import publish_world


async def issue(broker: EmbeddedBroker, name: str, role: str) -> Credential:
    """Issue `name` and reload the running server, as `nerve credentials add` does."""
    path = credstore.issue(broker.data_dir, name, role)
    reload(broker.data_dir)
    cred = Credential.load(path)
    assert broker.url is not None
    for _ in range(100):
        if await accepts(broker.url, cred, timeout=1.0):
            return cred
        await asyncio.sleep(0.05)
    raise AssertionError(f"the server never accepted {name}")


@contextlib.asynccontextmanager
async def as_user(
    broker: EmbeddedBroker, cred: Credential
) -> AsyncIterator[tuple[NATS, list[str]]]:
    """A raw connection as `cred`, and the asynchronous errors the server sent it."""
    errors: list[str] = []
    assert broker.url is not None

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    nc = await nats.connect(
        broker.url, error_cb=on_error, max_reconnect_attempts=0, **auth_options(cred, None)
    )
    try:
        yield nc, errors
    finally:
        await nc.close()


async def refused(errors: list[str], subject: str) -> None:
    """Wait until the server reported a permissions violation naming `subject`."""
    for _ in range(100):
        if any("permissions violation" in e and subject.lower() in e for e in errors):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no permissions violation for {subject}: {errors}")


async def first_signal(client: NerveClient) -> InterestSignal:
    async for got in client.interest_signals(durable="crm-test"):
        return got
    raise AssertionError("the signals ended")


async def test_anonymous_and_wrong_password_are_refused(broker: EmbeddedBroker) -> None:
    assert broker.url is not None
    with pytest.raises(AuthRefused, match="Authorization Violation"):
        await connect(broker.url, "anonymous", timeout=5)
    admin = credstore.component(broker.data_dir, "admin")
    wrong = Credential(user="admin", password=f"{admin.password}x")
    with pytest.raises(AuthRefused, match="refused the connection: admin"):
        await connect(broker.url, "guess", timeout=5, credential=wrong)
    nc = await connect(broker.url, "admin", timeout=5, credential=admin)
    await nc.close()


def test_credentials_are_private_files_and_every_user_has_allow_lists(
    broker: EmbeddedBroker,
) -> None:
    d = credstore.directory(broker.data_dir)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    files = sorted(d.iterdir())
    assert {p.stem for p in files} >= set(credentials.COMPONENTS)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    server_conf = (broker.data_dir / "nats-server.conf").read_text()
    auth = (d / credstore.AUTH_CONF).read_text()
    admin = credstore.component(broker.data_dir, "admin")
    assert admin.password and admin.password in auth and admin.password not in server_conf
    users = [line for line in auth.splitlines() if "user:" in line]
    assert len(users) >= len(credentials.COMPONENTS)
    assert all("publish: {allow:" in u and "subscribe: {allow:" in u for u in users)


async def test_crm_may_publish_crm_and_consume_signals_and_nothing_else(
    fresh: NATS, broker: EmbeddedBroker
) -> None:
    admin = Bus(fresh)
    userkeys = await admin.kv("userkeys")
    await userkeys.put("some-user", b"a profile key")
    cred = await issue(broker, "crm-test", "crm")
    assert broker.url is not None
    # allowed: publish a CRM event, consume a signal
    signal_event = parse_event(make_event("interest_signal", user_id="ada"))
    await admin.publish_if_last(
        signal_subject("loan", user_token("ada")), signal_event.to_json(), signal_event.id, 0
    )
    client = await NerveClient.connect(
        broker.url, credentials=credstore.path_of(broker.data_dir, "crm-test")
    )
    try:
        got = await asyncio.wait_for(first_signal(client), 10)
        assert got.id == signal_event.id
        contact = CrmContact(
            user_id="ada", offer="loan-personal", channel="phone", outcome="declined"
        )
        await client.publish(contact)
    finally:
        await client.close()
    assert await count(fresh, "CRM") == 1
    # refused: a fake list, reading ACTIVITY, deleting a stream, reading the profile keys
    async with as_user(broker, cred) as (nc, errors):
        await nc.publish(reco_subject("ada", "home"), b'{"phishing": true}')
        await refused(errors, reco_subject("ada", "home"))
        js = nc.jetstream(timeout=1.0)
        with pytest.raises(Exception):  # noqa: B017 - nats-py answers a refusal with a timeout
            await js.stream_info("ACTIVITY")
        await refused(errors, "$JS.API.STREAM.INFO.ACTIVITY")
        with pytest.raises(Exception):  # noqa: B017
            await js.delete_stream("SIGNALS")
        await refused(errors, "$JS.API.STREAM.DELETE.SIGNALS")
        with pytest.raises(Exception):  # noqa: B017
            await js.get_msg("KV_userkeys", subject="$KV.userkeys.some-user", direct=True)
        await refused(errors, "$JS.API.DIRECT.GET.KV_userkeys")
        sub = await nc.subscribe("activity.>")
        await refused(errors, "activity.>")
        await sub.unsubscribe()
    assert await count(fresh, RECOMMENDATIONS) == 0
    assert await count(fresh, "SIGNALS") == 1


async def test_gateway_cannot_delete_streams_read_profile_keys_or_others_replies(
    fresh: NATS, broker: EmbeddedBroker
) -> None:
    await (await Bus(fresh).kv("userkeys")).put("some-user", b"a profile key")
    cred = credstore.component(broker.data_dir, "gateway")
    async with as_user(broker, cred) as (nc, errors):
        js = nc.jetstream(timeout=1.0)
        ack = await js.publish(f"activity.{user_token(None, 'v1')}.page_viewed", b"{}")
        assert ack.stream == "ACTIVITY"  # the gateway's own job works
        with pytest.raises(Exception):  # noqa: B017
            await js.delete_stream("ACTIVITY")
        await refused(errors, "$JS.API.STREAM.DELETE.ACTIVITY")
        with pytest.raises(Exception):  # noqa: B017
            await js.get_msg("KV_userkeys", subject="$KV.userkeys.some-user", direct=True)
        await refused(errors, "$JS.API.DIRECT.GET.KV_userkeys")
        with pytest.raises(Exception):  # noqa: B017
            await js.add_consumer("KV_userkeys")
        sub = await nc.subscribe("_INBOX_recommender.>")
        await refused(errors, "_INBOX_recommender.>")
        await sub.unsubscribe()
    assert await count(fresh, "ACTIVITY") == 1


def nerve(data_dir: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_a_revoked_credential_is_refused_without_a_restart(broker: EmbeddedBroker) -> None:
    assert broker.url is not None
    issued = json.loads(
        nerve(broker.data_dir, "credentials", "add", "ext-reader", "--role", "reader", "--json")
    )
    assert issued["user"] == "ext-reader" and issued["reloaded"] is True
    cred = Credential.load(Path(issued["file"]))
    assert cred.role == "reader" and cred.inbox_prefix == "_INBOX_ext-reader"
    listed = json.loads(nerve(broker.data_dir, "credentials", "list", "--json"))
    assert {"name": "ext-reader", "role": "reader", "kind": "issued"}.items() <= next(
        r for r in listed if r["name"] == "ext-reader"
    ).items()
    pid = broker.pid
    async with as_user(broker, cred) as (nc, _errors):
        assert nc.is_connected
        nerve(broker.data_dir, "credentials", "revoke", "ext-reader")
        for _ in range(100):  # the server drops the connection of a user it no longer has
            if not nc.is_connected:
                break
            await asyncio.sleep(0.05)
        assert not nc.is_connected
    assert not await accepts(broker.url, cred)
    assert broker.pid == pid and broker._proc is not None and broker._proc.poll() is None


SLICE_TOKEN = "slice-internal-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def consumers_exist(nc: NATS, *names: str) -> None:
    """Wait until the services created their consumers on ACTIVITY (the recommender's starts
    with new events, so an event sent before it exists would not be recomputed)."""
    js = nc.jetstream()
    for _ in range(400):
        found = {c.name for c in await js.consumers_info("ACTIVITY")}
        if set(names) <= found:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"consumers {names} never appeared: {found}")


async def test_the_slice_runs_with_one_credential_per_service(
    fresh: NATS, broker: EmbeddedBroker
) -> None:
    """Every service under `run_services`, each on its own credential:
    an event posted over HTTP becomes a profile and a list, and the server logged no
    permission the services lacked."""
    await publish_world(fresh)
    log = broker.data_dir / "nats-server.log"
    start = log.stat().st_size
    port = free_port()
    gateway = GatewaySettings(
        port=port, site_keys=(SiteKey(key="slice-site-key"),), internal_tokens=(SLICE_TOKEN,)
    )
    settings = BrokerSettings(data_dir=broker.data_dir)  # no URL: the embedded broker's
    names = ("profiles", "recommender", "gateway", "signals", "warehouse", "ops")
    services = asyncio.create_task(run_services(broker.admin_url, names, settings, gateway=gateway))
    token = user_token(None, "slice-visitor")
    body: dict[str, Any] = make_event(
        "item_viewed", user_id=None, anonymous_id="slice-visitor", item_id="loan-personal"
    )
    try:
        await consumers_exist(fresh, "profiles", "recommender-p00")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            r = await http.post(
                "/v1/events", json=body, headers={SITE_KEY_HEADER: "slice-site-key"}
            )
            assert r.status_code == 202, r.text
            for _ in range(200):  # the ops service starts after the gateway: 503 until then
                ops = await http.get(
                    "/ops/state", headers={"Authorization": f"Bearer {SLICE_TOKEN}"}
                )
                if ops.status_code != 503:
                    break
                await asyncio.sleep(0.05)
            assert ops.status_code == 200, ops.text
            assert not ops.json()["problems"]  # the ops service reads what the gateway may not
        admin = Bus(fresh)
        store = await ProfileStore.open(admin)
        for _ in range(200):
            listed = await admin.last(RECOMMENDATIONS, reco_subject(token, "home"))
            profile = await store.read(token)
            if listed and profile:
                break
            await asyncio.sleep(0.05)
        assert listed is not None and profile is not None
        assert profile["anonymous_id"] == "slice-visitor"
    finally:
        if not services.done():
            try:
                signal.raise_signal(signal.SIGINT)  # the runner's own handler stops the services
            except KeyboardInterrupt:  # failed before the runner set its handler
                services.cancel()
    assert await asyncio.wait_for(services, 20) == signal.SIGINT
    text = log.read_bytes()[start:].decode(errors="replace")
    assert "Violation" not in text, [line for line in text.splitlines() if "Violation" in line]


async def test_stats_and_experiments_are_read_by_the_ops_service_not_the_gateway(
    fresh: NATS, broker: EmbeddedBroker
) -> None:
    """`/v1/stats` and `/v1/experiments` with one credential per service: the gateway asks the
    ops service, which scans ACTIVITY, the lists and the registry; both answer 200 with what
    was stored, and the server logged no permission the gateway or ops lacked."""
    from engine.experiments import spec
    from tests.test_experiments import publish_challenger

    await publish_world(fresh)
    registry = await Bus(fresh).registry()
    started = await spec.start(registry, "trending", await publish_challenger(fresh), 10)
    log = broker.data_dir / "nats-server.log"
    start = log.stat().st_size
    port = free_port()
    gateway = GatewaySettings(
        port=port, site_keys=(SiteKey(key="slice-site-key"),), internal_tokens=(SLICE_TOKEN,)
    )
    settings = BrokerSettings(data_dir=broker.data_dir)
    names = ("gateway", "ops")
    services = asyncio.create_task(run_services(broker.admin_url, names, settings, gateway=gateway))
    shown = make_event(
        "recommendation_shown",
        user_id=None,
        anonymous_id="stats-visitor",
        properties={
            "recommendation_id": "r-stats-1",
            "slot": "home",
            "items": [{"item_id": "loan-personal", "position": 0}],
        },
    )
    internal = {"Authorization": f"Bearer {SLICE_TOKEN}"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/healthz")).status_code in (200, 503):
                        break
                await asyncio.sleep(0.05)
            site = {SITE_KEY_HEADER: "slice-site-key"}
            r = await http.post("/v1/events", json=shown, headers=site)
            assert r.status_code == 202, r.text
            for _ in range(200):  # the ops service starts after the gateway: 503 until then
                stats = await http.get("/v1/stats?hours=1", headers=internal)
                if stats.status_code != 503:
                    break
                await asyncio.sleep(0.05)
            assert stats.status_code == 200, stats.text
            rows = {(x["slot"], x["model_version"]): x for x in stats.json()["rows"]}
            assert rows[("home", "unknown")]["impressions"] == 1
            found = await http.get("/v1/experiments", headers=internal)
            assert found.status_code == 200, found.text
            (report,) = found.json()["experiments"]
            assert report["experiment"]["id"] == started.id
            bad = await http.get("/v1/stats?hours=0", headers=internal)
            assert bad.status_code == 422
    finally:
        if not services.done():
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:  # failed before the runner set its handler
                services.cancel()
    assert await asyncio.wait_for(services, 20) == signal.SIGINT
    text = log.read_bytes()[start:].decode(errors="replace")
    assert "Violation" not in text, [line for line in text.splitlines() if "Violation" in line]


async def test_the_gateway_answers_503_for_the_reports_when_no_ops_service_runs(
    fresh: NATS, nats_url: str
) -> None:
    from engine.gateway import create_app

    app = create_app(GatewaySettings(internal_tokens=(SLICE_TOKEN,)), nats_url, 5)
    internal = {"Authorization": f"Bearer {SLICE_TOKEN}"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            for route in ("/v1/stats", "/v1/experiments"):
                r = await http.get(route, headers=internal)
                assert r.status_code == 503 and "ops service" in r.json()["detail"], r.text


async def test_ops_may_read_the_console_and_the_reports_and_no_crm_or_profile(
    fresh: NATS, broker: EmbeddedBroker
) -> None:
    """The ops service's credential: what the console shows and the reports count (the log,
    the lists, the registry), no CRM, no profile, no publishing (it answers on its own
    inbox)."""
    admin = Bus(fresh)
    await (await admin.kv("userkeys")).put("some-user", b"a profile key")
    async with as_user(broker, credstore.component(broker.data_dir, "ops")) as (nc, errors):
        js = nc.jetstream(timeout=1.0)
        assert {s.config.name for s in await js.streams_info()} >= {"ACTIVITY", "DEADLETTER"}
        assert await js.consumers_info("ACTIVITY") is not None
        assert (await js.stream_info("DEADLETTER")).config.name == "DEADLETTER"
        for readable in ("ACTIVITY", "RECOMMENDATIONS", "SHADOW", "KV_registry"):
            assert (await js.stream_info(readable)).config.name == readable
        with pytest.raises(Exception):  # noqa: B017 - nats-py answers a refusal with a timeout
            await js.get_msg("CRM", seq=1, direct=True)
        await refused(errors, "$JS.API.DIRECT.GET.CRM")
        with pytest.raises(Exception):  # noqa: B017
            await js.stream_info("CRM")
        await refused(errors, "$JS.API.STREAM.INFO.CRM")
        with pytest.raises(Exception):  # noqa: B017
            await js.get_msg("KV_userkeys", subject="$KV.userkeys.some-user", direct=True)
        await refused(errors, "$JS.API.DIRECT.GET.KV_userkeys")
        await nc.publish(f"activity.{user_token(None, 'v1')}.page_viewed", b"{}")
        await refused(errors, "activity.")
        await nc.publish("dlq.ops", b"{}")
        await refused(errors, "dlq.ops")
    assert await count(fresh, "ACTIVITY") == 0


def test_nats_url_with_nats_creds_connects_and_without_is_refused(broker: EmbeddedBroker) -> None:
    """`--nats-url` alone is an open dev server's way: against a secured server it is refused
    with one line; `--nats-creds` (a Nerve credential file here) gets in."""
    assert broker.url is not None
    base = [sys.executable, "-m", "engine.cli", "--nats-url", broker.url, "--connect-timeout", "3"]
    refused = subprocess.run([*base, "init"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "refused the connection" in refused.stderr
    admin = credstore.path_of(broker.data_dir, "admin")
    done = subprocess.run(
        [*base, "--nats-creds", str(admin), "init"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    loopback = ipaddress.ip_address("127.0.0.1")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nerve-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(loopback)]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "server.pem", tmp / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_is_an_option_and_verifies_the_server(tmp_path: Path) -> None:
    from engine.broker import find_server_binary
    from nerve_client.credentials import Tls

    cert, key = self_signed(tmp_path)
    port = free_port()
    conf = tmp_path / "tls.conf"
    conf.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"tls {{ cert_file: {json.dumps(str(cert))}, key_file: {json.dumps(str(key))} }}\n"
    )
    server = subprocess.Popen([find_server_binary(), "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        url = f"nats://127.0.0.1:{port}"
        nc = await connect(url, "tls", timeout=5, tls=Tls(ca=cert))
        assert nc.is_connected
        await nc.close()
        (tmp_path / "other").mkdir()
        other, _ = self_signed(tmp_path / "other")  # a CA that did not sign the server's cert
        with pytest.raises(BrokerUnavailable):
            await connect(url, "tls", timeout=1, tls=Tls(ca=other))
    finally:
        server.terminate()
        server.wait(10)

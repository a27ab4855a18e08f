"""The widget and the demo site in a real browser: Debian's Chromium driven by Playwright,
against `nerve up` (its own process) on a real nats-server, with the small bank's models.

Needs /usr/bin/chromium (`apt-get install chromium`); without it these tests fail with a line
saying so (never skipped: CI installs it)."""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS

from engine.bus import connect, provision
from engine.bus.reader import read_all
from tests.reco_world import publish_world

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEY = "widget-site-key"
SECRET = "widget-test-identity-secret"
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
async def gateway(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """`nerve up` (gateway, profiles, recommender) on the module's broker, with the bank's
    catalogue and models published first; yields its base URL."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")

    nc = await connect(nats_url, "widget-setup", timeout=5)
    try:
        await provision(nc.jetstream())
        await publish_world(nc)
    finally:
        await nc.close()
    port = free_port()
    nerve = shutil.which("nerve", path=str(Path(sys.executable).parent)) or "nerve"
    data = tmp_path_factory.mktemp("nerve")
    log = (data / "log").open("wb")
    proc = subprocess.Popen(
        [
            nerve,
            "--nats-url",
            nats_url,
            "--data-dir",
            str(data),
            "up",
            "--site-keys",
            KEY,
            "--demo-site",
            KEY,
            "--port",
            str(port),
            "--services",
            "gateway,profiles,recommender",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "NERVE_SITE_SECRETS": f"{KEY}={SECRET}"},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            await asyncio.sleep(0.2)
    else:
        proc.kill()
        log.close()
        pytest.fail("nerve up did not start: " + (data / "log").read_text()[-2000:])
    await asyncio.sleep(1.0)  # the recommender loads its models
    yield base
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        await b.close()


async def posted(page: Any) -> list[dict[str, Any]]:
    """Start recording every event the page sends to /v1/events."""
    sent: list[dict[str, Any]] = []

    def on_request(req: Any) -> None:
        if "/v1/events" in req.url and req.method == "POST":
            sent.extend(orjson.loads(req.post_data or "[]"))

    page.on("request", on_request)
    return sent


async def accept(page: Any) -> None:
    await page.click("#consent-accept")


async def items_in(page: Any, selector: str) -> list[str]:
    return list(
        await page.eval_on_selector(
            selector,
            "el => el.shadowRoot ? [...el.shadowRoot.querySelectorAll('li[data-item]')]"
            ".map(li => li.dataset.item) : []",
        )
    )


async def wait_items(page: Any, selector: str, check: Any, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = await items_in(page, selector)
        if found and check(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector}: {found}")
        await asyncio.sleep(0.05)


async def test_widget_is_small_and_served_with_caching(gateway: str) -> None:
    import httpx

    async with httpx.AsyncClient() as http:
        r = await http.get(gateway + "/widget.js")
        assert r.status_code == 200 and "javascript" in r.headers["content-type"]
        assert "max-age" in r.headers["cache-control"] and r.headers["etag"]
        again = await http.get(gateway + "/widget.js", headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304
        assert len(gzip.compress(r.content, 9)) < 12 * 1024


async def test_renders_k_items_and_the_loan_simulator_moves_home_to_a_loan(
    gateway: str, browser: Any, nats_url: str
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(gateway + "/demo/")
    await accept(page)
    home = await wait_items(page, "#home-offers", lambda xs: True)
    assert len(home) == 3  # k
    trending = await wait_items(page, "#trending", lambda xs: True)
    # at most k, less what the home widget above already shows (the slot serves 5)
    assert 1 <= len(trending) <= 4 and not set(trending) & set(home)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "demo-home.png"), full_page=True)
    # the simulator on another page, twice; back home, then the list changes live
    sim = await context.new_page()
    await sim.goto(gateway + "/demo/loans.html")
    for _ in range(2):
        await sim.click("#simulate")
        await asyncio.sleep(0.1)
    started = time.monotonic()
    after = await wait_items(page, "#home-offers", lambda xs: xs[0].startswith("loan-"), 2.0)
    assert after[0] == "loan-personal"
    assert time.monotonic() - started < 2.0
    # no reload happened: the same document
    assert await page.evaluate("performance.getEntriesByType('navigation').length") == 1


async def test_a_click_is_attributed_to_its_recommendation(
    gateway: str, browser: Any, nats_url: str
) -> None:
    page = await browser.new_page()
    await page.goto(gateway + "/demo/")
    await accept(page)
    await wait_items(page, "#home-offers", lambda xs: True)
    rid = await page.eval_on_selector("#home-offers", "el => el.shadowRoot.querySelector('a').href")
    first = await items_in(page, "#home-offers")
    await page.locator("#home-offers li[data-item] a").first.click()
    await page.wait_for_load_state()
    rid = rid.split("nerve_rid=")[1].split("&")[0]
    nc: NATS = await connect(nats_url, "widget-check", timeout=5)
    try:
        for _ in range(40):
            clicks = [
                orjson.loads(d)
                for _, _, d in await read_all(
                    nc.jetstream(), "ACTIVITY", "activity.*.recommendation_clicked"
                )
            ]
            mine = [c for c in clicks if c["properties"]["recommendation_id"] == rid]
            if mine:
                break
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
    assert mine and mine[0]["item_id"] == first[0] and mine[0]["properties"]["position"] == 0
    # the landing page's item view carries the attribution, and the parameter is gone
    assert "nerve_rid" not in page.url


async def test_impression_needs_one_visible_second(gateway: str, browser: Any) -> None:
    page = await browser.new_page()
    sent = await posted(page)
    await page.clock.install()
    await page.goto(gateway + "/demo/")
    await accept(page)
    await page.clock.run_for(200)
    await wait_items(page, "#home-offers", lambda xs: True)
    await page.clock.run_for(600)
    assert not [e for e in sent if e["type"] == "recommendation_shown"]
    await page.clock.run_for(1000)
    await page.evaluate("Nerve.flush()")
    await asyncio.sleep(0.3)
    shown = [e for e in sent if e["type"] == "recommendation_shown"]
    assert len(shown) >= 1 and shown[0]["properties"]["slot"] in ("home", "trending")


async def test_gateway_down_shows_the_fallback_and_the_page_loads(
    gateway: str, browser: Any
) -> None:
    page = await browser.new_page()
    await page.goto(gateway + "/demo/")
    await accept(page)
    await wait_items(page, "#home-offers", lambda xs: True)
    # the service goes away: every API call fails from now on
    await page.route("**/v1/**", lambda route: route.abort())
    await page.reload()
    await page.wait_for_load_state("load")
    fallback = await page.eval_on_selector(
        "#home-offers",
        "el => [...el.querySelectorAll('a')].map(a => a.textContent)",
    )
    visible = await page.eval_on_selector(
        "#home-offers", "el => !!el.shadowRoot.querySelector('slot')"
    )
    await asyncio.sleep(1.0)
    assert visible and "Everyday current account" in fallback
    assert await page.title() == "Home · Nerve Bank"


async def test_nothing_is_sent_without_consent(gateway: str, browser: Any) -> None:
    page = await browser.new_page()
    sent = await posted(page)
    await page.goto(gateway + "/demo/")
    await page.click("#consent-decline")
    await page.goto(gateway + "/demo/loans.html")
    await page.click("#simulate")
    await asyncio.sleep(1.0)
    assert sent == []
    assert await page.evaluate("localStorage.getItem('nerve_aid')") is None


async def test_text_is_escaped(gateway: str, browser: Any, nats_url: str) -> None:
    from engine.bus import Outgoing, Publisher
    from engine.recommender.catalog import Item, item_subject
    from nerve_client.ids import uuid7

    nc = await connect(nats_url, "widget-xss", timeout=5)
    evil = Item(item_id="card-gold", name="<img src=x onerror=alert(1)>", category="cards")
    await Publisher(nc).publish(
        [Outgoing(item_subject(evil.item_id), evil.model_dump_json().encode(), uuid7())]
    )
    await nc.close()
    page = await browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    await page.goto(gateway + "/demo/")
    await accept(page)
    await wait_items(page, "#home-offers", lambda xs: True)
    await wait_items(page, "#trending", lambda xs: True)
    where = "#home-offers" if "card-gold" in await items_in(page, "#home-offers") else "#trending"
    await wait_items(page, where, lambda xs: "card-gold" in xs)  # in one widget, never in both
    await asyncio.sleep(0.3)
    titles = await page.eval_on_selector(
        where, "el => [...el.shadowRoot.querySelectorAll('.title')].map(t => t.textContent)"
    )
    assert "<img src=x onerror=alert(1)>" in titles and dialogs == []


async def test_accessible_markup_and_keyboard(gateway: str, browser: Any) -> None:
    page = await browser.new_page()
    await page.goto(gateway + "/demo/")
    await accept(page)
    await wait_items(page, "#home-offers", lambda xs: True)
    labelled = await page.eval_on_selector(
        "#home-offers",
        """el => {
            const s = el.shadowRoot.querySelector('section');
            const h = el.shadowRoot.getElementById(s.getAttribute('aria-labelledby'));
            const links = [...el.shadowRoot.querySelectorAll('li a')].map(a => a.textContent);
            const buttons = [...el.shadowRoot.querySelectorAll('button')]
                .map(b => b.getAttribute('aria-label'));
            return [h && h.tagName, h && h.textContent, links.length, buttons];
        }""",
    )
    assert labelled[0] == "H2" and labelled[1] == "Offers for you" and labelled[2] == 3
    assert all(b and b.startswith("Not interested in ") for b in labelled[3])
    for _ in range(30):  # the cards are reachable with the keyboard
        await page.keyboard.press("Tab")
        focused = await page.evaluate(
            "(() => { const w = document.activeElement;"
            " return w && w.id === 'home-offers' && w.shadowRoot.activeElement"
            " ? w.shadowRoot.activeElement.tagName : null })()"
        )
        if focused == "A":
            break
    assert focused == "A"


async def test_the_only_global_is_nerve(gateway: str, browser: Any) -> None:
    page = await browser.new_page()
    await page.goto(gateway + "/demo/funds.html")
    await page.wait_for_function("!!(window.Nerve && window.Nerve.track)")
    added = await page.evaluate(
        """() => {
            const frame = document.createElement('iframe');
            document.body.appendChild(frame);
            const fresh = new Set(Object.getOwnPropertyNames(frame.contentWindow));
            return Object.getOwnPropertyNames(window).filter(k => !fresh.has(k) && isNaN(k));
        }"""
    )
    assert added == ["Nerve"]


async def stored_events(nats_url: str, subjects: str, check: Any) -> list[dict[str, Any]]:
    """The ACTIVITY events on `subjects`, polled until `check` holds (or 5 s)."""
    nc: NATS = await connect(nats_url, "widget-check", timeout=5)
    try:
        for _ in range(50):
            found = [
                orjson.loads(d) for _, _, d in await read_all(nc.jetstream(), "ACTIVITY", subjects)
            ]
            if check(found):
                break
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
    return found


async def test_sign_in_gets_a_token_from_the_site_backend_and_events_name_the_user(
    gateway: str, browser: Any, nats_url: str
) -> None:
    page = await browser.new_page()
    sent = await posted(page)
    lists: list[int] = []  # statuses of the signed-in customer's list requests
    page.on(
        "response",
        lambda r: lists.append(r.status) if "/v1/recommendations/cust-widget-1" in r.url else None,
    )
    await page.goto(gateway + "/demo/account.html")
    await accept(page)
    await page.fill("#login input[name=user]", "cust-widget-1")
    await page.click("#login button")
    await page.wait_for_function("localStorage.getItem('nerve_uid') === 'cust-widget-1'")
    deadline = time.monotonic() + 5
    while not lists:  # the widget reloads the customer's list with the token
        assert time.monotonic() < deadline, "no list request for the signed-in customer"
        await asyncio.sleep(0.05)
    assert lists[0] == 200, lists
    assert "cust-widget-1" in await page.text_content("#who")
    assert await page.evaluate("localStorage.getItem('nerve_idt')")  # the token, not a secret
    await page.goto(gateway + "/demo/loans.html")
    await page.click("#simulate")
    linked = await stored_events(
        nats_url, "activity.cust-widget-1.>", lambda es: len({e["type"] for e in es}) >= 2
    )
    types = {e["type"] for e in linked}
    assert {"user_identified", "simulator_used"} <= types, types
    identified = next(e for e in sent if e["type"] == "user_identified")
    assert identified["properties"]["method"] == "token"
    # the widget never sends consent of record
    assert not [e for e in sent if e["type"] == "consent_updated"]


async def test_identify_without_a_token_names_no_user(gateway: str, browser: Any) -> None:
    page = await browser.new_page()
    sent = await posted(page)
    await page.goto(gateway + "/demo/")
    await accept(page)
    await page.evaluate(
        "Nerve.identify('cust-no-token'); Nerve.track('page_viewed', {title: 'marker'});"
        " Nerve.flush()"
    )
    deadline = time.monotonic() + 5
    while not [e for e in sent if e["properties"].get("title") == "marker"]:
        assert time.monotonic() < deadline, "the marker event was not sent"
        await asyncio.sleep(0.05)
    assert not [e for e in sent if e.get("user_id")]
    assert await page.evaluate("localStorage.getItem('nerve_uid')") is None

"""Embedding the widget, in real Chromium against `nerve up` (the fixtures of test_widget.py):
the `placement` attribute inside shadow hosts, the queueing stub with the gateway down and before
the script loads, per-purpose consent and the consenting page's view, the debug log of refused
events, and the phone layout (dismiss control, de-duplication, reserved height, screenshots)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from engine.bus import Outgoing, Publisher, connect
from engine.recommender.catalog import Item, item_subject
from nerve_client.ids import uuid7
from tests.reco_world import ITEMS
from tests.test_widget import (
    accept,
    browser,
    gateway,
    items_in,
    posted,
    stored_events,
    wait_items,
)

__all__ = ["browser", "gateway"]  # fixtures, used by name
SCREENSHOTS = Path(__file__).resolve().parent.parent / "widgets" / "screenshots"
METHODS = ["init", "identify", "consent", "track", "page", "flush", "reset"]


async def until(check: Any, what: str, timeout: float = 5.0) -> Any:
    """Poll `check()` (sync or async) until it is truthy; AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return found
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_placement_renders_inside_a_shadow_host_and_a_shadow_root(
    gateway: str, browser: Any
) -> None:
    page = await browser.new_page()
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/v1/recommendations/" in r.url else None)
    await page.goto(gateway + "/demo/funds.html")
    await accept(page)
    await page.evaluate(
        """() => {
            const projected = document.createElement('div');
            projected.id = 'projected';
            projected.attachShadow({mode: 'open'}).innerHTML = '<slot></slot>';
            projected.innerHTML = '<nerve-recommendations placement="trending" k="2">'
                + '</nerve-recommendations>';
            const inside = document.createElement('div');
            inside.id = 'inside';
            inside.attachShadow({mode: 'open'}).innerHTML =
                '<nerve-recommendations placement="trending" k="2"></nerve-recommendations>';
            document.querySelector('main').append(projected, inside);
        }"""
    )
    sizes = """el => {
        const w = el.localName === 'nerve-recommendations' ? el
            : el.shadowRoot.querySelector('nerve-recommendations');
        const li = w.shadowRoot.querySelector('li[data-item]');
        if (!li) return null;
        const a = w.getBoundingClientRect(), b = li.getBoundingClientRect();
        return [a.width, a.height, b.width, b.height];
    }"""
    for where in ("#projected nerve-recommendations", "#inside"):
        box = await until(lambda w=where: page.eval_on_selector(w, sizes), f"{where} rendered")
        assert min(box) > 0, (where, box)  # with slot="home": assigned to no slot, 0x0
    assert [u for u in asked if "slot=trending" in u]
    assert not [u for u in asked if "k=" in u]  # the slot's own k decides
    assert await page.evaluate("document.querySelectorAll('[slot]').length") == 0


async def test_every_method_of_the_stub_is_safe_with_the_gateway_down(
    gateway: str, browser: Any
) -> None:
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    for path in ("**/widget.js", "**/demo-site/**", "**/v1/**"):
        await page.route(path, lambda route: route.abort())
    await page.goto(gateway + "/demo/")
    await accept(page)  # the banner calls Nerve.consent: queued
    queued = await page.evaluate(
        """(methods) => {
            Nerve.init({siteKey: 'k'}); Nerve.identify('u-1', 'token'); Nerve.consent(true);
            Nerve.consent({analytics: true, personalization: false, marketing: false});
            Nerve.track('page_viewed', {}); Nerve.page(); Nerve.flush(); Nerve.reset();
            return [Nerve.q.length, methods.filter(m => typeof Nerve[m] !== 'function')];
        }""",
        METHODS,
    )
    assert errors == [] and queued[1] == []
    assert queued[0] >= len(METHODS) + 1  # the banner's consent, then the eight calls
    fallback = await page.eval_on_selector("#home-offers", "el => el.textContent")
    assert "Everyday current account" in fallback  # the site's own content stays


async def test_calls_queued_before_the_script_loads_take_effect(gateway: str, browser: Any) -> None:
    page = await browser.new_page()
    sent = await posted(page)
    release = asyncio.Event()

    async def slow_widget(route: Any) -> None:
        await release.wait()
        await route.continue_()

    await page.route("**/widget.js", slow_widget)
    await page.goto(gateway + "/demo/", wait_until="domcontentloaded")
    loaded = await page.evaluate(
        "Nerve.consent(true); Nerve.track('search_performed', {query: 'queued'}); !!Nerve.config"
    )
    assert loaded is False  # still the stub
    release.set()
    await page.wait_for_function("!!(window.Nerve && window.Nerve.config)")
    await page.evaluate("Nerve.flush()")
    await until(lambda: [e for e in sent if e["type"] == "search_performed"], "queued track sent")
    assert [e["properties"]["query"] for e in sent if e["type"] == "search_performed"] == ["queued"]
    assert len([e for e in sent if e["type"] == "page_viewed"]) == 1  # consent, then one view
    assert await page.evaluate("localStorage.getItem('nerve_consent')")


async def test_the_page_consent_is_given_on_is_recorded_once(gateway: str, browser: Any) -> None:
    page = await browser.new_page()
    sent = await posted(page)
    await page.goto(gateway + "/demo/")
    await accept(page)
    await page.evaluate("Nerve.consent(true); Nerve.consent({analytics: true}); Nerve.flush()")
    views = await until(
        lambda: [e for e in sent if e["type"] == "page_viewed"], "the consenting page's view"
    )
    await page.evaluate("Nerve.track('search_performed', {query: 'after'}); Nerve.flush()")
    await until(lambda: [e for e in sent if e["type"] == "search_performed"], "marker sent")
    views = [e for e in sent if e["type"] == "page_viewed"]
    assert len(views) == 1 and views[0]["properties"]["path"] == "/demo/"
    assert views[0]["properties"]["page_type"] == "home"
    assert views[0]["context"]["consent"] == {"analytics": True, "personalization": True}


async def test_a_marketing_grant_is_sent_only_for_the_signed_in_customer(
    gateway: str, browser: Any, nats_url: str
) -> None:
    page = await browser.new_page()
    sent = await posted(page)
    await page.goto(gateway + "/demo/account.html")
    await page.check("#consent-marketing")
    await accept(page)
    await page.evaluate("Nerve.flush()")
    await until(lambda: [e for e in sent if e["type"] == "page_viewed"], "the anonymous view")
    assert all("marketing" not in e["context"]["consent"] for e in sent)  # anonymous: kept back
    await page.fill("#login input[name=user]", "cust-marketing-1")
    await page.click("#login button")
    await page.wait_for_function("localStorage.getItem('nerve_uid') === 'cust-marketing-1'")
    await page.evaluate("Nerve.track('search_performed', {query: 'mortgage'}); Nerve.flush()")
    stored = await stored_events(
        nats_url,
        "activity.cust-marketing-1.>",
        lambda es: {"user_identified", "search_performed"} <= {e["type"] for e in es},
    )
    assert {"user_identified", "search_performed"} <= {e["type"] for e in stored}
    assert all(e["context"]["consent"]["marketing"] is True for e in stored)


STATE = """() => [JSON.parse(localStorage.getItem('nerve_consent')),
    localStorage.getItem('nerve_aid')]"""


async def test_a_partial_consent_keeps_the_purposes_it_does_not_name(
    gateway: str, browser: Any
) -> None:
    page = await browser.new_page()
    await page.goto(gateway + "/demo/")
    await accept(page)
    home = await wait_items(page, "#home-offers", lambda xs: True)
    _, aid = await page.evaluate(STATE)
    assert aid
    # a later "contact me" tick names marketing only
    reloaded = page.expect_response(lambda r: "slot=home" in r.url and r.status == 200)
    async with reloaded:
        ok = await page.evaluate(
            "Nerve.consent({marketing: true}); Nerve.track('search_performed', {query: 'x'})"
        )
        consent, kept = await page.evaluate(STATE)
        assert consent == {"analytics": True, "personalization": True, "marketing": True}
        assert kept == aid and ok is True  # before: analytics off, the id deleted, False
        assert await items_in(page, "#home-offers") == home  # before: emptied at once
    assert await wait_items(page, "#home-offers", lambda xs: True) == home
    # naming one purpose changes that one only
    ok = await page.evaluate("Nerve.consent({personalization: false}); Nerve.track('x', {})")
    consent, kept = await page.evaluate(STATE)
    assert consent == {"analytics": True, "personalization": False, "marketing": True}
    assert kept == aid and ok is True
    assert await page.eval_on_selector(
        "#home-offers", "el => !!el.shadowRoot.querySelector('slot')"
    )
    # the booleans: none, then analytics and personalization (marketing as it was)
    await page.evaluate("Nerve.consent(false)")
    assert await page.evaluate(STATE) == [
        {"analytics": False, "personalization": False, "marketing": False},
        None,
    ]
    assert await page.evaluate("Nerve.track('x', {})") is False
    await page.evaluate("Nerve.consent(true)")
    consent, fresh = await page.evaluate(STATE)
    assert consent == {"analytics": True, "personalization": True, "marketing": False}
    assert fresh and fresh != aid
    await wait_items(page, "#home-offers", lambda xs: True)


async def debug_page(browser: Any, gateway: str, debug: bool) -> tuple[Any, list[str]]:
    """The demo home page, its script tag with `data-debug` when `debug`; its console warnings."""
    page = await browser.new_page()
    warnings: list[str] = []
    page.on("console", lambda m: warnings.append(m.text) if m.type == "warning" else None)

    async def tagged(route: Any) -> None:
        response = await route.fetch()
        html = await response.text()
        await route.fulfill(
            response=response,
            body=html.replace("data-require-consent", "data-require-consent data-debug"),
        )

    if debug:
        await page.route(gateway + "/demo/", tagged)
    await page.goto(gateway + "/demo/")
    await accept(page)
    async with page.expect_response(lambda r: "/v1/events" in r.url and r.status == 422):
        await page.evaluate(
            "Nerve.flush(); Nerve.track('item_viewd', {}, {item_id: 'loan-car'}); Nerve.flush()"
        )
    return page, warnings


async def test_debug_mode_logs_each_refused_event_with_its_reason(
    gateway: str, browser: Any
) -> None:
    _, warnings = await debug_page(browser, gateway, debug=True)
    found = await until(
        lambda: [w for w in warnings if w.startswith("[nerve] refused item_viewd: type: ")],
        "a warning for the refused event",
    )
    assert "unknown event type 'item_viewd'" in found[0]
    quiet, none = await debug_page(browser, gateway, debug=False)
    await quiet.evaluate("new Promise(r => setTimeout(r, 100))")  # the response is handled
    assert not [w for w in none if w.startswith("[nerve]")]


async def long_names(nats_url: str, gateway: str) -> None:
    """Every catalogue item gets a long name (a bank's real product names are), once the
    gateway (which adds names to served lists) has them."""
    import httpx

    nc = await connect(nats_url, "widget-names", timeout=5)
    out = []
    for item in ITEMS:
        long = item.model_copy(update={"name": f"{item.name} with flexible terms and no fees"})
        out.append(
            Outgoing(item_subject(item.item_id), Item.model_dump_json(long).encode(), uuid7())
        )
    await Publisher(nc).publish(out)
    await nc.close()
    async with httpx.AsyncClient() as http:

        async def renamed() -> bool:
            names = [i["name"] for i in (await http.get(gateway + "/demo/catalog.json")).json()]
            return all("flexible terms" in n for n in names)

        await until(renamed, "the gateway has the long names")


DISMISS = """el => [...el.shadowRoot.querySelectorAll('li[data-item]')].map(li => {
    const x = li.querySelector('.dismiss').getBoundingClientRect();
    const t = li.querySelector('.title').getBoundingClientRect();
    const apart = t.right <= x.left || t.left >= x.right || t.bottom <= x.top || t.top >= x.bottom;
    return [x.width, x.height, apart];
})"""


HEIGHTS = """() => Object.fromEntries([...document.querySelectorAll('nerve-recommendations')]
    .map(el => [el.id, el.getBoundingClientRect().height]))"""


async def test_no_item_shows_in_two_widgets_and_nothing_jumps_at_375_and_1280(
    gateway: str, browser: Any
) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    for width in (375, 1280):
        context = await browser.new_context(viewport={"width": width, "height": 800})
        page = await context.new_page()
        await page.goto(gateway + "/demo/")
        await page.wait_for_function("!!(window.Nerve && window.Nerve.config)")
        reserved = await page.evaluate(HEIGHTS)  # #home-offers shows the site's own content
        await accept(page)
        home = await wait_items(page, "#home-offers", lambda xs: True)
        trending = await wait_items(page, "#trending", lambda xs: True)
        assert not set(home) & set(trending), (home, trending)
        assert (len(home), len(trending)) == (3, 4)  # k cards each
        height = await page.evaluate(HEIGHTS)
        for where in ("home-offers", "trending"):
            # before: trending at 1280 98 -> 133 px, home at 375 159 -> 254 px
            assert abs(height[where] - reserved[where]) <= 8, (width, where, reserved, height)
        await page.screenshot(path=str(SCREENSHOTS / f"demo-{width}.png"), full_page=True)
        await context.close()


async def test_with_long_names_the_dismiss_is_clear_of_titles_and_nothing_jumps(
    gateway: str, browser: Any, nats_url: str
) -> None:
    await long_names(nats_url, gateway)  # last in this module: the names stay long
    for width in (375, 1280):
        context = await browser.new_context(viewport={"width": width, "height": 800})
        page = await context.new_page()
        await page.goto(gateway + "/demo/")
        await page.wait_for_function("!!(window.Nerve && window.Nerve.config)")
        reserved = await page.evaluate(HEIGHTS)
        await accept(page)
        await wait_items(page, "#home-offers", lambda xs: True)
        await wait_items(page, "#trending", lambda xs: True)
        height = await page.evaluate(HEIGHTS)
        for where in ("#home-offers", "#trending"):
            boxes = await page.eval_on_selector(where, DISMISS)
            assert boxes
            for w, h, apart in boxes:
                assert w >= 24 and h >= 24 and apart, (where, w, h, apart)
            # two-line titles: before, 98 -> 133 px at 1280
            assert abs(height[where[1:]] - reserved[where[1:]]) <= 8, (width, reserved, height)
        await context.close()

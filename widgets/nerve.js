/*! Nerve widget: tracking, recommendations, live updates. No dependencies, no build step.
 *
 * <script src="https://nerve.example/widget.js" data-endpoint="https://nerve.example"
 *         data-site-key="KEY" [data-require-consent] async></script>
 * <nerve-recommendations slot="home" k="4" heading="For you">
 *   ...fallback content, shown while loading fails or the service is away...
 *   <template>optional card markup: elements with data-field="name|reason|url|image|price"</template>
 * </nerve-recommendations>
 *
 * JS API (the only global): Nerve.init({siteKey, endpoint}), Nerve.track(type, props, fields),
 * Nerve.identify(userId, token), Nerve.consent(bool), Nerve.page(), Nerve.flush(), Nerve.reset().
 * Queued calls made before the script loaded (window.Nerve = window.Nerve || {q: []};
 * Nerve.q.push([name, ...args])) run first. DOM events: nerve:rendered, nerve:click, nerve:error.
 *
 * Identity: the page never asserts a user id on its own say-so. identify() takes the token the
 * site's backend signed for the signed-in customer (engine.identity); the widget sends it as
 * ?identity= (beacons and EventSource cannot send headers) with the events that name the user and
 * with the user's list and stream requests. Once the token has expired the widget acts as the
 * anonymous visitor again until the page calls identify() with a fresh one (a site re-mints it on
 * each page it renders). Consent given in the banner travels as context.consent (analytics,
 * personalization); consent of record (marketing) comes from the site's backend, never from here.
 */
(function () {
  "use strict";
  var script = document.currentScript || document.querySelector("script[data-site-key], script[src*='widget.js']");
  var cfg = {
    endpoint: ((script && script.dataset.endpoint) || "").replace(/\/$/, ""),
    key: (script && script.dataset.siteKey) || "",
    requireConsent: !!(script && script.hasAttribute("data-require-consent")),
    flushMs: 250,
    timeoutMs: 800
  };
  var store = window.localStorage;
  var prior = window.Nerve && window.Nerve.q;
  var queue = [];
  var timer = null;
  var consentGiven = !cfg.requireConsent || read("consent") === "1";
  var userId = read("uid");
  var idToken = read("idt");
  var anonId = consentGiven ? read("aid") || write("aid", uuid()) : null;
  var failures = 0;
  var pausedUntil = 0;
  var widgets = [];
  var source = null;
  var backoff = 1000;
  var seen = {};

  function read(k) {
    try { return store.getItem("nerve_" + k); } catch (e) { return null; }
  }
  function write(k, v) {
    try { if (v === null) store.removeItem("nerve_" + k); else store.setItem("nerve_" + k, v); } catch (e) { /* private mode */ }
    return v;
  }
  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "10000000-1000-4000-8000-100000000000".replace(/[018]/g, function (c) {
      return (c ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (c / 4)))).toString(16);
    });
  }
  function url(path, params) {
    var q = "site_key=" + encodeURIComponent(cfg.key);
    for (var k in params) if (params[k] !== undefined && params[k] !== null) q += "&" + k + "=" + encodeURIComponent(params[k]);
    return cfg.endpoint + path + (path.indexOf("?") < 0 ? "?" : "&") + q;
  }
  function tokenExp(t) {
    try { return JSON.parse(atob(t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).exp * 1000; } catch (e) { return 0; }
  }
  function identified() {
    return !!(userId && idToken && tokenExp(idToken) > Date.now());
  }
  function who() {
    return identified() ? { user_id: userId } : { anonymous_id: anonId };
  }
  function safeUrl(u) {
    if (!u) return null;
    try { var p = new URL(u, location.href); return p.protocol === "http:" || p.protocol === "https:" ? p.href : null; } catch (e) { return null; }
  }

  // -- tracking ---------------------------------------------------------------------------
  function track(type, props, fields) {
    if (!consentGiven) return false;
    var ev = { id: uuid(), type: type, time: new Date().toISOString(), source: "web", properties: props || {} };
    var w = who();
    for (var k in w) ev[k] = w[k];
    for (k in fields || {}) ev[k] = fields[k];
    ev.context = { page_url: location.href.slice(0, 2000), referrer: document.referrer.slice(0, 2000) || undefined, library: "nerve.js/1" };
    if (cfg.requireConsent) ev.context.consent = { analytics: true, personalization: true };
    if (queue.length >= 100) queue.shift();
    queue.push(ev);
    if (queue.length >= 10) flush();
    else if (!timer) timer = setTimeout(flush, cfg.flushMs);
    return true;
  }
  function flush(beacon) {
    clearTimeout(timer);
    timer = null;
    if (!queue.length || !consentGiven) return;
    var batch = queue.splice(0, queue.length);
    var body = JSON.stringify(batch);
    var named = batch.some(function (e) { return e.user_id; });
    var to = url("/v1/events", { identity: named ? idToken : undefined });
    if (beacon && navigator.sendBeacon && navigator.sendBeacon(to, new Blob([body], { type: "text/plain" }))) return;
    fetch(to, { method: "POST", body: body, keepalive: true, headers: { "Content-Type": "text/plain" } }).catch(function () {});
  }
  function page() {
    var props = { path: location.pathname, title: document.title.slice(0, 300) };
    var kind = document.body && document.body.dataset.nervePage;
    if (kind) props.page_type = kind;
    track("page_viewed", props);
    var items = document.querySelectorAll("[data-nerve-item][data-nerve-view]");
    for (var i = 0; i < items.length; i++) {
      var el = items[i];
      var p = {};
      if (el.dataset.nerveCategory) p.category = el.dataset.nerveCategory;
      var rid = new URLSearchParams(location.search).get("nerve_rid");
      if (rid) p.recommendation_id = rid;
      track("item_viewed", p, { item_id: el.dataset.nerveItem });
    }
    if (location.search.indexOf("nerve_rid=") >= 0 && history.replaceState) {
      var clean = new URL(location.href);
      clean.searchParams.delete("nerve_rid");
      history.replaceState(history.state, "", clean.href);
    }
  }
  document.addEventListener("click", function (e) {
    var el = e.target.closest && e.target.closest("[data-nerve-item][data-nerve-event]");
    if (!el) return;
    var p = {};
    if (el.dataset.nerveCategory) p.category = el.dataset.nerveCategory;
    track(el.dataset.nerveEvent, p, { item_id: el.dataset.nerveItem });
  });
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") flush(true);
  });
  window.addEventListener("pagehide", function () { flush(true); });

  // -- serving ------------------------------------------------------------------------------
  function fetchList(slot, k, item) {
    if (Date.now() < pausedUntil) return Promise.reject(new Error("paused after failures"));
    var w = who();
    var id = w.user_id || w.anonymous_id;
    if (!id) return Promise.reject(new Error("no consent"));
    var ctl = new AbortController();
    var t = setTimeout(function () { ctl.abort(); }, cfg.timeoutMs);
    return fetch(url("/v1/recommendations/" + encodeURIComponent(id), { slot: slot, k: k, item: item, anonymous: w.user_id ? undefined : "true", identity: w.user_id ? idToken : undefined }), { signal: ctl.signal })
      .then(function (r) {
        clearTimeout(t);
        if (!r.ok) throw new Error("HTTP " + r.status);
        failures = 0;
        return r.json();
      })
      .catch(function (e) {
        clearTimeout(t);
        if (++failures >= 3) { pausedUntil = Date.now() + 60000; failures = 0; }
        throw e;
      });
  }
  function listen() {
    if (source || !window.EventSource || Date.now() < pausedUntil) return;
    var w = who();
    var id = w.user_id || w.anonymous_id;
    var slots = widgets.filter(function (x) { return x.live; }).map(function (x) { return x.slotName; });
    if (!id || !slots.length) return;
    source = new EventSource(url("/v1/recommendations/" + encodeURIComponent(id) + "/stream", { slots: slots.join(","), anonymous: w.user_id ? undefined : "true", identity: w.user_id ? idToken : undefined }));
    source.addEventListener("recommendations", function (m) {
      backoff = 1000;
      var ev = JSON.parse(m.data);
      widgets.forEach(function (x) { if (x.live && x.slotName === ev.properties.slot && !x.itemId) x.offer(ev); });
    });
    source.onopen = function () { backoff = 1000; };
    source.onerror = function () {
      source.close();
      source = null;
      setTimeout(listen, backoff);
      backoff = Math.min(backoff * 2, 30000);
    };
  }
  function relisten() {
    if (source) { source.close(); source = null; }
    listen();
  }

  // -- the element --------------------------------------------------------------------------
  var CSS =
    ":host{display:block;font:inherit;color:inherit}" +
    "section{min-height:var(--nerve-min-height,0)}" +
    "h2{font-size:var(--nerve-heading-size,1.2em);margin:0 0 .5em}" +
    "ul{list-style:none;margin:0;padding:0;display:grid;gap:var(--nerve-gap,12px);grid-template-columns:repeat(auto-fill,minmax(var(--nerve-card-width,180px),1fr))}" +
    "li{position:relative;border:1px solid var(--nerve-border,#ddd);border-radius:var(--nerve-radius,8px);background:var(--nerve-card-bg,#fff)}" +
    "a{display:block;padding:12px;color:inherit;text-decoration:none;min-height:var(--nerve-card-height,96px)}" +
    "a:focus-visible,button:focus-visible{outline:2px solid var(--nerve-accent,#0b5fff);outline-offset:2px}" +
    "img{max-width:100%;height:auto}" +
    ".title{display:block;font-weight:600;color:var(--nerve-accent,#0b5fff)}" +
    ".reason{display:block;font-size:.85em;opacity:.75;margin-top:4px}" +
    ".dismiss{position:absolute;top:4px;right:4px;border:0;background:none;cursor:pointer;font-size:1em;line-height:1}" +
    ".skeleton li{height:var(--nerve-card-height,96px);background:var(--nerve-skeleton,#f2f2f2)}" +
    ".fresh{margin-top:.5em}" +
    "@media (prefers-reduced-motion:no-preference){li{transition:opacity .2s}}";

  function text(el, value) { el.textContent = value == null ? "" : String(value); return el; }
  function make(tag, cls, part) {
    var el = document.createElement(tag);
    if (cls) el.className = cls;
    if (part) el.setAttribute("part", part);
    return el;
  }

  var Base = window.HTMLElement || function () {};
  class NerveRecommendations extends Base {
    connectedCallback() {
      if (this.root) return;
      this.slotName = this.getAttribute("slot") || "home";
      this.k = parseInt(this.getAttribute("k") || "4", 10);
      this.itemId = this.getAttribute("item-id");
      this.live = this.getAttribute("live") !== "off";
      this.root = this.attachShadow({ mode: "open" });
      var style = make("style");
      style.textContent = CSS;
      this.root.appendChild(style);
      this.box = make("div");
      this.root.appendChild(this.box);
      this.style.setProperty("--nerve-min-height", "calc(" + Math.ceil(this.k / 4) + " * (var(--nerve-card-height, 96px) + 24px) + 2em)");
      this.fallback();
      widgets.push(this);
      var self = this;
      this.skeletonTimer = setTimeout(function () { if (!self.current) self.skeleton(); }, 300);
      this.load();
      this.addEventListener("mouseleave", function () { self.applyPending(); });
      this.addEventListener("focusout", function () { setTimeout(function () { self.applyPending(); }, 0); });
      listen();
    }
    disconnectedCallback() {
      widgets = widgets.filter(function (w) { return w !== this; }, this);
    }
    fallback() {
      this.box.textContent = "";
      this.box.appendChild(make("slot"));
    }
    skeleton() {
      this.box.textContent = "";
      var ul = make("ul", "skeleton");
      ul.setAttribute("aria-hidden", "true");
      for (var i = 0; i < this.k; i++) ul.appendChild(make("li"));
      this.box.appendChild(ul);
    }
    load() {
      var self = this;
      return fetchList(this.slotName, this.k, this.itemId).then(
        function (ev) { clearTimeout(self.skeletonTimer); self.render(ev); },
        function (err) {
          clearTimeout(self.skeletonTimer);
          if (!self.current) self.fallback();
          self.dispatchEvent(new CustomEvent("nerve:error", { detail: { slot: self.slotName, error: String(err) } }));
          // try again later (the circuit breaker in fetchList stops after 3 failures in a row)
          self.retries = (self.retries || 0) + 1;
          if (self.retries < 3) setTimeout(function () { if (!self.current) self.load(); }, 2000 * self.retries);
        }
      );
    }
    busy() {
      return this.matches(":hover") || this.contains(document.activeElement) || (this.root.activeElement != null);
    }
    offer(ev) {
      if (this.current && ev.id === this.current.id) return;
      if (this.busy()) { this.pending = ev; return; }
      this.render(ev);
    }
    applyPending() {
      if (this.pending && !this.busy()) { var ev = this.pending; this.pending = null; this.render(ev); }
    }
    render(ev) {
      var props = ev.properties;
      var items = props.items.slice(0, this.k);
      if (!items.length) { this.current = null; this.fallback(); return; }
      this.current = ev;
      var self = this;
      var section = make("section");
      var hid = "nerve-h-" + this.slotName;
      section.setAttribute("aria-labelledby", hid);
      var heading = make("h2", null, "heading");
      heading.id = hid;
      text(heading, this.getAttribute("heading") || "Recommended for you");
      section.appendChild(heading);
      var ul = make("ul", null, "list");
      var tpl = this.querySelector("template");
      items.forEach(function (it, i) {
        var li = make("li", null, "item");
        li.dataset.item = it.item_id;
        var d = it.item || {};
        var href = safeUrl(d.url) || "#";
        var link = new URL(href, location.href);
        if (href !== "#") { link.searchParams.set("nerve_rid", props.recommendation_id); href = link.href; }
        var card;
        if (tpl) {
          card = tpl.content.cloneNode(true);
          card.querySelectorAll("[data-field]").forEach(function (el) {
            var f = el.dataset.field;
            if (f === "url") el.setAttribute("href", href);
            else if (f === "image") { var src = safeUrl(d.image); if (src) el.setAttribute("src", src); el.setAttribute("alt", d.name || it.item_id); }
            else text(el, f === "reason" ? it.reason : f === "name" ? d.name || it.item_id : d[f]);
          });
          li.appendChild(card);
        } else {
          var a = make("a", null, "card");
          a.setAttribute("href", href);
          if (d.image && safeUrl(d.image)) {
            var img = make("img", null, "image");
            img.setAttribute("src", safeUrl(d.image));
            img.setAttribute("alt", d.name || it.item_id);
            a.appendChild(img);
          }
          a.appendChild(text(make("span", "title", "title"), d.name || it.item_id));
          if (it.reason) a.appendChild(text(make("span", "reason", "badge"), it.reason));
          li.appendChild(a);
        }
        var x = make("button", "dismiss", "dismiss");
        x.setAttribute("type", "button");
        x.setAttribute("aria-label", "Not interested in " + (d.name || it.item_id));
        text(x, "\u00d7");
        x.addEventListener("click", function (e) {
          e.preventDefault();
          track("offer_dismissed", { recommendation_id: props.recommendation_id, slot: props.slot, position: it.position, reason: "not_interested" }, { item_id: it.item_id });
          flush();
          li.remove();
        });
        li.appendChild(x);
        li.addEventListener("click", function (e) {
          if (e.target.closest && e.target.closest(".dismiss")) return;
          track("recommendation_clicked", { recommendation_id: props.recommendation_id, slot: props.slot, position: it.position }, { item_id: it.item_id });
          flush(true);
          self.dispatchEvent(new CustomEvent("nerve:click", { detail: { item_id: it.item_id, position: it.position, recommendation_id: props.recommendation_id } }));
        });
        ul.appendChild(li);
      });
      section.appendChild(ul);
      this.box.textContent = "";
      this.box.appendChild(section);
      this.watch(ul, props, items);
      if (window.performance && performance.mark) performance.mark("nerve:rendered:" + this.slotName);
      this.dispatchEvent(new CustomEvent("nerve:rendered", { detail: { recommendation_id: props.recommendation_id, items: items.length } }));
    }
    watch(ul, props, items) {
      // Shown: at least half of the list visible for one continuous second in a visible tab.
      if (this.observer) this.observer.disconnect();
      var rid = props.recommendation_id;
      if (seen[rid] || !window.IntersectionObserver) return;
      var wait = null;
      var self = this;
      function stop() { clearTimeout(wait); wait = null; }
      this.observer = new IntersectionObserver(function (entries) {
        var visible = entries[entries.length - 1].intersectionRatio >= 0.5;
        if (visible && document.visibilityState === "visible" && !wait) {
          wait = setTimeout(function () {
            if (seen[rid] || document.visibilityState !== "visible") return;
            seen[rid] = true;
            track("recommendation_shown", { recommendation_id: rid, slot: props.slot, items: items.map(function (it) { return { item_id: it.item_id, position: it.position }; }) });
            self.observer.disconnect();
          }, 1000);
        } else if (!visible) stop();
      }, { threshold: [0, 0.5, 1] });
      document.addEventListener("visibilitychange", function () { if (document.visibilityState !== "visible") stop(); });
      this.observer.observe(ul);
    }
  }

  // -- the API --------------------------------------------------------------------------------
  var api = {
    track: function (type, props, fields) { var ok = track(type, props, fields); if (ok && type === "simulator_used") flush(); return ok; },
    page: page,
    flush: function () { flush(); },
    init: function (o) {
      if (o && o.siteKey) cfg.key = String(o.siteKey);
      if (o && o.endpoint !== undefined) cfg.endpoint = String(o.endpoint).replace(/\/$/, "");
    },
    identify: function (id, token) {
      if (!id || !token) { console.warn("Nerve.identify(userId, token): a token signed by the site's backend is required"); return; }
      id = String(id);
      var same = id === userId && identified();
      flush();
      userId = write("uid", id);
      idToken = write("idt", String(token));
      if (!same && consentGiven && anonId) { track("user_identified", { method: "token" }, { user_id: id, anonymous_id: anonId }); flush(); }
      relisten();
      if (!same) widgets.forEach(function (w) { w.load(); });
    },
    consent: function (yes) {
      consentGiven = !!yes;
      write("consent", yes ? "1" : "0");
      if (!yes) { queue = []; return; }
      anonId = anonId || read("aid") || write("aid", uuid());
      widgets.forEach(function (w) { w.load(); });
      listen();
    },
    reset: function () {
      flush();
      userId = write("uid", null);
      idToken = write("idt", null);
      anonId = consentGiven ? write("aid", uuid()) : null;
      relisten();
    },
    config: cfg
  };
  window.Nerve = api;
  if (prior) prior.forEach(function (c) { if (api[c[0]]) api[c[0]].apply(null, c.slice(1)); });
  if (window.customElements && !customElements.get("nerve-recommendations")) customElements.define("nerve-recommendations", NerveRecommendations);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", page);
  else page();
})();

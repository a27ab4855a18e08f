/*! Nerve widget: tracking, recommendations, live updates. No dependencies, no build step.
 *
 * <script>  // the stub: every call made before (or without) the script is queued, never throws
 * !function(w){var n=w.Nerve=w.Nerve||{q:[]};n.q&&"init identify consent track page flush reset"
 * .split(" ").forEach(function(m){n[m]=n[m]||function(){n.q.push([m].concat([].slice.call(arguments)))}})}(window);
 * </script>
 * <script src="https://nerve.example/widget.js" data-endpoint="https://nerve.example"
 *         data-site-key="KEY" [data-require-consent] [data-debug] async></script>
 * <nerve-recommendations placement="home" k="3" heading="For you">
 *   ...fallback content: shown, in the space of k cards, until a list comes; and alone when none will...
 *   <template>optional card markup: elements with data-field="name|reason|url|image|category"</template>
 * </nerve-recommendations>
 *
 * `placement` names the slot (not `slot`: that is a global HTML attribute, and inside a shadow
 * host an element with slot="home" is assigned to a missing slot and renders at 0x0). `k` caps
 * the cards; without it the slot's own k (server side) decides. The widget asks for the slot's
 * whole list, so that an item another widget earlier on the page shows is skipped here.
 * A card is two title lines (clamped) and one line below high, which is what the placeholders
 * reserve; a site whose <template> cards differ sets --nerve-card-height.
 *
 * JS API (the only global): Nerve.init({siteKey, endpoint, debug}), Nerve.track(type, props,
 * fields), Nerve.identify(userId, token), Nerve.consent({analytics, personalization, marketing})
 * (a purpose left out keeps its current value: consent({marketing: true}) adds marketing and
 * changes nothing else; consent(true): analytics and personalization; consent(false): none),
 * Nerve.page(), Nerve.flush(), Nerve.reset(). Calls queued by the stub run first, in order.
 * DOM events: nerve:rendered, nerve:click, nerve:error. data-debug (or init({debug: true}))
 * logs each event the gateway refused, with its reasons, as a console warning.
 *
 * Identity: the page never asserts a user id on its own say-so. identify() takes the token the
 * site's backend signed for the signed-in customer (nerve_client.identity); the widget sends it as
 * ?identity= (beacons and EventSource cannot send headers) with the events that name the user and
 * with the user's list and stream requests. Once the token has expired the widget acts as the
 * anonymous visitor again until the page calls identify() with a fresh one (a site re-mints it on
 * each page it renders). Consent travels as context.consent; a marketing grant is kept here and
 * sent only with events that name an identified user (the gateway refuses an anonymous one).
 * The page on which consent is given is recorded (one page_viewed) once it is.
 */
(function () {
  "use strict";
  var script = document.currentScript || document.querySelector("script[data-site-key], script[src*='widget.js']");
  var cfg = {
    endpoint: ((script && script.dataset.endpoint) || "").replace(/\/$/, ""),
    key: (script && script.dataset.siteKey) || "",
    requireConsent: !!(script && script.hasAttribute("data-require-consent")),
    debug: !!(script && script.hasAttribute("data-debug")),
    flushMs: 250,
    timeoutMs: 800
  };
  var store = window.localStorage;
  var prior = window.Nerve && window.Nerve.q;
  var queue = [];
  var timer = null;
  var consent = readConsent();
  var userId = read("uid");
  var idToken = read("idt");
  var anonId = allowed("analytics") || allowed("personalization") ? read("aid") || write("aid", uuid()) : null;
  var viewed = false;
  var landing = new URLSearchParams(location.search).get("nerve_rid");
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
  function readConsent() {
    var c = read("consent");
    if (c === "1") return { analytics: true, personalization: true };
    try { return c === "0" ? { analytics: false, personalization: false, marketing: false } : JSON.parse(c); } catch (e) { return null; }
  }
  // with data-require-consent a purpose needs a grant; without it, only a refusal stops it
  function allowed(purpose) {
    return cfg.requireConsent ? !!(consent && consent[purpose]) : !(consent && consent[purpose] === false);
  }
  function decided() { return !cfg.requireConsent || !!consent; }
  function ready(fn) {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", fn);
    else fn();
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
    if (!allowed("analytics")) return false;
    var ev = { id: uuid(), type: type, time: new Date().toISOString(), source: "web", properties: props || {} };
    var w = who();
    for (var k in w) ev[k] = w[k];
    for (k in fields || {}) ev[k] = fields[k];
    ev.context = { page_url: location.href.slice(0, 2000), referrer: document.referrer.slice(0, 2000) || undefined, library: "nerve.js/1" };
    if (consent) {
      var c = ev.context.consent = { analytics: !!consent.analytics, personalization: !!consent.personalization };
      // a marketing grant counts only for a proven user (the gateway refuses it otherwise)
      if (consent.marketing === false || (consent.marketing && ev.user_id)) c.marketing = !!consent.marketing;
    }
    if (queue.length >= 100) queue.shift();
    queue.push(ev);
    if (queue.length >= 10) flush();
    else if (!timer) timer = setTimeout(flush, cfg.flushMs);
    return true;
  }
  function flush(beacon) {
    clearTimeout(timer);
    timer = null;
    if (!queue.length || !allowed("analytics")) return;
    var batch = queue.splice(0, queue.length);
    var body = JSON.stringify(batch);
    var named = batch.some(function (e) { return e.user_id; });
    var to = url("/v1/events", { identity: named ? idToken : undefined });
    if (beacon && !cfg.debug && navigator.sendBeacon && navigator.sendBeacon(to, new Blob([body], { type: "text/plain" }))) return;
    var sent = fetch(to, { method: "POST", body: body, keepalive: true, headers: { "Content-Type": "text/plain" } });
    if (cfg.debug) sent = sent.then(function (r) { return r.json(); }).then(function (b) { explain(batch, b); });
    sent.catch(function () {});
  }
  // debug mode: say which events the gateway refused, and why
  function explain(batch, b) {
    if (b.detail) console.warn("[nerve] events refused: " + JSON.stringify(b.detail));
    (b.rejected || []).forEach(function (r) {
      var why = r.errors.map(function (e) { return (e.field ? e.field + ": " : "") + e.reason; });
      console.warn("[nerve] refused " + (batch[r.index] || {}).type + ": " + why.join("; "));
    });
  }
  function page() {
    var props = { path: location.pathname, title: document.title.slice(0, 300) };
    var kind = document.body && document.body.dataset.nervePage;
    if (kind) props.page_type = kind;
    if (track("page_viewed", props)) viewed = true;
    var items = document.querySelectorAll("[data-nerve-item][data-nerve-view]");
    for (var i = 0; i < items.length; i++) {
      var el = items[i];
      var p = {};
      if (el.dataset.nerveCategory) p.category = el.dataset.nerveCategory;
      if (landing) p.recommendation_id = landing;
      track("item_viewed", p, { item_id: el.dataset.nerveItem });
    }
    if (viewed) landing = null;
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
  function fetchList(placement, item) {
    if (Date.now() < pausedUntil) return Promise.reject(new Error("paused after failures"));
    var w = who();
    var id = w.user_id || w.anonymous_id;
    if (!id) return Promise.reject(new Error("no consent"));
    var ctl = new AbortController();
    var t = setTimeout(function () { ctl.abort(); }, cfg.timeoutMs);
    // no k: the slot's own list, so that items shown by another widget can be skipped
    return fetch(url("/v1/recommendations/" + encodeURIComponent(id), { slot: placement, item: item, anonymous: w.user_id ? undefined : "true", identity: w.user_id ? idToken : undefined }), { signal: ctl.signal })
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
    if (source || !window.EventSource || Date.now() < pausedUntil || !allowed("personalization")) return;
    var w = who();
    var id = w.user_id || w.anonymous_id;
    var slots = widgets.filter(function (x) { return x.live; }).map(function (x) { return x.placement; });
    if (!id || !slots.length) return;
    source = new EventSource(url("/v1/recommendations/" + encodeURIComponent(id) + "/stream", { slots: slots.join(","), anonymous: w.user_id ? undefined : "true", identity: w.user_id ? idToken : undefined }));
    source.addEventListener("recommendations", function (m) {
      backoff = 1000;
      var ev = JSON.parse(m.data);
      widgets.forEach(function (x) { if (x.live && x.placement === ev.properties.slot && !x.itemId) x.offer(ev); });
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
  function before(a, b) { return !!(a.compareDocumentPosition(b) & 4); }

  // -- the element --------------------------------------------------------------------------
  var CSS =
    ":host{display:block;font:inherit;color:inherit}" +
    "h2{font-size:var(--nerve-heading-size,1.2em);margin:0 0 .5em}" +
    "ul{list-style:none;margin:0;padding:0;display:grid;gap:var(--nerve-gap,12px);grid-template-columns:repeat(auto-fit,minmax(min(100%,var(--nerve-card-width,220px)),1fr))}" +
    // a card is as tall as two title lines and one line below: what the placeholders hold
    "li{position:relative;min-height:var(--nerve-card-height,calc(3.605em + 23px));border:1px solid var(--nerve-border,#ddd);border-radius:var(--nerve-radius,8px);background:var(--nerve-card-bg,#fff)}" +
    "li>a{display:flex;gap:10px;align-items:center;box-sizing:border-box;height:100%;padding:10px 38px 10px 12px;color:inherit;text-decoration:none}" +
    "a:focus-visible,button:focus-visible{outline:2px solid var(--nerve-accent,#0b5fff);outline-offset:2px}" +
    "img{width:56px;height:56px;object-fit:cover;border-radius:6px;flex:none}" +
    ".text{min-width:0;overflow-wrap:anywhere}" +
    ".title{display:-webkit-box;-webkit-box-orient:vertical;-webkit-line-clamp:2;overflow:hidden;font-weight:600;line-height:1.25;color:var(--nerve-accent,#0b5fff)}" +
    ".sub{display:block;font-size:.85em;opacity:.75;margin-top:3px;line-height:1.3;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}" +
    ".meta+.reason::before{content:' \\00b7  '}" +
    ".dismiss{position:absolute;top:5px;right:5px;width:28px;height:28px;padding:0;border:0;border-radius:50%;background:none;color:inherit;opacity:.6;cursor:pointer;font-size:20px;line-height:1}" +
    ".dismiss:hover{opacity:1;background:var(--nerve-skeleton,#f2f2f2)}" +
    ".skeleton{visibility:hidden}.skeleton.on{visibility:visible}.hold{display:grid}.hold>*{grid-area:1/1}" +
    ".skeleton li{border-color:transparent;background:var(--nerve-skeleton,#f2f2f2)}" +
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
      this.placement = this.getAttribute("placement");
      this.k = parseInt(this.getAttribute("k"), 10) || null;
      this.itemId = this.getAttribute("item-id");
      this.live = this.getAttribute("live") !== "off";
      this.root = this.attachShadow({ mode: "open" });
      var style = make("style");
      style.textContent = CSS;
      this.root.appendChild(style);
      this.box = make("div");
      this.root.appendChild(this.box);
      if (!this.placement) { console.warn('[nerve] <nerve-recommendations> needs placement="..." (slot is a global HTML attribute)'); this.fallback(); return; }
      widgets.push(this);
      var self = this;
      this.wait();
      this.load();
      this.addEventListener("mouseleave", function () { self.applyPending(); });
      this.addEventListener("focusout", function () { setTimeout(function () { self.applyPending(); }, 0); });
      listen();
    }
    disconnectedCallback() {
      widgets = widgets.filter(function (w) { return w !== this; }, this);
    }
    hasFallback() {
      for (var n = this.firstChild; n; n = n.nextSibling) {
        if (n.nodeType === 1 ? n.tagName !== "TEMPLATE" : n.nodeType === 3 && n.textContent.trim()) return true;
      }
      return false;
    }
    fallback() {
      this.box.textContent = "";
      this.box.appendChild(make("slot"));
    }
    // Until a list comes, a skeleton of k cards holds their space, so that nothing below jumps
    // when the list arrives: shown after 300 ms, or kept invisible under the site's own content.
    wait() {
      if (this.current) return;
      this.box.textContent = "";
      var hold = make("div", "hold");
      var section = make("section", "skeleton");
      section.setAttribute("aria-hidden", "true");
      section.appendChild(text(make("h2", null, "heading"), this.getAttribute("heading") || "Recommended for you"));
      var ul = make("ul", null, "list");
      for (var i = 0; i < (this.k || 4); i++) ul.appendChild(make("li"));
      section.appendChild(ul);
      hold.appendChild(section);
      this.box.appendChild(hold);
      clearTimeout(this.skeletonTimer);
      if (this.hasFallback()) hold.appendChild(make("div")).appendChild(make("slot"));
      else this.skeletonTimer = setTimeout(function () { section.classList.add("on"); }, 300);
    }
    // Nothing will come: the site's own content, else collapse.
    settle() {
      clearTimeout(this.skeletonTimer);
      this.current = null;
      this.shown = null;
      if (this.hasFallback()) this.fallback();
      else this.box.textContent = "";
    }
    load() {
      var self = this;
      if (!allowed("personalization")) { if (decided()) this.settle(); return Promise.resolve(); }
      return fetchList(this.placement, this.itemId).then(
        function (ev) { clearTimeout(self.skeletonTimer); self.render(ev); },
        function (err) {
          if (!self.current) self.settle();
          if (cfg.debug) console.warn("[nerve] " + self.placement + ": " + err);
          self.dispatchEvent(new CustomEvent("nerve:error", { detail: { slot: self.placement, error: String(err) } }));
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
    // the list's items less those a widget earlier on the page shows, cut to k
    pick(props) {
      var self = this;
      var taken = {};
      widgets.forEach(function (w) {
        if (w !== self && w.shown && before(w, self)) w.shown.forEach(function (id) { taken[id] = true; });
      });
      var items = props.items.filter(function (it) { return !taken[it.item_id]; });
      return this.k ? items.slice(0, this.k) : items;
    }
    render(ev) {
      var props = ev.properties;
      var items = this.pick(props);
      if (!items.length) { this.settle(); this.current = ev; return this.yieldTo(); }
      this.current = ev;
      this.shown = items.map(function (it) { return it.item_id; });
      var self = this;
      var section = make("section");
      var hid = "nerve-h-" + this.placement;
      section.setAttribute("aria-labelledby", hid);
      var heading = make("h2", null, "heading");
      heading.id = hid;
      text(heading, this.getAttribute("heading") || "Recommended for you");
      section.appendChild(heading);
      var ul = make("ul", null, "list");
      var tpl = this.querySelector("template");
      items.forEach(function (it) { ul.appendChild(self.card(it, props, tpl)); });
      section.appendChild(ul);
      this.box.textContent = "";
      this.box.appendChild(section);
      this.watch(ul, props, items);
      this.yieldTo();
      if (window.performance && performance.mark) performance.mark("nerve:rendered:" + this.placement);
      this.dispatchEvent(new CustomEvent("nerve:rendered", { detail: { recommendation_id: props.recommendation_id, items: items.length } }));
    }
    // widgets later on the page drop what this one now shows
    yieldTo() {
      var self = this;
      widgets.forEach(function (w) {
        if (w !== self && w.current && before(self, w)) w.render(w.current);
      });
    }
    card(it, props, tpl) {
      var self = this;
      var li = make("li", null, "item");
      li.dataset.item = it.item_id;
      var d = it.item || {};
      var name = d.name || it.item_id;
      var href = safeUrl(d.url) || "#";
      var link = new URL(href, location.href);
      if (href !== "#") { link.searchParams.set("nerve_rid", props.recommendation_id); href = link.href; }
      var src = safeUrl(d.image);
      if (tpl) {
        var card = tpl.content.cloneNode(true);
        card.querySelectorAll("[data-field]").forEach(function (el) {
          var f = el.dataset.field;
          if (f === "url") el.setAttribute("href", href);
          else if (f === "image") { if (src) el.setAttribute("src", src); el.setAttribute("alt", name); }
          else text(el, f === "reason" ? it.reason : f === "name" ? name : d[f]);
        });
        li.appendChild(card);
      } else {
        var a = make("a", null, "card");
        a.setAttribute("href", href);
        if (src) {
          var img = make("img", null, "image");
          img.setAttribute("src", src);
          img.setAttribute("alt", "");  // the link is named by the title next to it
          a.appendChild(img);
        }
        var body = make("span", "text");
        body.appendChild(text(make("span", "title", "title"), name));
        var sub = make("span", "sub");
        if (d.price != null || d.category) sub.appendChild(text(make("span", "meta", d.price != null ? "price" : "category"), d.price != null ? d.price : d.category));
        if (it.reason) sub.appendChild(text(make("span", "reason", "badge"), it.reason));
        body.appendChild(sub);
        a.appendChild(body);
        li.appendChild(a);
      }
      var x = make("button", "dismiss", "dismiss");
      x.setAttribute("type", "button");
      x.setAttribute("aria-label", "Not interested in " + name);
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
      return li;
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
  function autoPage() { if (!viewed) page(); }
  var api = {
    track: function (type, props, fields) { var ok = track(type, props, fields); if (ok && type === "simulator_used") flush(); return ok; },
    page: page,
    flush: function () { flush(); },
    init: function (o) {
      if (o && o.siteKey) cfg.key = String(o.siteKey);
      if (o && o.endpoint !== undefined) cfg.endpoint = String(o.endpoint).replace(/\/$/, "");
      if (o && o.debug !== undefined) cfg.debug = !!o.debug;
    },
    identify: function (id, token) {
      if (!id || !token) { console.warn("Nerve.identify(userId, token): a token signed by the site's backend is required"); return; }
      id = String(id);
      var same = id === userId && identified();
      flush();
      userId = write("uid", id);
      idToken = write("idt", String(token));
      if (!same && allowed("analytics") && anonId) { track("user_identified", { method: "token" }, { user_id: id, anonymous_id: anonId }); flush(); }
      relisten();
      if (!same) widgets.forEach(function (w) { w.load(); });
    },
    // consent(true): analytics and personalization; consent(false): nothing; or per purpose,
    // a purpose left out (or undefined) keeping its current value
    consent: function (c) {
      var was = allowed("analytics");
      if (c === true || c === false) c = { analytics: c, personalization: c, marketing: c ? undefined : false };
      c = c || {};
      function keep(p) { return c[p] !== undefined ? !!c[p] : allowed(p); }
      var m = c.marketing !== undefined ? !!c.marketing : consent && consent.marketing;
      consent = { analytics: keep("analytics"), personalization: keep("personalization") };
      if (m === true || m === false) consent.marketing = m;
      write("consent", JSON.stringify(consent));
      if (!allowed("analytics")) queue = [];
      if (!allowed("analytics") && !allowed("personalization")) anonId = write("aid", null);
      else anonId = anonId || read("aid") || write("aid", uuid());
      if (!was && allowed("analytics")) ready(autoPage);  // the page consent was given on
      relisten();
      widgets.forEach(function (w) { w.load(); });
    },
    reset: function () {
      flush();
      userId = write("uid", null);
      idToken = write("idt", null);
      anonId = allowed("analytics") || allowed("personalization") ? write("aid", uuid()) : null;
      relisten();
    },
    config: cfg
  };
  window.Nerve = api;
  if (prior) prior.forEach(function (c) { if (api[c[0]]) api[c[0]].apply(null, c.slice(1)); });
  if (window.customElements && !customElements.get("nerve-recommendations")) customElements.define("nerve-recommendations", NerveRecommendations);
  ready(autoPage);
})();

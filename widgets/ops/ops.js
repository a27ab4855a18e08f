// The operator console: polls /ops/state every 2 s with the internal token from
// sessionStorage, and draws it. Every value from the broker is set as text (dead letters echo
// whatever was sent), never as HTML.
(() => {
  "use strict";
  const KEY = "nerve.ops.token";
  const POLL_MS = 2000;
  const $ = (sel) => document.querySelector(sel);
  let timer = null;
  let lastOk = 0;

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const fmt = (n) => Number(n).toLocaleString("en-US", { maximumFractionDigits: 1 });

  function spark(values, width = 160, height = 28) {
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("role", "img");
    const top = Math.max(1, ...values);
    svg.setAttribute("aria-label", `events/s, peak ${fmt(top)}`);
    if (values.length < 2) return svg;
    const step = width / (values.length - 1);
    const pts = values.map((v, i) => [i * step, height - 2 - (v / top) * (height - 4)]);
    const line = pts.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`);
    for (const [cls, d] of [
      ["area", `${line.join("")}L${width},${height}L0,${height}Z`],
      ["line", line.join("")],
    ]) {
      const path = document.createElementNS(NS, "path");
      path.setAttribute("class", cls);
      path.setAttribute("d", d);
      svg.append(path);
    }
    return svg;
  }

  function rows(tbody, items, render, empty) {
    const body = $(tbody);
    const cols = body.parentElement.querySelectorAll("th").length;
    body.replaceChildren(
      ...(items.length ? items.map(render) : [el("tr", {}, el("td", { colspan: cols, class: "note" }, empty))]),
    );
  }

  function entries(list, items, empty) {
    $(list).replaceChildren(
      ...(items.length
        ? items.map((e) => {
            const props = Object.entries(e.properties || {})
              .filter(([, v]) => typeof v !== "object")
              .slice(0, 6)
              .map(([k, v]) => `${k}=${v}`)
              .join(" · ");
            return el(
              "li",
              {},
              el("div", {}, el("b", {}, e.type || "?"), " ", e.user || ""),
              el("div", { class: "meta" }, `#${e.seq} · ${e.time || ""}`),
              props ? el("div", {}, props) : null,
            );
          })
        : [el("li", { class: "note" }, empty)]),
    );
  }

  function draw(s) {
    const problems = $("#problems");
    problems.hidden = !s.problems.length;
    problems.querySelector("ul").replaceChildren(...s.problems.map((p) => el("li", {}, p)));

    rows("#streams tbody", s.streams, (r) =>
      el("tr", { "data-stream": r.name },
        el("td", {}, r.name), el("td", { class: "n" }, fmt(r.messages)),
        el("td", { class: "n big" }, fmt(r.rate)), el("td", {}, spark(r.history))),
      "no streams");
    rows("#consumers tbody", s.consumers, (c) =>
      el("tr", { "data-consumer": `${c.stream}/${c.name}` },
        el("td", {}, `${c.stream} / ${c.name}`),
        el("td", { class: `n ${c.pending > 1000 ? "bad" : c.pending > 0 ? "warn" : "ok"}` }, fmt(c.pending)),
        el("td", { class: "n" }, fmt(c.ack_pending)), el("td", { class: "n" }, fmt(c.redelivered))),
      "no durable consumers");
    rows("#services tbody", Object.entries(s.services), ([name, b]) =>
      el("tr", {},
        el("td", {}, name), el("td", { class: "n" }, fmt(b.done)),
        el("td", { class: "n" }, fmt(b.behind)),
        el("td", { class: b.stuck ? "bad" : "ok" }, b.stuck ? `stuck ${fmt(b.seconds_since_progress)} s` : "ok")),
      "no heartbeats");

    const dl = s.deadletters;
    $("#dl-total").textContent = dl ? `${fmt(dl.total)} stored · ${fmt(dl.counted)} counted` : "not readable";
    rows("#dl-reasons tbody", dl ? dl.by_reason : [], (r) =>
      el("tr", { "data-source": r.source },
        el("td", {}, r.source), el("td", {}, r.reason), el("td", { class: "n big" }, fmt(r.count))),
      "none");
    $("#dl-latest").replaceChildren(
      ...(dl && dl.latest.length
        ? dl.latest.map((d) =>
            el("li", { "data-seq": d.seq },
              el("div", {}, el("b", {}, d.source), " ", d.reason),
              el("div", { class: "meta" }, `#${d.seq} · ${d.received_at}${d.origin ? " · " + d.origin : ""}`)))
        : [el("li", { class: "note" }, "no dead letters")]),
    );

    $("#models").replaceChildren(
      ...(s.models.length
        ? s.models.map((m) =>
            el("div", { class: "model", "data-slot": m.slot },
              el("b", {}, m.slot), " ", m.model, " ", el("code", {}, m.version),
              el("div", { class: "meta note" }, m.created_at || ""),
              el("details", {}, el("summary", {}, "card"), el("pre", {}, JSON.stringify(m.card, null, 2)))))
        : [el("p", { class: "note" }, "no active model")]),
    );
    $("#experiments").textContent = s.experiments.note || "";
    entries("#signals", s.signals.entries, "no signals yet");
    const note = $("#anomalies-note");
    note.hidden = !s.anomalies.note;
    note.textContent = s.anomalies.note || "";
    entries("#anomalies", s.anomalies.available ? s.anomalies.entries : [], s.anomalies.available ? "none yet" : "—");
    const fresh = $("#freshness");
    fresh.hidden = !s.freshness;
    fresh.textContent = s.freshness || "";
  }

  function status(text, cls) {
    const node = $("#status");
    node.textContent = text;
    node.className = `status ${cls}`;
  }

  function signedOut(message) {
    clearTimeout(timer);
    sessionStorage.removeItem(KEY);
    $("#console").hidden = true;
    $("#signout").hidden = true;
    $("#login").hidden = false;
    $("#login-error").textContent = message || "";
    status(message ? "refused" : "not signed in", message ? "refused" : "idle");
  }

  async function poll() {
    const token = sessionStorage.getItem(KEY);
    if (!token) return signedOut();
    try {
      const r = await fetch("/ops/state", { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
      if (r.status === 401 || r.status === 403) {
        const body = await r.json().catch(() => ({}));
        return signedOut(`refused (${r.status}): ${body.detail || "not an internal token"}`);
      }
      if (r.status === 503) {  // the gateway answers, the ops service behind it does not
        const body = await r.json().catch(() => ({}));
        status(body.detail || "the ops service did not answer", "stale");
        timer = setTimeout(poll, POLL_MS);
        return;
      }
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const s = await r.json();
      $("#login").hidden = true;
      $("#console").hidden = false;
      $("#signout").hidden = false;
      draw(s);
      lastOk = Date.now();
      document.body.dataset.updated = String(s.at);
      status(`live · ${new Date(s.at * 1000).toLocaleTimeString()}${s.nats_connected ? "" : " · broker disconnected"}`, s.nats_connected ? "live" : "stale");
    } catch (err) {
      const age = lastOk ? ` (last update ${Math.round((Date.now() - lastOk) / 1000)} s ago)` : "";
      status(`cannot reach the gateway${age}`, "stale");
    }
    timer = setTimeout(poll, POLL_MS);
  }

  $("#login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("#token").value.trim();
    if (!token) return;
    sessionStorage.setItem(KEY, token);
    $("#token").value = "";
    $("#login-error").textContent = "";
    clearTimeout(timer);
    poll();
  });
  $("#signout").addEventListener("click", () => signedOut());
  if (sessionStorage.getItem(KEY)) poll();
  else signedOut();
})();

// Shoal dashboard: follows /api/v1/stream (server-sent events) and redraws.
// Every piece of registry text is put in the page with textContent or
// setAttribute, never parsed as HTML.
"use strict";

const WINDOW_MS = 10 * 60 * 1000;
const MIN_SPAN_MS = 60 * 1000;
const SVG = "http://www.w3.org/2000/svg";
const history = new Map(); // service -> [sample], oldest first
let lastSnapshot = null;
let streamUp = false;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, String(v));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function age(secs) {
  const s = Math.max(0, Math.floor(secs));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}

function num(v, digits) {
  if (v === null || v === undefined) return "–";
  return Number(v).toFixed(digits);
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function remember(service, sample) {
  if (!sample) return;
  let ring = history.get(service);
  if (!ring) history.set(service, (ring = []));
  if (ring.length && ring[ring.length - 1].at_ms >= sample.at_ms) return;
  ring.push(sample);
  const oldest = sample.at_ms - WINDOW_MS;
  while (ring.length && ring[0].at_ms < oldest) ring.shift();
}

// One small line chart: series = [{values: [[t, v]], color, label}].
function chart(title, current, series, nowMs) {
  const W = 300, H = 70, PAD = 2;
  let max = 0;
  for (const s of series) for (const [, v] of s.values) if (v !== null && v > max) max = v;
  max = max > 0 ? max * 1.15 : 1;
  const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  box.append(svg("title"));
  box.firstChild.textContent = title;
  for (const f of [0.25, 0.5, 0.75]) {
    box.append(svg("line", { class: "grid", x1: 0, x2: W, y1: H * f, y2: H * f }));
  }
  // The span shown: the history there is, between one and ten minutes, so a
  // freshly started gateway's charts are not a sliver at the right edge.
  let oldest = nowMs;
  for (const s of series) if (s.values.length) oldest = Math.min(oldest, s.values[0][0]);
  const span = Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, nowMs - oldest));
  const x = (t) => W - ((nowMs - t) / span) * W;
  const y = (v) => H - PAD - (v / max) * (H - 2 * PAD);
  for (const s of series) {
    // A gap (null) starts a new line.
    let points = [];
    const flush = () => {
      if (points.length) box.append(svg("polyline", { points: points.join(" "), stroke: s.color }));
      points = [];
    };
    for (const [t, v] of s.values) {
      if (v === null || v === undefined) { flush(); continue; }
      points.push(`${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    }
    flush();
  }
  return el("div", { class: "chart" },
    el("div", { class: "chart-title" }, el("span", {}, title), el("b", {}, current)),
    box,
    el("div", { class: "chart-axis" }, el("span", {}, `−${Math.round(span / 60000)} min`),
      el("span", {}, `max ${max > 1 ? (max / 1.15).toFixed(1) : "–"}`), el("span", {}, "now")));
}

function charts(panel, nowMs) {
  const ring = history.get(panel.name) || [];
  const pts = (f) => ring.map((s) => [s.at_ms, f(s)]);
  const s = panel.sample || {};
  return el("div", { class: "charts" },
    chart("replicas: ready (green) / desired (grey)",
      `${panel.ready_instances} / ${panel.desired ?? "–"}`,
      [{ values: pts((x) => x.desired ?? null), color: "#8c959f", label: "desired" },
       { values: pts((x) => x.ready), color: "#1a7f37", label: "ready" }], nowMs),
    chart("requests/s", num(s.rate ?? panel.rate, 1),
      [{ values: pts((x) => x.rate), color: "#0969da", label: "rate" }], nowMs),
    chart("p95 latency (ms)", num(s.p95_ms ?? panel.p95_ms, 1),
      [{ values: pts((x) => x.p95_ms), color: "#bc4c00", label: "p95" }], nowMs));
}

function instanceCard(i) {
  const labels = Object.entries(i.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  const fields = [
    ["address", i.addr],
    ["version", i.version || "–"],
    ["age", age(i.age_secs)],
    ["in flight", i.in_flight],
    ["rate", num(i.rate, 1) + "/s"],
    ["p95", i.p95_ms === null ? "–" : num(i.p95_ms, 1) + " ms"],
    ["errors", `${i.errors_total} (${num(i.error_rate, 1)}/s)`],
  ];
  if (i.zone) fields.push(["zone", i.zone]);
  if (labels) fields.push(["labels", labels]);
  if (i.ejected) fields.push(["ejected for", num((i.ejected_for_ms || 0) / 1000, 1) + " s"]);
  const dl = el("dl");
  for (const [k, v] of fields) dl.append(el("dt", {}, k), el("dd", { "data-field": k }, v));
  return el("article", { class: `instance state-${i.state}`, "data-instance-id": i.id, "data-state": i.state },
    el("span", { class: "state" }, i.state),
    el("div", { class: "id", title: i.id }, i.id),
    dl);
}

function eventItem(e) {
  const text = e.reason + (e.bounded_by ? ` (bounded by ${e.bounded_by})` : "");
  return el("li", {},
    el("time", { datetime: e.at }, new Date(e.at).toLocaleTimeString([], { hour12: false })),
    el("span", { class: "kind" }, `${e.kind} ${e.current}→${e.desired}`),
    el("span", { class: "reason" }, text),
    e.instance ? el("span", { class: "muted" }, ` · ${e.instance}`) : null);
}

function servicePanel(p, nowMs) {
  const head = el("div", { class: "service-head" },
    el("h2", {}, p.name),
    el("span", {}, `${p.ready_instances} ready of ${p.total_instances}`),
    el("span", { class: "muted" }, `desired ${p.desired ?? "–"}`),
    el("span", { class: "muted" }, `${num(p.rate, 1)} req/s · p95 ${p.p95_ms === null ? "–" : num(p.p95_ms, 1) + " ms"} · ${p.errors_total} errors · ${p.held_now} held`));
  if (p.policy) {
    const pol = p.policy;
    head.append(el("span", { class: "muted" },
      `policy ${pol.metric} target ${pol.target}, ${pol.min}..${pol.max}`));
    if (pol.pinned !== undefined && pol.pinned !== null) {
      head.append(el("span", { class: "badge", "data-pinned": pol.pinned }, `pinned at ${pol.pinned}`));
    }
  }
  if (p.spec_version) {
    head.append(el("span", { class: "muted", "data-spec-version": p.spec_version, title: p.spec_version },
      `spec ${p.spec_version.slice(0, 8)}`));
  }
  if (p.rollout) {
    // With a spec: how many instances run its version; without, how many
    // of the instances being replaced are gone.
    const old = p.rollout.replacing;
    const progress = p.on_spec_version !== null && p.on_spec_version !== undefined
      ? `${p.on_spec_version}/${p.total_instances} on new version`
      : old ? `${old.filter((id) => !p.instances.some((i) => i.id === id && i.state !== "draining")).length}/${old.length} replaced`
      : "waiting for the autoscaler";
    head.append(el("span", { class: "badge", "data-rollout": progress },
      `rolling: ${progress} (surge ${p.rollout.max_surge}, unavailable ${p.rollout.max_unavailable})`));
  }
  const cards = el("div", { class: "instances" });
  if (p.instances.length === 0) cards.append(el("p", { class: "empty" }, "no instances"));
  for (const i of p.instances) cards.append(instanceCard(i));
  const events = el("ol", { class: "events" });
  for (const e of p.events) events.append(eventItem(e));
  return el("section", { class: "service", "data-service": p.name },
    head,
    charts(p, nowMs),
    el("h3", {}, "Instances"),
    cards,
    el("h3", {}, "Autoscaler events"),
    p.events.length ? events : el("p", { class: "empty" }, "no scaling events"));
}

function banner() {
  const node = document.getElementById("banner");
  let text = null;
  if (!streamUp) {
    text = "Gateway unreachable: the stream is reconnecting; what you see may be stale.";
  } else if (lastSnapshot && lastSnapshot.registry !== "connected") {
    text = "Registry unreachable: " + (lastSnapshot.registry_detail || "etcd does not answer.");
  }
  node.hidden = text === null;
  node.textContent = text || "";
  node.setAttribute("data-registry", lastSnapshot ? lastSnapshot.registry : "unknown");
}

function render(snapshot) {
  lastSnapshot = snapshot;
  for (const p of snapshot.services) remember(p.name, p.sample);
  document.getElementById("gateway-id").textContent = snapshot.gateway_id;
  document.getElementById("updated").textContent = clock(snapshot.at_ms);
  const main = document.getElementById("services");
  const panels = snapshot.services.map((p) => servicePanel(p, snapshot.at_ms));
  if (panels.length === 0) panels.push(el("p", { class: "empty" }, "No services yet."));
  main.replaceChildren(...panels);
  banner();
}

function live(state, text) {
  const node = document.getElementById("live");
  node.setAttribute("data-state", state);
  node.textContent = text;
}

function connect() {
  const source = new EventSource("/api/v1/stream");
  source.addEventListener("open", () => { streamUp = true; live("live", "live"); banner(); });
  source.addEventListener("error", () => { streamUp = false; live("lost", "reconnecting…"); banner(); });
  source.addEventListener("history", (msg) => {
    history.clear();
    for (const [service, samples] of Object.entries(JSON.parse(msg.data))) history.set(service, samples);
  });
  source.addEventListener("snapshot", (msg) => {
    streamUp = true;
    live("live", "live");
    render(JSON.parse(msg.data));
  });
}

connect();

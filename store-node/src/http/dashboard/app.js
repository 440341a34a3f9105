// featurestore segment dashboard: polls /ui/api/segments of this node and its peers, merges their counts
// and latency histograms, and shows the transitions every node decides from its /ui/events feed.
// Everything shown is set with textContent: user ids and feature values come from events.
"use strict";

const POLL_MS = 2000;
const FEED_ROWS = 100;
const nodes = new Map(); // origin -> {name, view, up, prev: {t, counts}, rates: {segment: [in/s, out/s]}, source}
const feed = [];
let received = 0;
let segmentNames = [];

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c);
  return tr;
}

function ms(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (v < 1) return (v * 1000).toFixed(0) + " µs";
  if (v < 1000) return (Number.isInteger(v) || v >= 10 ? v.toFixed(0) : v.toFixed(2)) + " ms";
  return (v / 1000).toFixed(1) + " s";
}

function reading(r) {
  if (!r || r.type === "absent") return "no data";
  if (r.type === "time") return new Date(r.value).toISOString().replace("T", " ").replace("Z", "");
  return String(r.value);
}

function addNode(origin) {
  if (nodes.has(origin)) return;
  const node = { name: new URL(origin).host, view: null, up: false, prev: null, rates: {}, source: null };
  nodes.set(origin, node);
  openFeed(origin, node);
}

function openFeed(origin, node) {
  const source = new EventSource(origin + "/ui/events?tail=20");
  node.source = source;
  source.addEventListener("open", () => { node.feedOpen = true; renderStatus(); });
  source.addEventListener("error", () => { node.feedOpen = false; renderStatus(); });
  source.addEventListener("change", (e) => {
    try { addChange(JSON.parse(e.data)); } catch (err) { console.warn("bad change", err); }
  });
  source.addEventListener("gap", (e) => console.warn("feed gap from", origin, e.data));
}

function addChange(c) {
  received += 1;
  feed.push(c);
  feed.sort((a, b) => b.change.at_ms - a.change.at_ms || b.seq - a.seq);
  if (feed.length > FEED_ROWS) feed.length = FEED_ROWS;
  renderFeed();
}

function cause(c) {
  if (c.change.resolves && c.change.resolves.length) return "conflict resolved";
  if (c.deadline_ms !== null && c.deadline_ms !== undefined) return "timer";
  if (c.change.why && c.change.why.message_id) return "event";
  return "re-evaluation";
}

function renderFeed() {
  const body = $("feed").tBodies[0];
  body.replaceChildren(...feed.map((c) => {
    const kind = c.change.kind;
    const latency = c.accepted_ms !== null && c.accepted_ms !== undefined
      ? (c.change.at_ms > c.accepted_ms ? ms(c.change.at_ms - c.accepted_ms) : "< 1 ms") : "";
    const time = new Date(c.change.at_ms).toLocaleTimeString();
    const tr = row([el("td", time), el("td", c.change.user), el("td", kind === "entered" ? "→ entered" : "← exited", kind),
      el("td", c.change.segment), el("td", cause(c)), el("td", c.owner), el("td", latency, "num")]);
    tr.title = "dedup key " + c.change.segment + "/" + c.change.user + "/" + c.change.dot.actor + ":" + c.change.dot.counter;
    tr.addEventListener("click", () => explain(c.change.user, c.change.segment));
    return tr;
  }));
  $("feed-count").textContent = received + " received";
  document.body.dataset.feed = String(feed.length);
}

async function poll(origin, node) {
  try {
    const res = await fetch(origin + "/ui/api/segments", { cache: "no-store" });
    if (!res.ok) throw new Error("HTTP " + res.status);
    const body = await res.json();
    const now = performance.now();
    const counts = {};
    for (const c of body.view.counts) counts[c.segment] = [c.entries, c.exits];
    if (node.prev) {
      const dt = (now - node.prev.t) / 1000;
      for (const [segment, [entries, exits]] of Object.entries(counts)) {
        const before = node.prev.counts[segment] || [entries, exits];
        node.rates[segment] = [(entries - before[0]) / dt, (exits - before[1]) / dt];
      }
    }
    node.prev = { t: now, counts };
    node.view = body.view;
    node.name = body.view.node || node.name;
    node.up = true;
    if (origin === location.origin) for (const peer of body.peers) addNode(peer);
  } catch (err) {
    node.up = false;
    node.rates = {};
  }
}

function mergedLatency(key) {
  const views = [...nodes.values()].filter((n) => n.up && n.view).map((n) => n.view[key]);
  const withSamples = views.filter((v) => v.count > 0);
  if (withSamples.length === 0) return null;
  const total = withSamples.reduce((s, v) => s + v.count, 0);
  const bounds = withSamples[0].buckets.map((b) => b[0]);
  const cumulative = bounds.map((_, i) => withSamples.reduce((s, v) => s + (v.buckets[i] ? v.buckets[i][1] : 0), 0));
  const quantile = (q) => {
    if (withSamples.length === 1) return null;
    const i = cumulative.findIndex((c) => c >= q * total);
    return i < 0 ? Math.max(...withSamples.map((v) => v.max_ms)) : bounds[i];
  };
  const one = withSamples.length === 1 ? withSamples[0] : null;
  return {
    count: total, bounds, cumulative, exact: !!one,
    p50: one ? one.p50_ms : quantile(0.5),
    p99: one ? one.p99_ms : quantile(0.99),
    p999: one ? one.p999_ms : quantile(0.999),
    max: Math.max(...withSamples.map((v) => v.max_ms)),
  };
}

function render() {
  const live = [...nodes.values()].filter((n) => n.up && n.view);
  const first = live.find((n) => n.view.segments.length) || live[0];
  const defs = first ? first.view.segments : [];
  const body = $("segments").tBodies[0];
  let members = 0, entryRate = 0, exitRate = 0;
  body.replaceChildren(...defs.map((def) => {
    let m = 0, e = 0, x = 0, er = 0, xr = 0;
    for (const n of live) {
      const c = n.view.counts.find((c) => c.segment === def.name);
      if (c) { m += c.members; e += c.entries; x += c.exits; }
      const r = n.rates[def.name];
      if (r) { er += r[0]; xr += r[1]; }
    }
    members += m; entryRate += er; exitRate += xr;
    const tr = row([el("td", def.name), el("td", def.rule, "rule"), el("td", m, "num"), el("td", er.toFixed(1), "num entered"),
      el("td", xr.toFixed(1), "num exited"), el("td", e, "num"), el("td", x, "num")]);
    tr.dataset.segment = def.name;
    return tr;
  }));
  $("total-members").textContent = String(members);
  $("total-entries").textContent = entryRate.toFixed(1);
  $("total-exits").textContent = exitRate.toFixed(1);
  const fills = live.flatMap((n) => n.view.backfills.map((b) => n.name + ": backfilling " + b.segment + " " + b.done + "/" + b.total));
  $("backfills").textContent = fills.join(" · ");

  const names = defs.map((d) => d.name);
  if (names.join() !== segmentNames.join()) {
    segmentNames = names;
    const select = $("why-segment");
    const chosen = select.value;
    select.replaceChildren(...names.map((n) => { const o = el("option", n); o.value = n; return o; }));
    if (names.includes(chosen)) select.value = chosen;
  }

  const lat = mergedLatency("event_latency");
  $("lat-p50").textContent = lat ? (lat.exact ? "" : "≤ ") + ms(lat.p50) : "–";
  $("lat-p99").textContent = lat ? (lat.exact ? "" : "≤ ") + ms(lat.p99) : "–";
  $("lat-p999").textContent = lat ? (lat.exact ? "" : "≤ ") + ms(lat.p999) : "–";
  renderHistogram(lat);
  const lag = mergedLatency("timer_lag");
  $("timer-lag").textContent = lag
    ? lag.count + " timer-fired transitions: p50 " + ms(lag.p50) + ", p99 " + ms(lag.p99) + ", max " + ms(lag.max)
    : "no timer-fired transitions yet";

  const badges = [...nodes.entries()].map(([origin, n]) => {
    const b = el("span", n.name, "node " + (n.up ? "up" : "down"));
    b.title = origin + (n.up ? " (answering)" : " (not answering)");
    return b;
  });
  $("nodes").replaceChildren(...badges);
  renderStatus();
  if (live.length) document.body.dataset.state = "live";
}

function renderHistogram(lat) {
  const box = $("histogram");
  if (!lat) {
    box.replaceChildren();
    $("latency-note").textContent = "no event-caused transitions yet";
    return;
  }
  const counts = lat.cumulative.map((c, i) => c - (i ? lat.cumulative[i - 1] : 0));
  let last = counts.length - 1;
  while (last > 0 && counts[last] === 0) last -= 1;
  let firstNonZero = counts.findIndex((c) => c > 0);
  firstNonZero = Math.max(0, Math.min(firstNonZero, last - 7));
  const shown = counts.slice(firstNonZero, last + 1);
  const peak = Math.max(1, ...shown);
  box.replaceChildren(...shown.map((c, j) => {
    const bar = el("div", null, "bar");
    bar.style.height = (100 * c / peak) + "%";
    bar.title = "≤ " + ms(lat.bounds[firstNonZero + j]) + ": " + c;
    bar.appendChild(el("span", ms(lat.bounds[firstNonZero + j])));
    return bar;
  }));
  $("latency-note").textContent = lat.count + " event-caused transitions, event accepted at the first node → change published on the owner; max " + ms(lat.max) + (lat.exact ? "" : " (percentiles: bucket upper bounds, merged over nodes)");
}

function renderStatus() {
  const all = [...nodes.values()];
  const up = all.filter((n) => n.up).length;
  const feeds = all.filter((n) => n.feedOpen).length;
  const s = $("status");
  s.textContent = up + "/" + all.length + " nodes answering, " + feeds + " live feeds";
  s.classList.toggle("live", feeds > 0);
}

async function why(origin, q) {
  const res = await fetch(origin + "/ui/api/why?" + q, { cache: "no-store" });
  return { ok: res.ok, status: res.status, body: await res.json() };
}

// Every node answers from its own copy; the owner's change log holds the last transition, so the answer
// with the newest one wins (else this node's).
async function explain(user, segment) {
  $("why-user").value = user;
  if (segment) $("why-segment").value = segment;
  const out = $("why");
  try {
    const q = new URLSearchParams({ user, segment: segment || $("why-segment").value });
    const origins = [location.origin, ...[...nodes.entries()].filter(([o, n]) => o !== location.origin && n.up).map(([o]) => o)];
    const answers = (await Promise.allSettled(origins.map((o) => why(o, q))))
      .filter((a) => a.status === "fulfilled").map((a) => a.value);
    const local = answers[0];
    if (!local || !local.ok) {
      const message = local ? (local.body.message || ("HTTP " + local.status)) : "no node answered";
      out.replaceChildren(el("div", message, "error"));
      return;
    }
    const newest = answers.filter((a) => a.ok && a.body.last)
      .sort((a, b) => b.body.last.change.at_ms - a.body.last.change.at_ms)[0];
    const body = (newest || local).body;
    const dl = document.createElement("dl");
    const add = (k, v, cls) => { dl.appendChild(el("dt", k)); dl.appendChild(el("dd", v, cls)); };
    add("rule", body.rule);
    add("member", body.member ? "yes" : "no", body.member ? "entered" : "exited");
    add("rule now", "Ok" in body.value ? String(body.value.Ok) : "error: " + body.value.Err);
    for (const [k, v] of Object.entries(body.read)) add(k, reading(v));
    if (body.last) {
      const l = body.last;
      add("last transition", l.change.kind + " at " + new Date(l.change.at_ms).toISOString() + " by " + l.owner + " (" + cause(l) + (l.change.why.message_id ? " " + l.change.why.message_id : "") + ")");
    } else {
      add("last transition", "none in " + body.node + "'s change log");
    }
    add("next timer", body.next_deadline_ms ? new Date(body.next_deadline_ms).toISOString() : "none");
    add("answered by", body.node);
    out.replaceChildren(dl);
    out.dataset.user = user;
  } catch (err) {
    out.replaceChildren(el("div", String(err), "error"));
  }
}

$("why-form").addEventListener("submit", (e) => {
  e.preventDefault();
  explain($("why-user").value.trim(), $("why-segment").value);
});

async function tick() {
  await Promise.all([...nodes.entries()].map(([origin, node]) => poll(origin, node)));
  render();
  setTimeout(tick, POLL_MS);
}

addNode(location.origin);
tick();

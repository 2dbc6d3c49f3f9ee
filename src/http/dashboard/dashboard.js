"use strict";
// The dashboard page: one EventSource on /dashboard/events, one render per
// sample. Every value goes in through textContent, never as HTML: node names
// come from the shared roster.
(() => {
  const $ = (id) => document.getElementById(id);
  const numbers = new Intl.NumberFormat("en");
  const count = (n) => (n === null || n === undefined ? "–" : numbers.format(n));
  const rate = (r) =>
    r === null || r === undefined ? "–" : r < 10 ? r.toFixed(1) : numbers.format(Math.round(r));

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const d = Math.floor(seconds / 86400), h = Math.floor((seconds % 86400) / 3600);
    const m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (d > 0) return `${d}d ${h}h`;
    if (h > 0) return `${h}h ${m}m`;
    if (m > 0) return `${m}m ${s}s`;
    return `${s}s`;
  }

  function seconds(value) {
    if (value < 0.001) return `${Math.round(value * 1e6)} µs`;
    if (value < 1) return `${+(value * 1e3).toFixed(2)} ms`;
    return `${+value.toFixed(2)} s`;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function set(id, text, className) {
    const node = $(id);
    node.textContent = text;
    if (className !== undefined) node.className = className;
  }

  function link(state, text) {
    set("link", text, `pill pill-${state}`);
  }

  const REASONS = {
    bad_request: "Bad request", not_registered: "Topic not registered", limit: "Over a limit",
    auth_required: "Auth required", unauthorized: "Unauthorized", auth_timeout: "Auth timeout",
  };

  function cell(row, label, field, text, className) {
    const td = el("td", className, text);
    td.dataset.label = label;
    if (field) td.dataset.field = field;
    row.append(td);
    return td;
  }

  function nodeRow(node) {
    const row = el("tr", node.this_node ? "this-node" : "");
    row.dataset.nodeId = node.id;
    const name = cell(row, "Node", "name", "", "name");
    name.append(el("span", "", node.name || "(no name)"));
    if (node.this_node) name.append(el("span", "tag", "this node"));
    name.append(el("span", "id", node.id));
    cell(row, "State", "alive", node.alive ? "alive" : "dead", node.alive ? "alive" : "dead");
    cell(row, "Version", "version", node.version || "–");
    cell(row, "Sockets", "sockets", count(node.connected_sockets), "num");
    cell(row, "Clients", "clients", count(node.connected_clients), "num");
    cell(row, "Topics", "topics", count(node.active_topics), "num");
    cell(row, "Uptime", "uptime", duration(node.uptime_seconds));
    cell(row, "Mode", "mode", node.mode || "unknown", node.mode ? "" : "unknown");
    cell(row, "Redis", "redis", node.redis || "unknown", node.redis ? "" : "unknown");
    const seen = node.this_node ? "now"
      : node.seen_seconds_ago === null ? "unknown" : `${duration(node.seen_seconds_ago)} ago`;
    cell(row, "Seen", "seen", seen, node.seen_seconds_ago === null ? "unknown" : "");
    return row;
  }

  function histogram(latency) {
    const box = $("latency");
    const largest = Math.max(1, ...latency.buckets.map(([, n]) => n));
    const parts = [];
    let below = 0;
    for (const [bound, n] of latency.buckets) {
      const label = bound === null ? `> ${seconds(below)}` : `≤ ${seconds(bound)}`;
      if (bound !== null) below = bound;
      const track = el("div", "track");
      const fill = el("div", "fill");
      fill.style.width = `${(100 * n) / largest}%`;
      if (n === 0) fill.style.minWidth = "0";
      track.append(fill);
      parts.push(el("span", "label", label), track, el("span", "count", count(n)));
    }
    box.replaceChildren(...parts);
    set("latency-note", latency.count === 0 ? "No publish handled yet."
      : `${count(latency.count)} publishes, mean ${seconds(latency.mean_seconds)}.`);
  }

  function problem(id, value, absent) {
    set(id, value === null ? absent : count(value), value ? "nonzero" : "");
  }

  function render(s) {
    const own = s.nodes.find((n) => n.this_node) || {};
    set("node-name", own.name || s.node_id);
    document.title = `skywave · ${own.name || s.node_id}`;
    set("mode", s.mode, `big mode-${s.mode}`);
    set("redis", s.redis === "not used" ? "Redis not used (single mode)"
      : s.redis === "away" ? `Redis away${s.redis_error ? ": " + s.redis_error : ""}` : "Redis connected");
    set("sockets", count(own.connected_sockets));
    const clients = own.connected_clients;
    set("max-sockets", `of ${count(s.max_sockets)} allowed · ${count(clients)} ${clients === 1 ? "client" : "clients"}`);
    const alive = s.nodes.filter((n) => n.alive);
    set("cluster-sockets", count(alive.reduce((sum, n) => sum + n.connected_sockets, 0)));
    set("live-nodes", `${alive.length} of ${s.nodes.length} nodes alive`);
    set("publishes-rate", rate(s.publishes_per_second));
    set("publishes-total", `${count(s.publishes)} since start`);
    set("deliveries-rate", rate(s.deliveries_per_second));
    set("deliveries-total", `${count(s.deliveries)} frames since start`);
    set("registered-topics", count(s.registered_topics));
    set("roster-note", s.roster_known ? ""
      : "The roster cannot be read while Redis is away: only this node is shown.");
    $("nodes").replaceChildren(...s.nodes.map(nodeRow));
    histogram(s.latency);
    problem("dropped-frames", s.dropped_frames);
    problem("lagged-notices", s.lagged_notices);
    problem("envelopes-dropped", s.envelopes_dropped, "n/a (single mode)");
    const refusals = [];
    for (const [reason, n] of s.refusals) {
      const dd = el("dd", n ? "nonzero" : "", count(n));
      dd.dataset.reason = reason;
      refusals.push(el("dt", "", REASONS[reason] || reason), dd);
    }
    $("refusals").replaceChildren(...refusals);
    set("updated", `Updated ${new Date().toLocaleTimeString()}`);
  }

  // One stream per page. The browser reconnects a dropped stream by itself;
  // a refused one (401 once the session is over, 503 while the node stops)
  // is retried every 5 s, and an ended session goes back to the login page.
  function connect() {
    const source = new EventSource("/dashboard/events");
    source.addEventListener("sample", (event) => {
      link("live", "live");
      render(JSON.parse(event.data));
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        link("down", "disconnected");
        setTimeout(recheck, 5000);
      } else {
        link("wait", "reconnecting…");
      }
    });
  }

  function recheck() {
    fetch("/dashboard/live", { redirect: "manual", cache: "no-store" }).then(
      (response) => (response.type === "opaqueredirect" ? location.assign("/dashboard") : connect()),
      () => setTimeout(recheck, 5000),
    );
  }

  connect();
})();

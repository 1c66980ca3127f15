// Plexus dashboard: reads the control plane's /api/graph, /api/proxies and /api/history every 2 s and draws
// the service graph (SVG), golden metrics per service (small SVG line charts) and push status per sidecar.
// No libraries. Names come from sidecars, so they are only ever set as text, never parsed as HTML.
// Elements carry data attributes (data-service, data-edge="from->to", data-rps, data-requests, data-state, ...)
// with the raw figures, so tests and scripts read what the page shows.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";
  const COL_WIDTH = 420;  // node plus room for an edge label between columns
  const ROW_HEIGHT = 84;
  const NODE_W = 190;
  const NODE_H = 44;
  const MARGIN = 24;

  let refreshes = 0;

  function svg(tag, attrs, parent) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    if (parent) parent.appendChild(el);
    return el;
  }

  function html(tag, attrs, text, parent) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    if (text !== undefined && text !== null) el.textContent = String(text);
    if (parent) parent.appendChild(el);
    return el;
  }

  function pct(rate) { return (100 * rate).toFixed(rate >= 0.9995 || rate === 0 ? 0 : 1) + "%"; }
  function rps(v) { return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2); }
  function ms(v) { return v >= 100 ? v.toFixed(0) + " ms" : v.toFixed(1) + " ms"; }

  function currentWindow() {
    const w = new URLSearchParams(location.search).get("window");
    return w && Number(w) > 0 ? w : "30";
  }

  async function getJSON(path) {
    const response = await fetch(path, { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) throw new Error(path + ": " + (body.error || response.status));
    return body;
  }

  // ------------------------------------------------------------------ graph layout
  // Layers by longest path from the callers, after dropping the edges that close a cycle (found by a DFS in
  // name order, so the layout is the same on every refresh). Inside a layer: workloads, then services, by name.
  function layers(nodes, edges) {
    const out = new Map(nodes.map((n) => [n.id, []]));
    for (const e of edges) if (out.has(e.source) && out.has(e.target)) out.get(e.source).push(e.target);
    for (const list of out.values()) list.sort();
    const order = nodes.map((n) => n.id);
    const state = new Map();  // 1: on the DFS stack, 2: done
    const kept = new Map(order.map((id) => [id, []]));
    const topo = [];
    function visit(id) {
      state.set(id, 1);
      for (const t of out.get(id)) {
        if (state.get(t) === 1) continue;  // a back edge: it would close a cycle
        kept.get(id).push(t);
        if (!state.has(t)) visit(t);
      }
      state.set(id, 2);
      topo.push(id);
    }
    const incoming = new Set(edges.map((e) => e.target));
    for (const id of order) if (!incoming.has(id) && !state.has(id)) visit(id);
    for (const id of order) if (!state.has(id)) visit(id);
    const layer = new Map(order.map((id) => [id, 0]));
    for (const id of topo.reverse()) {
      for (const t of kept.get(id)) layer.set(t, Math.max(layer.get(t), layer.get(id) + 1));
    }
    // a service nobody calls still sits right of the workloads
    for (const n of nodes) if (n.kind === "service" && layer.get(n.id) === 0) layer.set(n.id, 1);
    return layer;
  }

  function renderGraph(graph) {
    const root = document.getElementById("graph");
    while (root.firstChild) root.removeChild(root.firstChild);
    const nodes = graph.nodes;
    const edges = graph.edges;
    document.getElementById("graph-empty").hidden = nodes.length > 0;
    const layer = layers(nodes, edges);
    const columns = new Map();
    for (const n of nodes) {
      const l = layer.get(n.id);
      if (!columns.has(l)) columns.set(l, []);
      columns.get(l).push(n);
    }
    const pos = new Map();
    let rows = 1;
    for (const [l, list] of columns) {
      list.sort((a, b) => (a.kind === b.kind ? (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
                                             : a.kind === "workload" ? -1 : 1));
      rows = Math.max(rows, list.length);
      list.forEach((n, i) => pos.set(n.id, { x: MARGIN + l * COL_WIDTH, y: MARGIN + i * ROW_HEIGHT }));
    }
    const maxLayer = Math.max(0, ...columns.keys());
    root.setAttribute("width", String(2 * MARGIN + maxLayer * COL_WIDTH + NODE_W));
    root.setAttribute("height", String(2 * MARGIN + (rows - 1) * ROW_HEIGHT + NODE_H));
    root.dataset.nodes = String(nodes.length);
    root.dataset.edges = String(edges.length);
    root.dataset.window = String(graph.window_seconds);

    const defs = svg("defs", {}, root);
    const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
                                   markerHeight: 7, orient: "auto-start-reverse" }, defs);
    svg("path", { d: "M 0 0 L 10 5 L 0 10 z" }, marker);

    const edgeLayer = svg("g", { class: "edges" }, root);
    for (const e of edges) {
      const a = pos.get(e.source);
      const b = pos.get(e.target);
      if (!a || !b) continue;
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
      const bend = Math.max(40, Math.abs(x2 - x1) / 2);
      const g = svg("g", { class: "edge edge-" + e.kind }, edgeLayer);
      g.classList.toggle("idle", e.requests === 0);
      g.classList.toggle("failing", e.requests > 0 && e.success_rate < 0.95);
      if (e.kind === "call") g.dataset.edge = e.source_workload + "->" + e.destination_service;
      else g.dataset.serves = e.destination_service + "->" + e.destination_workload;
      g.dataset.requests = String(e.requests);
      g.dataset.rps = String(e.rps);
      g.dataset.successRate = String(e.success_rate);
      g.dataset.p50 = String(e.latency_p50_ms);
      g.dataset.p99 = String(e.latency_p99_ms);
      const backwards = x2 <= x1;
      const d = backwards
        ? `M ${x1} ${y1} C ${x1 + 60} ${y1 - 70}, ${x2 - 60} ${y2 - 70}, ${x2} ${y2}`
        : `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`;
      svg("path", { d: d, "marker-end": "url(#arrow)" }, g);
      svg("title", {}, g).textContent = `${e.source.replace(/^\w+:/, "")} → ${e.target.replace(/^\w+:/, "")}: ` +
        `${e.requests} requests in the window`;
      const label = svg("text", { class: "label", x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6,
                                  "text-anchor": "middle" }, g);
      if (e.kind === "call") {
        label.textContent = e.requests === 0 ? "no requests"
          : `${pct(e.success_rate)} · ${rps(e.rps)} rps · p99 ${ms(e.latency_p99_ms)}`;
      } else {
        label.textContent = e.requests === 0 ? "" : `${rps(e.rps)} rps`;  // how the load is shared
      }
    }

    const nodeLayer = svg("g", { class: "nodes" }, root);
    for (const n of nodes) {
      const p = pos.get(n.id);
      const g = svg("g", { class: "node node-" + n.kind, transform: `translate(${p.x},${p.y})` }, nodeLayer);
      g.dataset.node = n.id;
      svg("rect", { width: NODE_W, height: NODE_H, rx: 6 }, g);
      svg("text", { class: "name", x: 10, y: 18 }, g).textContent = n.name;
      const figures = svg("text", { class: "figures", x: 10, y: 35 }, g);
      if (n.kind === "service") {
        g.dataset.service = n.name;
        g.dataset.requests = String(n.requests);
        g.dataset.rps = String(n.rps);
        g.dataset.successRate = String(n.success_rate);
        g.dataset.p99 = String(n.latency_p99_ms);
        figures.textContent = Number(n.requests) === 0 ? "service · idle"
          : `${pct(n.success_rate)} · ${rps(n.rps)} rps · p99 ${ms(n.latency_p99_ms)}`;
      } else {
        g.dataset.workload = n.name;
        g.dataset.sidecars = String(n.sidecars);
        figures.textContent = n.sidecars > 0 ? `workload · ${n.sidecars} sidecar${n.sidecars > 1 ? "s" : ""}`
          : "workload · no sidecar connected";  // a caller outside the mesh, or a sidecar gone
      }
    }
  }

  // ------------------------------------------------------------------ services table
  function renderServices(graph) {
    const body = document.querySelector("#services tbody");
    while (body.firstChild) body.removeChild(body.firstChild);
    for (const n of graph.nodes) {
      if (n.kind !== "service") continue;
      const tr = html("tr", { "data-service": n.name, "data-requests": n.requests }, null, body);
      html("td", { "data-field": "service" }, n.name, tr);
      html("td", { "data-field": "meshed", class: "num" },
           n.instances ? `${n.meshed}/${n.instances}` : String(n.meshed), tr);
      html("td", { "data-field": "success_rate", class: "num" }, pct(n.success_rate), tr);
      html("td", { "data-field": "rps", class: "num" }, rps(n.rps), tr);
      html("td", { "data-field": "requests", class: "num" }, n.requests, tr);
      html("td", { "data-field": "latency_p50_ms", class: "num" }, ms(n.latency_p50_ms), tr);
      html("td", { "data-field": "latency_p95_ms", class: "num" }, ms(n.latency_p95_ms), tr);
      html("td", { "data-field": "latency_p99_ms", class: "num" }, ms(n.latency_p99_ms), tr);
      html("td", { "data-field": "tcp_connections", class: "num" }, n.tcp_connections, tr);
    }
  }

  // ------------------------------------------------------------------ golden metrics
  const CHARTS = [
    { key: "rps", title: "rps", fmt: rps, fixedMax: null },
    { key: "success_rate", title: "success", fmt: pct, fixedMax: 1 },
    { key: "p99_ms", title: "p99", fmt: ms, fixedMax: null },
  ];
  const CHART_W = 300, CHART_H = 54, PLOT_LEFT = 52;

  function chart(points, spec, parent, span) {
    const root = svg("svg", { class: "chart", width: CHART_W, height: CHART_H }, parent);
    root.dataset.chart = spec.key;
    root.dataset.points = String(points.length);
    const last = points.length ? points[points.length - 1][spec.key] : 0;
    root.dataset.last = String(last);
    svg("text", { x: 0, y: 14 }, root).textContent = spec.title;
    svg("text", { class: "value", x: 0, y: 30 }, root).textContent = points.length ? spec.fmt(last) : "–";
    const w = CHART_W - PLOT_LEFT - 2, h = CHART_H - 6;
    svg("rect", { class: "frame", x: PLOT_LEFT, y: 2, width: w, height: h }, root);
    if (points.length === 0) return;
    const tEnd = points[points.length - 1].t;
    const tStart = Math.min(points[0].t, tEnd - span);
    const top = spec.fixedMax !== null ? spec.fixedMax : Math.max(...points.map((p) => p[spec.key]), 1e-9);
    const xy = points.map((p) => [
      PLOT_LEFT + (w * (p.t - tStart)) / Math.max(tEnd - tStart, 1e-9),
      2 + h - (h * Math.min(p[spec.key], top)) / top,
    ]);
    const line = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
    svg("polygon", { class: "area",
                     points: `${xy[0][0].toFixed(1)},${2 + h} ${line} ${xy[xy.length - 1][0].toFixed(1)},${2 + h}` },
        root);
    svg("polyline", { class: "line", points: line }, root);
    svg("text", { x: PLOT_LEFT + 3, y: 12 }, root).textContent = spec.fmt(top);
  }

  function renderHistory(history) {
    document.getElementById("history-interval").textContent = String(history.interval_seconds);
    const root = document.getElementById("metrics");
    while (root.firstChild) root.removeChild(root.firstChild);
    // at least two minutes on the x axis, so a young history does not stretch two points over the chart
    const span = 120;
    for (const name of Object.keys(history.services).sort()) {
      const points = history.services[name];
      const card = html("section", { class: "service-card", "data-service-metrics": name }, null, root);
      html("h3", {}, name, card);
      for (const spec of CHARTS) chart(points, spec, card, span);
    }
  }

  // ------------------------------------------------------------------ push status
  function renderProxies(status) {
    const version = document.getElementById("policy-version");
    version.dataset.version = String(status.version);
    version.textContent = "policy version " + status.version;
    const body = document.querySelector("#proxies tbody");
    while (body.firstChild) body.removeChild(body.firstChild);
    const proxies = status.proxies.slice().sort((a, b) => (a.node.id < b.node.id ? -1 : 1));
    for (const p of proxies) {
      const tr = html("tr", { "data-sidecar": p.node.id, "data-workload": p.node.workload,
                              "data-state": p.state }, null, body);
      html("td", { "data-field": "id" }, p.node.id, tr);
      html("td", { "data-field": "workload" }, p.node.workload || "–", tr);
      html("td", { "data-field": "sent_version", class: "num" }, p.sent_version, tr);
      html("td", { "data-field": "acked_version", class: "num" }, p.acked_version, tr);
      html("td", { "data-field": "state", class: "state-" + p.state }, p.state, tr);
      html("td", { "data-field": "last_error" }, p.last_error || "", tr);
      const age = p.report_age_seconds;
      html("td", { "data-field": "report", "data-sequence": p.report_sequence },
           age === null || age === undefined ? "never" : `${age.toFixed(1)} s ago`, tr);
    }
  }

  // ------------------------------------------------------------------ refresh loop
  async function refresh() {
    const status = document.getElementById("status");
    const w = encodeURIComponent(currentWindow());
    const results = await Promise.allSettled([
      getJSON("/api/graph?window=" + w).then((g) => { renderGraph(g); renderServices(g); }),
      getJSON("/api/proxies").then(renderProxies),
      getJSON("/api/history").then(renderHistory),
    ]);
    const errors = results.filter((r) => r.status === "rejected").map((r) => String(r.reason.message || r.reason));
    refreshes += 1;
    status.dataset.refreshes = String(refreshes);
    status.dataset.updated = new Date().toISOString();
    status.dataset.error = errors.join("; ");
    status.classList.toggle("error", errors.length > 0);
    status.textContent = errors.length ? errors.join("; ") : "updated " + new Date().toLocaleTimeString();
  }

  function loop() {
    refresh().finally(() => setTimeout(loop, REFRESH_MS));
  }

  document.addEventListener("DOMContentLoaded", () => {
    const select = document.getElementById("window");
    const w = currentWindow();
    if (![...select.options].some((o) => o.value === w)) html("option", { value: w }, w + " s", select);
    select.value = w;
    select.addEventListener("change", () => {
      const params = new URLSearchParams(location.search);
      params.set("window", select.value);
      history.replaceState(null, "", "?" + params.toString());
      refresh();
    });
    loop();
  });
})();

// Meridian status page: refreshes from /status.json. Every name that comes from gossip is
// written as text (textContent), never as markup.
"use strict";

const REFRESH_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    e.setAttribute(k, String(v));
  }
  if (text !== undefined) {
    e.textContent = String(text);
  }
  return e;
}

function pct(x) {
  return x === null || x === undefined ? "–" : (100 * x).toFixed(0) + "%";
}

function rate(x) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(x < 10 ? 1 : 0);
}

function isEdge(m) {
  return (m.roles || []).includes("edge");
}

function serving(m) {
  return m.state === "alive" && !m.draining;
}

function loadBar(load) {
  const bar = el("span", { class: "bar", title: pct(load) });
  const fill = el("span");
  fill.style.width = Math.min(100, Math.max(0, 100 * load)).toFixed(0) + "%";
  if (load >= 1) fill.className = "over";
  else if (load >= 0.8) fill.className = "high";
  bar.appendChild(fill);
  return bar;
}

// Regions on an equirectangular plot: 2 units per degree, longitude -180..180 left to right.
function drawMap(svg, regions, members) {
  svg.replaceChildren();
  const x = (lon) => (lon + 180) * 2;
  const y = (lat) => (90 - lat) * 2;
  for (let lon = -180; lon <= 180; lon += 30) {
    svg.appendChild(el("svg:line", { class: "grid", x1: x(lon), y1: 0, x2: x(lon), y2: 360 }));
    svg.appendChild(el("svg:text", { class: "axis", x: x(lon), y: 376, "text-anchor": "middle" }, lon + "°"));
  }
  for (let lat = -90; lat <= 90; lat += 30) {
    svg.appendChild(el("svg:line", { class: "grid", x1: 0, y1: y(lat), x2: 720, y2: y(lat) }));
    svg.appendChild(el("svg:text", { class: "axis", x: -6, y: y(lat) + 3, "text-anchor": "end" }, lat + "°"));
  }
  svg.appendChild(el("svg:rect", { class: "frame", x: 0, y: 0, width: 720, height: 360 }));
  for (const r of regions) {
    const edges = members.filter((m) => isEdge(m) && m.region === r.name);
    const up = edges.filter(serving).length;
    const cls = up === 0 ? "none" : up === edges.length ? "ok" : "some";
    const g = el("svg:g", { "data-region": r.name });
    const dot = el("svg:circle", { class: cls, cx: x(r.lon), cy: y(r.lat), r: 6 });
    dot.appendChild(el("svg:title", {}, `${r.name}: ${up} of ${edges.length} edges serving`));
    g.appendChild(dot);
    g.appendChild(el("svg:text", { class: "label", x: x(r.lon) + 9, y: y(r.lat) + 4 }, `${r.name} ${up}/${edges.length}`));
    svg.appendChild(g);
  }
}

function drawMembers(tbody, regions, members) {
  tbody.replaceChildren();
  const names = regions.map((r) => r.name);
  for (const m of members) {
    if (!names.includes(m.region)) names.push(m.region);
  }
  for (const name of names) {
    const here = members.filter((m) => m.region === name);
    if (here.length === 0) continue;
    const edges = here.filter(isEdge);
    const head = el("tr", { class: "region" });
    const loads = edges.filter(serving).map((m) => m.load);
    const mean = loads.length ? loads.reduce((a, b) => a + b, 0) / loads.length : null;
    head.appendChild(el("td", { colspan: 9 },
      `${name || "(no region)"}: ${edges.filter(serving).length} of ${edges.length} edges serving` +
      (mean === null ? "" : `, mean load ${pct(mean)}`)));
    tbody.appendChild(head);
    for (const m of here) {
      const tr = el("tr", { "data-member": m.id });
      tr.appendChild(el("td", {}, m.id + (m.self ? " (this node)" : "")));
      tr.appendChild(el("td", {}, m.region));
      tr.appendChild(el("td", {}, (m.roles || []).join(", ")));
      tr.appendChild(el("td", { class: "state-" + m.state }, m.state));
      const load = el("td");
      if (isEdge(m)) {
        load.appendChild(loadBar(m.load));
        load.appendChild(document.createTextNode(" " + pct(m.load)));
      }
      tr.appendChild(load);
      tr.appendChild(el("td", { class: m.draining ? "draining" : "" }, m.draining ? "draining" : ""));
      tr.appendChild(el("td", { class: "num" }, isEdge(m) ? rate(m.requests_per_second) : ""));
      tr.appendChild(el("td", { class: "num" }, isEdge(m) ? pct(m.hit_ratio) : ""));
      tr.appendChild(el("td", {}, m.version));
      tbody.appendChild(tr);
    }
  }
}

function spark(values) {
  const svg = el("svg:svg", { class: "spark", viewBox: "0 0 240 28", preserveAspectRatio: "none" });
  const known = values.filter((v) => v !== null && v !== undefined);
  if (known.length < 2) return svg;
  const max = Math.max(...known, 1e-9);
  const step = 240 / (values.length - 1);
  const points = values
    .map((v, i) => (v === null || v === undefined ? null : `${(i * step).toFixed(1)},${(26 - (24 * v) / max).toFixed(1)}`))
    .filter((p) => p !== null)
    .join(" ");
  svg.appendChild(el("svg:polyline", { points }));
  return svg;
}

function drawHistory(tbody, note, history, every) {
  tbody.replaceChildren();
  const rows = [
    ["requests/s", history.map((h) => h.requests_per_second), rate],
    ["hit ratio", history.map((h) => h.hit_ratio), pct],
    ["origin fetches/s", history.map((h) => h.origin_fetches_per_second), rate],
    ["DNS queries/s", history.map((h) => h.dns_queries_per_second), rate],
  ];
  const regions = new Set();
  for (const h of history) {
    for (const r of Object.keys(h.dns_answers_per_second || {})) regions.add(r);
  }
  for (const r of [...regions].sort()) {
    rows.push([`DNS answers/s, ${r}`, history.map((h) => (h.dns_answers_per_second || {})[r] ?? 0), rate]);
  }
  for (const [name, values, fmt] of rows) {
    const tr = el("tr");
    tr.appendChild(el("td", {}, name));
    tr.appendChild(el("td", { class: "num" }, values.length ? fmt(values[values.length - 1]) : "–"));
    const cell = el("td");
    cell.appendChild(spark(values));
    tr.appendChild(cell);
    tbody.appendChild(tr);
  }
  const minutes = ((history.length * every) / 60).toFixed(1);
  note.textContent = history.length
    ? `${history.length} interval${history.length === 1 ? "" : "s"} of ${every} s (${minutes} min), oldest on the left.`
    : `The first rates appear ${every} s after the node starts.`;
}

async function refresh() {
  const problem = document.getElementById("problem");
  try {
    const r = await fetch("/status.json", { cache: "no-store" });
    if (!r.ok) throw new Error(`/status.json: ${r.status}`);
    const s = await r.json();
    const members = s.members || [];
    document.getElementById("node").textContent = "· " + s.node;
    document.getElementById("nogossip").hidden = s.gossip !== false;
    drawMap(document.getElementById("map"), s.regions || [], members);
    drawMembers(document.querySelector("#members tbody"), s.regions || [], members);
    drawHistory(document.querySelector("#history tbody"), document.getElementById("historynote"), s.history || [], s.sample_seconds);
    document.getElementById("updated").textContent =
      `${members.length} members, updated ${new Date(s.time * 1000).toLocaleTimeString()}; refreshes every ${REFRESH_MS / 1000} s`;
    problem.hidden = true;
    document.body.dataset.loaded = "1";
  } catch (e) {
    problem.textContent = `Could not refresh: ${e.message}`;
    problem.hidden = false;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);

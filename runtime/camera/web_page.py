"""The live page of ``stpm-camera --http`` (:mod:`.web`): one HTML string, no external assets.

It polls ``/api/state`` every second, reloads each camera's ``/api/frame/CAMERA.jpg``, draws the
latency (ms) and normalised score strip chart as inline SVG, lists the recent NG frames with their
overlays and posts "good" / "ng" marks to ``/api/mark``. Text from the server is inserted with
``textContent`` only (never as HTML).
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>stpm-camera live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font-family: system-ui, sans-serif; margin: 12px; background: #111; color: #eee; }
h1 { font-size: 18px; margin: 0 0 8px; }
.cam { border: 1px solid #444; border-radius: 6px; padding: 10px; margin-bottom: 14px; }
.row { display: flex; gap: 14px; flex-wrap: wrap; align-items: flex-start; }
.live img { width: 320px; max-width: 90vw; image-rendering: pixelated; border: 3px solid #555; }
.live.OK img { border-color: #2a2; } .live.NG img { border-color: #d22; }
.verdict { font-size: 28px; font-weight: bold; } .OK .verdict { color: #3c3; }
.NG .verdict { color: #f44; }
table.counts td { padding: 1px 8px 1px 0; }
svg { background: #1b1b1b; border: 1px solid #333; }
.ng-list { display: flex; gap: 8px; flex-wrap: wrap; margin-top: 8px; }
.ng-item { background: #222; padding: 6px; border-radius: 4px; width: 150px; font-size: 12px; }
.ng-item img { width: 150px; image-rendering: pixelated; }
.ng-item button { margin: 4px 4px 0 0; cursor: pointer; }
.marked-good { outline: 2px solid #3c3; } .marked-ng { outline: 2px solid #f44; }
.muted { color: #999; font-size: 12px; }
</style></head>
<body>
<h1>stpm-camera &mdash; live inspection</h1>
<div class="muted" id="status">connecting&hellip;</div>
<div id="cams"></div>
<script>
"use strict";
const cams = document.getElementById("cams");
const status = document.getElementById("status");
const views = {};

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function makeView(name) {
  const root = el("div", {class: "cam", "data-camera": name});
  root.appendChild(el("h2", {}, "camera " + name));
  const row = el("div", {class: "row"});
  const live = el("div", {class: "live"});
  const img = el("img", {alt: "latest frame of " + name, class: "live-frame"});
  live.appendChild(img);
  const verdict = el("div", {class: "verdict"}, "-");
  live.appendChild(verdict);
  const counts = el("table", {class: "counts"});
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", "480"); svg.setAttribute("height", "160");
  svg.setAttribute("class", "chart");
  const side = el("div");
  side.appendChild(counts); side.appendChild(svg);
  side.appendChild(el("div", {class: "muted"}, "green: score (0.5 = threshold), blue: latency ms"));
  row.appendChild(live); row.appendChild(side);
  root.appendChild(row);
  root.appendChild(el("h3", {}, "recent NG frames"));
  const list = el("div", {class: "ng-list"});
  root.appendChild(list);
  cams.appendChild(root);
  return {root, live, img, verdict, counts, svg, list, items: {}};
}

function polyline(points, color) {
  const p = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  p.setAttribute("points", points.join(" "));
  p.setAttribute("fill", "none"); p.setAttribute("stroke", color); p.setAttribute("stroke-width", "1.5");
  return p;
}

function drawChart(svg, history) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const w = 480, h = 160, n = history.length;
  const thr = document.createElementNS("http://www.w3.org/2000/svg", "line");
  thr.setAttribute("x1", 0); thr.setAttribute("x2", w);
  thr.setAttribute("y1", h / 2); thr.setAttribute("y2", h / 2);
  thr.setAttribute("stroke", "#844"); thr.setAttribute("stroke-dasharray", "4 4");
  svg.appendChild(thr);
  if (n < 2) return;
  const maxLat = Math.max(...history.map(p => p[1]), 1e-6);
  const x = i => (i / (n - 1)) * w;
  svg.appendChild(polyline(history.map((p, i) => x(i) + "," + (h - p[1] / maxLat * (h - 4))), "#49f"));
  svg.appendChild(polyline(history.map((p, i) => x(i) + "," + (h - p[2] * h)), "#3c3"));
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", 4); label.setAttribute("y", 12); label.setAttribute("fill", "#49f");
  label.setAttribute("font-size", "11");
  label.textContent = "max latency " + maxLat.toFixed(1) + " ms";
  svg.appendChild(label);
}

function setCounts(table, cam) {
  const rows = [["frames", cam.counts.frames], ["NG", cam.counts.ng], ["events", cam.counts.events],
    ["last score", cam.last.score_normalized == null ? "-" : cam.last.score_normalized.toFixed(3)],
    ["latency ms", cam.last.latency_ms == null ? "-" : cam.last.latency_ms.toFixed(2)]];
  table.textContent = "";
  for (const [k, v] of rows) {
    const tr = el("tr"); tr.appendChild(el("td", {}, k)); tr.appendChild(el("td", {class: "count-" + k.replace(" ", "-")}, String(v)));
    table.appendChild(tr);
  }
}

async function mark(camera, name, value, item) {
  const resp = await fetch("/api/mark", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({camera, name, mark: value})});
  const data = await resp.json();
  const note = item.querySelector(".mark-note");
  note.textContent = resp.ok ? "marked " + value : "error: " + data.error;
  if (resp.ok) item.classList.add("marked-" + value);
}

function ngItem(camera, ng, review) {
  const item = el("div", {class: "ng-item", "data-name": ng.name});
  item.appendChild(el("img", {src: "/ng/" + encodeURIComponent(camera) + "/" + encodeURIComponent(ng.overlay), alt: ng.name}));
  item.appendChild(el("div", {}, "frame " + ng.frame + ", score " + Number(ng.score_normalized).toFixed(3)));
  if (review) {
    for (const value of ["good", "ng"]) {
      const b = el("button", {class: "mark-" + value, title: value === "good" ? "false reject: the part is good" : "confirm the defect"}, value);
      b.addEventListener("click", () => mark(camera, ng.name, value, item));
      item.appendChild(b);
    }
  }
  item.appendChild(el("div", {class: "mark-note muted"}, ng.mark ? "marked " + ng.mark : ""));
  if (ng.mark) item.classList.add("marked-" + ng.mark);
  return item;
}

async function poll() {
  try {
    const resp = await fetch("/api/state", {cache: "no-store"});
    const state = await resp.json();
    for (const cam of state.cameras) {
      const v = views[cam.name] || (views[cam.name] = makeView(cam.name));
      if (cam.counts.frames > 0) v.img.src = "/api/frame/" + encodeURIComponent(cam.name) + ".jpg?t=" + Date.now();
      v.live.className = "live " + (cam.last.verdict || "");
      v.verdict.textContent = cam.last.verdict || "-";
      setCounts(v.counts, cam);
      drawChart(v.svg, cam.history);
      const seen = new Set();
      for (const ng of cam.ng) {
        seen.add(ng.name);
        if (!v.items[ng.name]) { v.items[ng.name] = ngItem(cam.name, ng, cam.review); }
        v.list.appendChild(v.items[ng.name]);
      }
      for (const name of Object.keys(v.items)) if (!seen.has(name)) { v.items[name].remove(); delete v.items[name]; }
      if (!cam.review) v.list.textContent = "start stpm-camera with --save-ng DIR to review NG frames here";
    }
    status.textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    status.textContent = "no connection to stpm-camera (" + e + ")";
  }
}
poll();
setInterval(poll, 1000);
</script>
</body></html>
"""

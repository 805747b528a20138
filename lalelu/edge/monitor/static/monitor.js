// The monitor page: pictures (JPEG, binary messages), every pose, hits and stats (JSON) over one
// WebSocket; drawn with the rules of lalelu/drawing.py, which the server sends in its "hello".
"use strict";

const picture = document.getElementById("picture");
const ctx = picture.getContext("2d");
const chart = document.getElementById("chart");
const chartCtx = chart.getContext("2d");
const CHART_SECONDS = 60;

// What the tests (and a curious player) can read: window.monitor.
const monitor = (window.monitor = {
  pictures: 0, poses: 0, hits: 0, stats: 0, lastSeq: -1, drawnNose: null,
  chart: [], desc: null, state: "connecting",
});
let image = null; // the latest picture, an ImageBitmap
let pose = null; // the latest pose: [[x, y, score] x 17]
let flashUntil = 0;
let dirty = false;

function rgb(c) { return `rgb(${c[0]}, ${c[1]}, ${c[2]})`; }

function connect() {
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  // The first load's ?token set a session cookie, which the WebSocket request carries: the token
  // leaves the address bar (and the history) at once.
  if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", location.pathname);
  const ws = new WebSocket(url);
  ws.binaryType = "blob";
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onJson(JSON.parse(ev.data)) : onPicture(ev.data));
  ws.onclose = () => {
    setState("lost", "edge lost: reconnecting");
    setTimeout(connect, 1000);
  };
}

async function onPicture(blob) {
  const bitmap = await createImageBitmap(blob);
  if (image) image.close();
  image = bitmap;
  monitor.pictures += 1;
  dirty = true;
}

function onJson(msg) {
  if (msg.t === "hello") return onHello(msg);
  if (msg.t === "poses") {
    for (const [seq, total, inference, kp] of msg.poses) {
      monitor.poses += 1;
      monitor.lastSeq = seq;
      pose = kp;
    }
    dirty = true;
    updateFraming();
  } else if (msg.t === "hits") {
    for (const h of msg.hits) onHit(h);
  } else if (msg.t === "stats") {
    onStats(msg);
  }
}

function onHello(desc) {
  monitor.desc = desc;
  picture.width = desc.width;
  picture.height = desc.height;
  document.getElementById("mapping").textContent = `mapping: ${desc.mapping}`;
  const list = document.getElementById("framing");
  list.replaceChildren(
    ...desc.used.map((i) => {
      const li = document.createElement("li");
      li.id = `kp-${i}`;
      li.textContent = `${desc.names[i]}: –`;
      return li;
    }),
  );
}

function updateFraming() {
  const d = monitor.desc;
  if (!d || !pose) return;
  for (const i of d.used) {
    const li = document.getElementById(`kp-${i}`);
    const score = pose[i][2];
    const ok = score >= d.min_score;
    li.className = ok ? "ok" : "bad";
    li.textContent = `${ok ? "✔" : "✘"} ${d.names[i]}: ${score.toFixed(2)}${ok ? "" : " (not found)"}`;
  }
}

function onHit(h) {
  monitor.hits += 1;
  const flash = document.getElementById("flash");
  flash.textContent = `${h.name} · note ${h.note} · velocity ${h.velocity}`;
  flash.classList.add("on");
  flashUntil = performance.now() + 150;
  setTimeout(() => { if (performance.now() >= flashUntil) flash.classList.remove("on"); }, 160);
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${h.name} (${h.note}, ${h.velocity})`;
  const list = document.getElementById("hits");
  list.prepend(li);
  while (list.children.length > 8) list.lastChild.remove();
}

function setState(kind, text) {
  monitor.state = text;
  const el = document.getElementById("state");
  el.className = `state ${kind}`;
  el.textContent = text;
  const banner = document.getElementById("banner");
  banner.hidden = kind !== "lost";
  banner.textContent = text;
}

function onStats(s) {
  monitor.stats += 1;
  document.getElementById("fps").textContent = `${s.fps} poses/s`;
  if (s.camera === "lost") setState("lost", "camera lost");
  else if (s.mode === "reconnecting") setState("local", "backend lost: playing locally, reconnecting");
  else if (s.mode === "local") setState("local", "local inference");
  else if (s.mode === "remote") setState("remote", "backend");
  else setState("", s.mode);
  for (const stage of ["total", "inference"]) {
    const v = s[stage];
    document.getElementById(`${stage}-p50`).textContent = v ? v.p50.toFixed(2) : "–";
    document.getElementById(`${stage}-p99`).textContent = v ? v.p99.toFixed(2) : "–";
  }
  monitor.chart.push([performance.now() / 1000, s.total, s.inference]);
  while (monitor.chart.length && monitor.chart[0][0] < performance.now() / 1000 - CHART_SECONDS) monitor.chart.shift();
  drawChart();
}

function drawChart() {
  const w = chart.width, h = chart.height, now = performance.now() / 1000;
  chartCtx.clearRect(0, 0, w, h);
  const top = Math.max(5, ...monitor.chart.flatMap(([, t]) => (t ? [t.p99] : []))) * 1.15;
  const series = [
    [1, "p50", "#4af"], [1, "p99", "#f84"], [2, "p50", "#8d8"],
  ];
  for (const [col, key, color] of series) {
    chartCtx.strokeStyle = color;
    chartCtx.beginPath();
    let started = false;
    for (const row of monitor.chart) {
      const v = row[col];
      if (!v) { started = false; continue; }
      const x = w - ((now - row[0]) / CHART_SECONDS) * w;
      const y = h - (v[key] / top) * h;
      if (started) chartCtx.lineTo(x, y); else chartCtx.moveTo(x, y);
      started = true;
    }
    chartCtx.stroke();
  }
  chartCtx.fillStyle = "#aaa";
  chartCtx.fillText(`${top.toFixed(1)} ms · total p50 (blue) p99 (orange) · inference p50 (green)`, 4, 10);
}

function draw() {
  requestAnimationFrame(draw);
  const d = monitor.desc;
  if (!dirty || !d) return;
  dirty = false;
  const w = picture.width, h = picture.height;
  if (image) ctx.drawImage(image, 0, 0, w, h);
  else { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, w, h); }
  ctx.lineWidth = 1;
  ctx.font = "11px sans-serif";
  for (const s of d.strikes) {
    ctx.strokeStyle = ctx.fillStyle = rgb(d.colors.zone);
    for (const z of s.zones) {
      const [x0, y0, x1, y1] = z.rect;
      ctx.strokeRect(x0 * w + 0.5, y0 * h + 0.5, (x1 - x0) * w - 1, (y1 - y0) * h - 1);
      ctx.fillText(z.name, x0 * w + 3, y0 * h + 12);
    }
    if (s.mode === "line") {
      ctx.strokeStyle = rgb(d.colors.line);
      ctx.beginPath();
      if (s.axis === "y") { ctx.moveTo(0, s.line * h); ctx.lineTo(w, s.line * h); }
      else { ctx.moveTo(s.line * w, 0); ctx.lineTo(s.line * w, h); }
      ctx.stroke();
    }
  }
  if (!pose) return;
  const found = pose.map((k) => k[2] >= d.min_score);
  const r = Math.max(2, Math.round(Math.min(w, h) / 150));
  ctx.lineWidth = r;
  ctx.strokeStyle = rgb(d.colors.bone);
  for (const [a, b] of d.skeleton) {
    if (!found[a] || !found[b]) continue;
    ctx.beginPath();
    ctx.moveTo(pose[a][0], pose[a][1]);
    ctx.lineTo(pose[b][0], pose[b][1]);
    ctx.stroke();
  }
  ctx.lineWidth = 1;
  pose.forEach(([x, y], i) => {
    ctx.beginPath();
    ctx.arc(x, y, r + 1, 0, 2 * Math.PI);
    if (found[i]) { ctx.fillStyle = rgb(d.colors.found); ctx.fill(); }
    else { ctx.strokeStyle = rgb(d.colors.not_found); ctx.stroke(); }
  });
  monitor.drawnNose = found[0] ? [pose[0][0], pose[0][1], monitor.lastSeq] : null;
}

connect();
requestAnimationFrame(draw);

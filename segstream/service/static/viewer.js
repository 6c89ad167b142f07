// The live viewer: the stream list (GET /streams every second) and the chosen stream's frames
// (an <img> on the MJPEG endpoint; the server draws masks, boxes, labels, scores and track ids).
// Auth: the page's cookie (set once by the sign-in form's POST /login) goes along with these same-origin requests.
"use strict";

const rows = document.getElementById("streams");
const live = document.getElementById("live");
const waiting = document.getElementById("waiting");
let chosen = decodeURIComponent(location.hash.slice(1)) || null;
let showing = null;

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function show(id) {
  if (showing === id) return;
  showing = id;
  if (id === null) {
    live.removeAttribute("src");
    waiting.hidden = true;
    return;
  }
  waiting.hidden = false;  // stays underneath: the first frame covers it (MJPEG fires no load events)
  live.src = "viewer/streams/" + encodeURIComponent(id) + ".mjpg";
}

function choose(id) {
  chosen = id;
  history.replaceState(null, "", "#" + encodeURIComponent(id));
  refresh();
}

async function refresh() {
  let streams;
  try {
    const response = await fetch("streams", { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) { location.reload(); return; }
    streams = await response.json();
  } catch (err) {
    document.getElementById("health").textContent = "service unreachable";
    document.getElementById("health").className = "bad";
    return;
  }
  document.getElementById("health").textContent = "";
  if (chosen === null && streams.length) chosen = streams[0].id;
  rows.replaceChildren(...streams.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.id = s.id;
    if (s.id === chosen) tr.className = "chosen";
    tr.append(cell(s.id), cell(s.state, "state-" + s.state), cell(s.fps_in.toFixed(1)), cell(s.fps_out.toFixed(1)),
              cell(String(s.frames_published)),
              cell(String(Object.values(s.dropped || {}).reduce((a, b) => a + b, 0))),
              cell(s.latency_p50 === null ? "–" : (s.latency_p50 * 1000).toFixed(0) + " ms"));
    tr.addEventListener("click", () => choose(s.id));
    return tr;
  }));
  document.getElementById("empty").hidden = streams.length > 0;
  const current = streams.find((s) => s.id === chosen);
  document.getElementById("chosen").textContent = chosen || "choose a stream";
  document.getElementById("detail").textContent = current
    ? `${current.kind} · ${current.state} · ${current.fps_out.toFixed(1)} fps out · ${current.url}`
    : (chosen ? "not running" : "");
  show(current ? current.id : null);
}

window.addEventListener("hashchange", () => {
  chosen = decodeURIComponent(location.hash.slice(1)) || null;
  refresh();
});
refresh();
setInterval(refresh, 1000);

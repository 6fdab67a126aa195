// vaest live page: estimates arrive as server-sent events (/events) and are drawn as scrolling curves (uPlot),
// the camera image and a valence/arousal plane. Needs nothing from another machine.
(function () {
  "use strict";
  const WINDOW_S = 30;   // seconds of curves kept on screen
  const TRAIL_S = 3;     // seconds of the plane's trail
  const GAP_S = 0.5;     // a longer pause between two estimates is drawn as a gap
  const COLORS = { vaest: "#111111", face: "#9467bd", audio: "#2ca02c", behavior: "#ff7f0e" };
  const MODS = ["face", "audio", "behavior"];
  const plotsBox = document.getElementById("vaest-plots");
  const readout = document.getElementById("vaest-readout");
  const statusBox = document.getElementById("vaest-status");
  const plane = document.getElementById("vaest-plane");
  const camera = document.getElementById("vaest-camera");
  const select = document.getElementById("vaest-person");
  const people = new Map();  // person id -> {t: [], valence: [], arousal: [], face_valence: [], ...}
  const state = { person: null, plots: [], dirty: false, count: 0, images: 0, ended: null, status: null };
  const KEYS = ["valence", "arousal"].concat(MODS.flatMap((m) => [m + "_valence", m + "_arousal"]));

  function series(pid) {
    if (!people.has(pid)) {
      const s = { t: [] };
      for (const k of KEYS) s[k] = [];
      people.set(pid, s);
      const o = document.createElement("option");
      o.value = String(pid);
      o.textContent = pid < 0 ? "nobody (voice)" : "person " + pid;
      select.appendChild(o);
      if (state.person === null) { state.person = pid; select.value = String(pid); build(); }
    }
    return people.get(pid);
  }

  function add(e) {
    const s = series(e.person);
    const n = s.t.length;
    const dt = n ? e.time - s.t[n - 1] : 0;
    // a pause well beyond the usual spacing (frames dropped, a stall): drawn as a gap, not as a line
    if (n && dt > Math.max(GAP_S, 3 * (s.dt || 0))) {
      s.t.push(s.t[n - 1] + 1e-3);
      for (const k of KEYS) s[k].push(null);
    } else if (n) {
      s.dt = dt;
    }
    s.t.push(e.time);
    for (const k of KEYS) s[k].push(e[k] === undefined ? null : e[k]);
    const t0 = e.time - WINDOW_S;
    let cut = 0;
    while (cut < s.t.length && s.t[cut] < t0) cut++;
    if (cut > 0) { s.t.splice(0, cut); for (const k of KEYS) s[k].splice(0, cut); }
    state.count++;
    state.dirty = true;
    if (e.person === state.person) {
      readout.textContent = "t = " + e.time.toFixed(2) + " s · frame " + e.frame + " · valence " + fmt(e.valence) +
        " · arousal " + fmt(e.arousal) + " · " + e.source + " · latency " + fmt1(e.latency_ms) + " ms";
    }
  }

  function fmt(x) { return x === null || x === undefined ? "–" : x.toFixed(3); }
  function fmt1(x) { return x === null || x === undefined ? "–" : x.toFixed(0); }

  function panelData(s, dim) {
    return [s.t, s[dim]].concat(MODS.map((m) => s[m + "_" + dim]));
  }

  function build() {
    for (const u of state.plots) u.destroy();
    state.plots = [];
    plotsBox.textContent = "";
    const s = people.get(state.person);
    if (!s) return;
    const width = Math.max(300, plotsBox.clientWidth - 4);
    for (const dim of ["valence", "arousal"]) {
      const box = document.createElement("div");
      plotsBox.appendChild(box);
      const opts = {
        title: dim + " (last " + WINDOW_S + " s)", width: width, height: 190,
        scales: { x: { time: false }, y: { range: [-1.05, 1.05] } },
        series: [{ label: "time (s)", value: (u, v) => (v === null ? "–" : v.toFixed(2)) },
          { label: "vaest", stroke: COLORS.vaest, width: 2, spanGaps: false, points: { show: false } }].concat(
          MODS.map((m) => ({ label: m, stroke: COLORS[m], width: 1, spanGaps: false, points: { show: false } }))),
        axes: [{ label: "seconds" }, { label: dim }],
        legend: { live: false },
      };
      state.plots.push(new uPlot(opts, panelData(s, dim), box));
    }
  }

  function drawPlane(s) {
    const { ctx, X, Y } = window.vaestPlaneAxes(plane);
    if (!s || !s.t.length) return;
    const n = s.t.length, tEnd = s.t[n - 1];
    let prev = null;
    for (let k = Math.max(0, n - 400); k < n; k++) {
      if (s.t[k] < tEnd - TRAIL_S || s.valence[k] === null || s.arousal[k] === null) { prev = null; continue; }
      const p = [X(s.valence[k]), Y(s.arousal[k])];
      if (prev) {
        ctx.strokeStyle = "rgba(60,60,160," + (1 - (tEnd - s.t[k]) / TRAIL_S).toFixed(3) + ")";
        ctx.lineWidth = 2;
        ctx.beginPath(); ctx.moveTo(prev[0], prev[1]); ctx.lineTo(p[0], p[1]); ctx.stroke();
      }
      prev = p;
    }
    const v = s.valence[n - 1], a = s.arousal[n - 1];
    if (v !== null && a !== null) {
      ctx.fillStyle = "#d62728";
      ctx.beginPath(); ctx.arc(X(v), Y(a), 5, 0, 2 * Math.PI); ctx.fill();
    } else {
      ctx.fillStyle = "#999"; ctx.fillText("no estimate", X(-1) + 4, Y(1) + 14);
    }
  }

  function frame() {
    if (state.dirty) {
      state.dirty = false;
      const s = people.get(state.person);
      if (s && s.t.length) {
        const tEnd = s.t[s.t.length - 1];
        state.plots.forEach((u, i) => {
          u.setData(panelData(s, i === 0 ? "valence" : "arousal"), false);
          u.setScale("x", { min: Math.max(0, tEnd - WINDOW_S), max: Math.max(tEnd, 1) });
        });
      }
      drawPlane(s);
    }
    requestAnimationFrame(frame);
  }

  select.addEventListener("change", () => { state.person = Number(select.value); build(); state.dirty = true; });
  window.addEventListener("resize", () => {
    const width = Math.max(300, plotsBox.clientWidth - 4);
    for (const u of state.plots) u.setSize({ width: width, height: u.height });
  });

  const es = new EventSource("events");
  es.addEventListener("estimate", (ev) => add(JSON.parse(ev.data)));
  es.addEventListener("image", (ev) => { camera.src = JSON.parse(ev.data).src; state.images++; });
  es.addEventListener("status", (ev) => {
    const s = JSON.parse(ev.data);
    state.status = s;
    statusBox.textContent = s.source + " · " + s.frames_processed + " frames processed · " + s.frames_dropped +
      " dropped · latency median " + fmt1(s.latency_median_ms) + " ms, p95 " + fmt1(s.latency_p95_ms) + " ms";
  });
  es.addEventListener("end", (ev) => {
    state.ended = JSON.parse(ev.data).reason;
    statusBox.textContent = "stream ended: " + state.ended;
    es.close();
  });
  drawPlane(null);
  requestAnimationFrame(frame);

  // For scripts and tests: counts and the plotted points.
  window.vaestLive = {
    get count() { return state.count; },
    get images() { return state.images; },
    get ended() { return state.ended; },
    get status() { return state.status; },
    get person() { return state.person; },
    points: (k) => (state.plots[k] ? state.plots[k].data[0].length : 0),
    lastTime: (k) => { const d = state.plots[k] ? state.plots[k].data[0] : []; return d.length ? d[d.length - 1] : null; },
    ready: true,
  };
})();

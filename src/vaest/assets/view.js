// vaest page: curves (uPlot) under a video, a playback cursor, click/drag to seek, a valence/arousal plane.
// Reads the page's data from <script id="vaest-data" type="application/json">; needs nothing from the network.
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("vaest-data").textContent);
  const media = document.getElementById("vaest-media");
  const plotsBox = document.getElementById("vaest-plots");
  const readout = document.getElementById("vaest-readout");
  const plane = document.getElementById("vaest-plane");
  const TRAIL_S = D.trail_seconds || 3.0;
  const state = { group: null, plots: [], time: 0, dragging: false, hover: false };

  // Index of the last sample whose time is <= t (the frame on screen at time t); -1 before the first one.
  function sampleAt(times, t) {
    let lo = 0, hi = times.length - 1, best = -1;
    const tt = t + 1e-6;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (times[mid] <= tt) { best = mid; lo = mid + 1; } else { hi = mid - 1; }
    }
    return best;
  }

  function fmt(x) { return x === null || x === undefined ? "–" : x.toFixed(3); }

  function drawPlane(g, i) {
    if (!plane) return;
    const { ctx, X, Y } = window.vaestPlaneAxes(plane);
    if (!g.plane || i < 0) return;
    const v = g.plane.valence, a = g.plane.arousal, t = g.t;
    const t0 = t[i] - TRAIL_S;
    let prev = null;
    for (let k = i; k >= 0 && t[k] >= t0; k--) {
      if (v[k] === null || a[k] === null) { prev = null; continue; }
      const p = [X(v[k]), Y(a[k])];
      if (prev) {
        ctx.strokeStyle = "rgba(60,60,160," + (1 - (t[i] - t[k]) / TRAIL_S).toFixed(3) + ")";
        ctx.lineWidth = 2;
        ctx.beginPath(); ctx.moveTo(prev[0], prev[1]); ctx.lineTo(p[0], p[1]); ctx.stroke();
      }
      prev = p;
    }
    if (v[i] !== null && a[i] !== null) {
      ctx.fillStyle = "#d62728";
      ctx.beginPath(); ctx.arc(X(v[i]), Y(a[i]), 5, 0, 2 * Math.PI); ctx.fill();
    } else {
      ctx.fillStyle = "#999"; ctx.fillText("no estimate", X(-1) + 4, Y(1) + 14);
    }
  }

  // Move every playhead to time t, redraw the plane and the readout.
  function setTime(t) {
    state.time = t;
    const g = state.group;
    for (const u of state.plots) {
      const x = u.valToPos(t, "x");
      u._vaestHead.style.left = x + "px";
      u._vaestHead.dataset.time = String(t);
    }
    const i = sampleAt(g.t, t);
    // legends show the values under the playhead, except while the mouse hovers a plot (then: under the mouse)
    if (!state.hover && i >= 0) for (const u of state.plots) u.setLegend({ idx: i }, false);
    drawPlane(g, i);
    if (readout) {
      let s = "t = " + t.toFixed(3) + " s";
      if (i >= 0) {
        s += " · frame " + g.frame[i];
        if (g.plane) s += " · valence " + fmt(g.plane.valence[i]) + " · arousal " + fmt(g.plane.arousal[i]);
        if (g.source) s += " · " + g.source[i];
      }
      readout.textContent = s;
    }
  }

  function seekTo(t) {
    const end = media && isFinite(media.duration) ? media.duration : g_end();
    t = Math.max(0, Math.min(t, end));
    if (media) media.currentTime = t;
    setTime(t);
  }

  function g_end() { const t = state.group.t; return t.length ? t[t.length - 1] : 0; }

  function attachSeek(u) {
    const over = u.over;
    const head = document.createElement("div");
    head.className = "vaest-head";
    over.appendChild(head);
    u._vaestHead = head;
    const at = (e) => u.posToVal(e.clientX - over.getBoundingClientRect().left, "x");
    over.addEventListener("pointerdown", (e) => {
      state.dragging = true;
      over.setPointerCapture(e.pointerId);
      seekTo(at(e));
    });
    over.addEventListener("pointermove", (e) => { if (state.dragging) seekTo(at(e)); });
    over.addEventListener("mouseenter", () => { state.hover = true; });
    over.addEventListener("mouseleave", () => { state.hover = false; setTime(state.time); });
    const stop = () => { state.dragging = false; };
    over.addEventListener("pointerup", stop);
    over.addEventListener("pointercancel", stop);
  }

  function build(g) {
    for (const u of state.plots) u.destroy();
    state.plots = [];
    plotsBox.textContent = "";
    state.group = g;
    const width = Math.max(300, plotsBox.clientWidth - 4);
    for (const p of g.panels) {
      const box = document.createElement("div");
      box.className = "vaest-panel";
      plotsBox.appendChild(box);
      const opts = {
        title: p.title,
        width: width,
        height: p.height || 190,
        scales: { x: { time: false }, y: { range: p.range || [-1.05, 1.05] } },
        series: [{ label: "time (s)", value: (u, v) => (v === null ? "–" : v.toFixed(2)) }].concat(
          p.series.map((s) => ({
            label: s.label, stroke: s.color, width: s.width || 1, spanGaps: false,
            points: { show: false }, dash: s.dash || undefined,
            value: (u, v) => (v === null ? "–" : v.toFixed(3)),
          }))),
        axes: [{ label: "seconds" }, { label: p.ylabel || "" }],
        cursor: { drag: { x: false, y: false, setScale: false }, sync: { key: "vaest" } },
      };
      const u = new uPlot(opts, [g.t].concat(p.series.map((s) => s.values)), box);
      attachSeek(u);
      state.plots.push(u);
    }
    setTime(state.time);
  }

  let raf = 0;
  function follow() {
    setTime(media.currentTime);
    raf = media.paused ? 0 : requestAnimationFrame(follow);
  }
  if (media) {
    for (const ev of ["timeupdate", "seeking", "seeked", "loadedmetadata"]) {
      media.addEventListener(ev, () => setTime(media.currentTime));
    }
    media.addEventListener("play", () => { if (!raf) raf = requestAnimationFrame(follow); });
    media.addEventListener("error", () => {
      const note = document.getElementById("vaest-media-note");
      if (note) note.textContent = "The browser cannot play this media file (" + media.currentSrc + ").";
    });
  }

  const select = document.getElementById("vaest-person");
  if (select) select.addEventListener("change", () => build(D.groups[select.selectedIndex]));
  window.addEventListener("resize", () => {
    const width = Math.max(300, plotsBox.clientWidth - 4);
    for (const u of state.plots) u.setSize({ width: width, height: u.height });
    setTime(state.time);
  });
  build(D.groups[0]);

  // For scripts and tests: the plots, the cursor time, and time <-> page-pixel conversions.
  window.vaestView = {
    data: D,
    get plots() { return state.plots; },
    get time() { return state.time; },
    seek: seekTo,
    // Page x (CSS pixels, viewport coordinates) of time t on plot k, and the plot area's vertical centre.
    pageX: (k, t) => state.plots[k].over.getBoundingClientRect().left + state.plots[k].valToPos(t, "x"),
    pageY: (k) => { const r = state.plots[k].over.getBoundingClientRect(); return r.top + r.height / 2; },
    headTime: (k) => state.plots[k].posToVal(parseFloat(state.plots[k]._vaestHead.style.left), "x"),
    ready: true,
    readyMs: performance.now(),  // ms from navigation start to all plots drawn
  };
})();

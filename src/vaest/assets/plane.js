// The valence/arousal plane's frame, shared by the file page (view.js) and the live page (live.js): clears the
// canvas, draws the [-1, 1] square, its axes and their labels, and returns the value -> pixel maps.
window.vaestPlaneAxes = function (canvas) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 18;
  const X = (v) => pad + (v + 1) / 2 * (w - 2 * pad);
  const Y = (a) => h - pad - (a + 1) / 2 * (h - 2 * pad);
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#bbb"; ctx.lineWidth = 1;
  ctx.strokeRect(X(-1), Y(1), X(1) - X(-1), Y(-1) - Y(1));
  ctx.beginPath(); ctx.moveTo(X(-1), Y(0)); ctx.lineTo(X(1), Y(0)); ctx.moveTo(X(0), Y(-1)); ctx.lineTo(X(0), Y(1));
  ctx.stroke();
  ctx.fillStyle = "#666"; ctx.font = "11px sans-serif";
  ctx.fillText("valence →", w - pad - 56, Y(0) - 4);
  ctx.save(); ctx.translate(X(0) - 4, pad + 52); ctx.rotate(-Math.PI / 2); ctx.fillText("arousal →", 0, 0); ctx.restore();
  return { ctx, X, Y };
};

"""``vaest live --serve``: the viewer in live mode, over server-sent events, from a local HTTP server.

``GET /`` is the live page (uPlot and the page's script inlined from ``vaest/assets``: nothing is loaded from
another machine), ``GET /events`` a ``text/event-stream`` of ``estimate`` events (the JSON lines of
:meth:`vaest.live.LiveResult.to_json`), ``image`` events (the newest camera frame as a JPEG data URL, at most
``image_hz`` per second), ``status`` events (frames, dropped, latency; every second) and one ``end`` event.
Each client has its own bounded queue (the oldest events are dropped for a client that reads too slowly), so a
slow browser never holds the estimation back. Binds 127.0.0.1 by default.
"""

from __future__ import annotations

import base64
import collections
import html
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from vaest.errors import VaestError
from vaest.view import asset

log = logging.getLogger(__name__)

CLIENT_QUEUE = 2048  # events held per client before its oldest are dropped


def parse_serve(spec: str) -> tuple[str, int]:
    """``[HOST:]PORT`` -> (host, port); host 127.0.0.1 by default; port 0 = any free port."""
    s = str(spec).strip()
    host, _, port = s.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise VaestError(f"--serve {spec!r}: expected [HOST:]PORT, e.g. 8765 or 127.0.0.1:8765")
    return host, int(port)


def live_page(title: str) -> str:
    """The HTML of the live page (self-contained but for its event stream ``/events``)."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="icon" href="data:,">
<style>{asset("uPlot.min.css")}</style>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 12px 18px; color: #222; }}
h1 {{ font-size: 18px; margin: 4px 0 8px; }}
#vaest-top {{ display: flex; gap: 16px; align-items: flex-start; flex-wrap: wrap; }}
#vaest-camera {{ width: 480px; max-width: 100%; background: #000; min-height: 120px; display: block; }}
#vaest-plane {{ border: 1px solid #ddd; }}
#vaest-readout, #vaest-status {{ font-family: ui-monospace, monospace; margin: 6px 0; min-height: 1.2em; }}
.vaest-note {{ color: #666; font-size: 12px; }}
.u-title {{ font-size: 13px; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<div id="vaest-top">
<div><img id="vaest-camera" alt="camera"><div class="vaest-note">newest processed frame</div></div>
<div><canvas id="vaest-plane" width="230" height="230" title="valence/arousal plane"></canvas>
<div class="vaest-note">last 3 s of (valence, arousal)</div></div>
</div>
<label>person <select id="vaest-person"></select></label>
<div id="vaest-readout"></div>
<div id="vaest-status" class="vaest-note"></div>
<div id="vaest-plots"></div>
<script>{asset("uPlot.iife.min.js")}</script>
<script>{asset("plane.js")}</script>
<script>{asset("live.js")}</script>
</body></html>
"""


class _Client:
    def __init__(self) -> None:
        self.q: collections.deque[bytes] = collections.deque(maxlen=CLIENT_QUEUE)
        self.cv = threading.Condition()
        self.closed = False


class LiveServer:
    """The live page's HTTP server (see the module docstring). ``publish`` / ``image`` / ``status`` / ``end`` feed
    every connected page; ``close`` stops it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, title: str = "vaest live", image_hz: float = 5.0):
        self.title, self.image_hz = title, image_hz
        self.clients: list[_Client] = []
        self._lock = threading.Lock()
        self._last_image = 0.0
        self._ended: bytes | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:  # requests go to the debug log, not stderr
                log.debug("serve: " + fmt, *args)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/":
                    body = live_page(server.title).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Cache-Control", "no-store")
                    self.end_headers()
                    self.wfile.write(body)
                elif path == "/events":
                    server._serve_events(self)
                else:
                    self.send_error(404)

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            raise VaestError(f"--serve {host}:{port}: cannot listen ({e})") from None
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="vaest-live-serve", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> "LiveServer":
        self._thread.start()
        return self

    def close(self) -> None:
        with self._lock:
            for c in self.clients:
                with c.cv:
                    c.closed = True
                    c.cv.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _serve_events(self, h: BaseHTTPRequestHandler) -> None:
        c = _Client()
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-store")
        h.send_header("Connection", "close")
        h.end_headers()
        with self._lock:
            self.clients.append(c)
            if self._ended is not None:
                c.q.append(self._ended)
        try:
            h.wfile.write(b": vaest live\n\n")
            h.wfile.flush()
            while True:
                with c.cv:
                    while not c.q and not c.closed:
                        c.cv.wait(15.0)
                        if not c.q and not c.closed:
                            c.q.append(b": keep-alive\n\n")
                    if c.closed and not c.q:
                        return
                    chunk = b"".join(c.q)
                    c.q.clear()
                h.wfile.write(chunk)
                h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self._lock:
                if c in self.clients:
                    self.clients.remove(c)

    def _send(self, event: str, data: str) -> None:
        msg = f"event: {event}\ndata: {data}\n\n".encode()
        with self._lock:
            clients = list(self.clients)
            if event == "end":
                self._ended = msg
        for c in clients:
            with c.cv:
                c.q.append(msg)
                c.cv.notify()

    def publish(self, estimate: dict[str, Any]) -> None:
        """One estimate (a JSON line's dict) to every page."""
        self._send("estimate", json.dumps(estimate, separators=(",", ":")))

    def image(self, frame: np.ndarray, t: float) -> None:
        """The newest frame (H, W, 3) RGB; sent as a JPEG at most ``image_hz`` times per second."""
        now = time.monotonic()
        if now - self._last_image < 1.0 / self.image_hz or not self.clients:
            return
        self._last_image = now
        import cv2

        ok, jpg = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            self._send("image", json.dumps({"time": round(float(t), 3),
                                            "src": "data:image/jpeg;base64," + base64.b64encode(jpg).decode()}))

    def status(self, info: dict[str, Any]) -> None:
        self._send("status", json.dumps(info, separators=(",", ":"), default=str))

    def end(self, reason: str) -> None:
        self._send("end", json.dumps({"reason": reason}))

"""HTML pages (vaest view, evaluate --report): built from prediction files, checked in a real headless Chromium.

The browser tests drive Debian's Chromium through Playwright (``executable_path``); they skip with the reason
when either is missing (``scripts/setup.sh`` installs both).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import require_browser
from mediautil import make_video, make_wav

from vaest.errors import VaestError
from vaest.view import make_proxy, media_needs_proxy, view_folder, write_index, write_page

FPS = 25
N = 100  # 4 s
GAP = (40, 60)  # frames [40, 60) (0-based rows) have no estimate
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def write_prediction(csv: Path, media: Path | None, n: int = N, fps: float = FPS, gap: tuple[int, int] = GAP,
                     persons: int = 0) -> Path:
    """A prediction CSV in the `vaest predict` format (+ its JSON), with a gap of frames with no estimate."""
    t = np.arange(n) / fps
    v = 0.8 * np.sin(2 * np.pi * t / 3)
    a = 0.6 * np.cos(2 * np.pi * t / 2)
    src = np.array(["estimated"] * n, dtype=object)
    v[gap[0]:gap[1]] = np.nan
    a[gap[0]:gap[1]] = np.nan
    src[gap[0]:gap[1]] = "none"
    df = pd.DataFrame({"frame": np.arange(1, n + 1), "time": t, "valence": v, "arousal": a, "source": src,
                       "face_valence": v * 0.9, "face_arousal": a * 0.9, "audio_valence": np.nan,
                       "audio_arousal": a * 1.1, "behavior_valence": v * 0.5, "behavior_arousal": a * 0.5,
                       "weight_face": 0.5, "weight_audio": 0.3, "weight_behavior": 0.2})
    if persons:
        df = pd.concat([df.assign(person=k) for k in range(persons)], ignore_index=True)
    csv.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(csv, index=False)
    meta = {"input": str(media) if media else None, "model": "test-model", "modalities": ["face", "audio", "behavior"],
            "versions": {"vaest": "0.1.0"}, "fps": fps, "n_frames": n}
    csv.with_suffix(".json").write_text(json.dumps(meta))
    return csv


# ---------------------------------------------------------------- without a browser

def test_page_is_self_contained_and_keeps_gaps(tmp_path):
    media = make_video(tmp_path / "clip.mp4", n_frames=N, fps=FPS)
    csv = write_prediction(tmp_path / "out" / "clip.csv", media)
    page = write_page(csv, None, tmp_path / "out" / "clip.html")
    text = page.read_text()
    # nothing loaded from elsewhere: no external script, stylesheet or image, the media by relative path
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", text)
    assert 'src="../clip.mp4"' in text
    data = json.loads(re.search(r'<script id="vaest-data" type="application/json">(.*?)</script>', text, re.S)[1])
    g = data["groups"][0]
    val = g["panels"][0]["series"][0]["values"]
    assert [x is None for x in val] == [GAP[0] <= i < GAP[1] for i in range(N)]
    assert g["t"][1] == pytest.approx(1 / FPS) and g["frame"][:2] == [1, 2]
    assert [s["label"] for s in g["panels"][0]["series"]] == ["valence", "face", "audio", "behavior"]
    assert g["panels"][2]["title"] == "fusion weights"
    assert "test-model" in text and "none: 20" in text  # metadata and the source counts are shown


def test_persons_get_one_group_each(tmp_path):
    csv = write_prediction(tmp_path / "p.csv", None, persons=2)
    text = write_page(csv, None, tmp_path / "p.html").read_text()
    assert '<select id="vaest-person">' in text and "person 1" in text


def test_bad_prediction_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("frame,valence\n1,0.1\n")
    with pytest.raises(VaestError, match=r"bad\.csv.*missing column\(s\) time, arousal"):
        write_page(bad, None, tmp_path / "bad.html")
    with pytest.raises(VaestError, match="no such prediction file"):
        write_page(tmp_path / "none.csv", None, tmp_path / "none.html")


def test_formats_the_browser_cannot_play_get_an_h264_proxy(tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed (scripts/setup.sh installs it)")
    import av

    mp4 = make_video(tmp_path / "a.mp4", n_frames=30, fps=FPS)
    flv = make_video(tmp_path / "a.flv", n_frames=30, fps=FPS)
    mpeg4 = make_video(tmp_path / "b.mp4", n_frames=30, fps=FPS, codec="mpeg4")
    assert not media_needs_proxy(mp4)
    assert media_needs_proxy(flv) and media_needs_proxy(mpeg4)
    assert not media_needs_proxy(make_wav(tmp_path / "a.wav"))
    out = make_proxy(flv, tmp_path / "a.media.mp4")
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        times = [float(f.time) for f in c.decode(video=0)]
    assert len(times) == 30 and times[1] - times[0] == pytest.approx(1 / FPS, abs=1e-3)
    mtime = out.stat().st_mtime_ns
    assert make_proxy(flv, out).stat().st_mtime_ns == mtime  # reused, not remade
    text = write_page(write_prediction(tmp_path / "f.csv", flv, n=30), None, tmp_path / "f.html").read_text()
    assert 'src="f.media.mp4"' in text


def make_folder_run(root: Path) -> Path:
    """A folder run as `vaest predict DIR --out OUT` writes it: two ok inputs (video, audio) and a failure."""
    media = root / "media"
    media.mkdir(parents=True)
    make_video(media / "talk.mp4", n_frames=N, fps=FPS)
    make_wav(media / "voice.wav", seconds=3.0)
    (media / "broken.mp4").write_bytes(b"not a video")
    out = root / "out"
    write_prediction(out / "talk.csv", media / "talk.mp4")
    write_prediction(out / "voice.csv", media / "voice.wav", n=75)
    pd.DataFrame({"input": ["../media/talk.mp4", "../media/voice.wav", "../media/broken.mp4"],
                  "csv": ["talk.csv", "voice.csv", ""], "status": ["ok", "ok", "failed"],
                  "reason": ["", "", "cannot open as media"]}).to_csv(out / "index.csv", index=False)
    return out


def test_folder_index_links_every_input(tmp_path):
    out = make_folder_run(tmp_path)
    index = view_folder(out)
    text = index.read_text()
    assert (out / "talk.html").exists() and (out / "voice.html").exists()
    hrefs = re.findall(r'href="([^"]+)"', text)
    assert hrefs == ["talk.html", "voice.html", "../media/broken.mp4"]
    assert "cannot open as media" in text
    assert "<audio" in (out / "voice.html").read_text()
    with pytest.raises(VaestError, match="no such index"):
        write_index(tmp_path / "nowhere" / "index.csv")


def test_cli_view(tmp_path):
    from typer.testing import CliRunner

    from vaest.cli import app

    media = make_video(tmp_path / "c.mp4", n_frames=30, fps=FPS)
    csv = write_prediction(tmp_path / "c.csv", media, n=30)
    res = CliRunner().invoke(app, ["view", str(csv), "--out", str(tmp_path / "page.html")])
    assert res.exit_code == 0, res.output
    assert "vaest-data" in (tmp_path / "page.html").read_text()
    out = make_folder_run(tmp_path / "run")
    res = CliRunner().invoke(app, ["view", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "index.html").exists()


@pytest.fixture(scope="module")
def eval_report(tmp_path_factory):
    """`write_report` over three synthetic runs; the two validation videos have media (H.264 .mp4; MPEG-4 .avi)."""
    from test_fusion import make_synthetic_runs

    from vaest.report import evaluate_runs, write_report

    root = tmp_path_factory.mktemp("evalrep")
    s = make_synthetic_runs(root, n_train=1, n_val=2, n_frames=120, emb_dim=4, seed=3)
    (s["corpus"] / "videos").mkdir()
    make_video(s["corpus"] / "videos" / "vid01.mp4", n_frames=120, fps=30)
    make_video(s["corpus"] / "videos" / "vid02.avi", n_frames=120, fps=30, codec="mpeg4")
    runs = list(s["runs"].values())
    rows = evaluate_runs(runs)
    write_report(rows, runs, root / "rep")
    return root / "rep", rows, runs


def test_evaluate_report_writes_index_and_video_pages(eval_report):
    rep, rows, runs = eval_report
    text = (rep / "index.html").read_text()
    pages = sorted(p.name for p in rep.glob("video_*.html"))
    assert pages == ["video_vid01.html", "video_vid02.html"]
    for p in pages:
        assert f'href="{p}"' in text
    # one per-video row per run and video, with raw and smoothed scores, and every stage row of every run
    assert text.count("<tr>") - 2 == len(rows) + 2 * len(runs)
    page = (rep / pages[0]).read_text()
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', page, re.S)[1])
    labels = [s["label"] for s in data["groups"][0]["panels"][0]["series"]]
    assert labels[0] == "true" and len(labels) == 1 + len(runs)
    assert 'src="../corpus/videos/vid01.mp4"' in page
    assert 'src="video_vid02.media.mp4"' in (rep / pages[1]).read_text()  # the .avi gets a proxy


# ---------------------------------------------------------------- in a real browser

@pytest.fixture(scope="module")
def browser():
    """A headless Chromium context (fresh profile). Skips naming what is missing (Playwright, a Chromium binary;
    under CI=true their absence fails); a browser that is there but will not start fails the tests."""
    exe = require_browser()
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="vaest-chromium-")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=exe, headless=True, args=LAUNCH_ARGS,
                                                   viewport={"width": 1100, "height": 900})
        yield ctx
        ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


class Opened:
    """A page opened from the file system, with its console errors and every request it made."""

    def __init__(self, ctx, path: Path):
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page = ctx.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        t0 = time.perf_counter()
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_function("window.vaestView && window.vaestView.ready")
        self.load_s = time.perf_counter() - t0

    def js(self, expr: str, arg=None):
        return self.page.evaluate(expr, arg)

    def media_ready(self) -> float:
        """Wait for the media's metadata; returns its duration (s)."""
        self.page.wait_for_function("document.getElementById('vaest-media').readyState >= 1", timeout=15000)
        return self.js("document.getElementById('vaest-media').duration")

    def offline_and_clean(self) -> None:
        assert not self.errors, self.errors
        assert all(u.split(":", 1)[0] in ("file", "data", "blob") for u in self.requests), self.requests

    def close(self) -> None:
        self.page.close()


@pytest.fixture(scope="module")
def video_page(tmp_path_factory):
    d = tmp_path_factory.mktemp("page")
    (d / "media").mkdir()
    media = make_video(d / "media" / "clip.mp4", n_frames=N, fps=FPS, size=(160, 120))
    csv = write_prediction(d / "out" / "clip.csv", media)
    return write_page(csv, None, d / "out" / "clip.html")


def test_page_loads_offline_and_reads_the_video(browser, video_page):
    o = Opened(browser, video_page)
    assert o.media_ready() == pytest.approx(N / FPS, abs=0.1)
    o.offline_and_clean()
    assert o.js("window.vaestView.plots.length") == 3
    o.close()


def test_seeking_the_video_moves_the_cursor(browser, video_page):
    o = Opened(browser, video_page)
    o.media_ready()
    for t in (2.2, 0.6):
        o.js("t => { document.getElementById('vaest-media').currentTime = t; }", t)
        o.page.wait_for_function("t => Math.abs(window.vaestView.time - t) < 1e-3", arg=t, timeout=10000)
        for k in range(3):
            # where the cursor is drawn, read back as a time: the right time within one pixel
            px = o.js("([k, t]) => window.vaestView.plots[k].valToPos(t, 'x') - "
                      "window.vaestView.plots[k].valToPos(t - 1, 'x')", [k, t])
            assert o.js(f"window.vaestView.headTime({k})") == pytest.approx(t, abs=1.0 / px)
        assert f"frame {int(round(t * FPS)) + 1} " in o.js("document.getElementById('vaest-readout').textContent")
    o.offline_and_clean()
    o.close()


def test_click_and_drag_on_the_curves_seek_the_video(browser, video_page):
    o = Opened(browser, video_page)
    o.media_ready()
    for k, t in ((0, 1.3), (1, 3.1), (2, 0.4)):
        o.js("k => window.vaestView.plots[k].over.scrollIntoView({block: 'center'})", k)
        x, y = o.js("([k, t]) => [window.vaestView.pageX(k, t), window.vaestView.pageY(k)]", [k, t])
        o.page.mouse.click(x, y)
        now = o.js("document.getElementById('vaest-media').currentTime")
        assert now == pytest.approx(t, abs=1.0 / FPS)
    o.js("window.vaestView.plots[0].over.scrollIntoView({block: 'center'})")
    x0, y = o.js("[window.vaestView.pageX(0, 0.5), window.vaestView.pageY(0)]")
    x1 = o.js("window.vaestView.pageX(0, 2.5)")
    o.page.mouse.move(x0, y)
    o.page.mouse.down()
    o.page.mouse.move(x1, y, steps=5)
    o.page.mouse.up()
    assert o.js("document.getElementById('vaest-media').currentTime") == pytest.approx(2.5, abs=1.0 / FPS)
    o.offline_and_clean()
    o.close()


# Count, down one canvas column at time t, the pixels of the (only shown) final valence line (#d62728).
RED_PIXELS = """([t]) => {
  const u = window.vaestView.plots[0];
  for (let i = 2; i < u.series.length; i++) u.setSeries(i, {show: false});
  const x = Math.round(u.valToPos(t, 'x', true));
  const img = u.ctx.getImageData(x - 1, u.bbox.top, 3, u.bbox.height).data;
  let n = 0;
  for (let i = 0; i < img.length; i += 4) if (img[i] > 150 && img[i + 1] < 120 && img[i + 2] < 120) n++;
  return n;
}"""


def test_a_gap_in_the_data_is_a_gap_in_the_line(browser, video_page):
    o = Opened(browser, video_page)
    inside = (GAP[0] + GAP[1]) / 2 / FPS
    assert o.js(RED_PIXELS, [inside]) == 0
    for t in (0.5, 3.5):
        assert o.js(RED_PIXELS, [t]) > 0
    o.offline_and_clean()
    o.close()


def test_index_page_links_every_input_and_pages_play(browser, tmp_path):
    out = make_folder_run(tmp_path)
    index = view_folder(out)
    p = browser.new_page()
    p.goto(index.resolve().as_uri())
    hrefs = p.eval_on_selector_all("a", "as => as.map(a => a.href)")
    assert len(hrefs) == 3
    assert [Path(h.replace("file://", "")).resolve() for h in hrefs] == [
        (out / "talk.html").resolve(), (out / "voice.html").resolve(), (tmp_path / "media" / "broken.mp4").resolve()]
    p.close()
    audio = Opened(browser, out / "voice.html")
    assert audio.js("document.getElementById('vaest-media').tagName") == "AUDIO"
    assert audio.media_ready() == pytest.approx(3.0, abs=0.1)
    audio.offline_and_clean()
    audio.close()


def test_proxy_of_an_flv_plays_in_the_browser(browser, tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed (scripts/setup.sh installs it)")
    flv = make_video(tmp_path / "clip.flv", n_frames=N, fps=FPS)
    page = write_page(write_prediction(tmp_path / "clip.csv", flv), None, tmp_path / "clip.html")
    o = Opened(browser, page)
    assert o.media_ready() == pytest.approx(N / FPS, abs=0.1)
    o.offline_and_clean()
    o.close()


def test_ten_minute_page_opens_fast_and_stays_responsive(browser, tmp_path):
    n = 18000  # 10 minutes at 30 fps, 11 curves
    csv = write_prediction(tmp_path / "long.csv", None, n=n, fps=30, gap=(9000, 9300))
    page = write_page(csv, None, tmp_path / "long.html")
    o = Opened(browser, page)
    # navigation start -> all plots drawn, as the page itself measures it
    ready_ms = o.js("window.vaestView.readyMs")
    seek_ms = o.js("""() => { const t0 = performance.now();
        for (let i = 0; i < 50; i++) window.vaestView.seek(i * 11.3);
        return (performance.now() - t0) / 50; }""")
    print(f"10-min page: {page.stat().st_size / 1e6:.2f} MB, ready in {ready_ms:.0f} ms "
          f"(load as timed by the test {o.load_s:.2f} s), one seek + redraw of the cursor {seek_ms:.2f} ms")
    assert ready_ms < 2000 and seek_ms < 50
    o.offline_and_clean()
    o.close()


def test_screenshot(browser, video_page, tmp_path):
    """A PNG of a page, the cursor at 1.2 s. VAEST_SCREENSHOT=PATH also writes it to PATH (docs/img/viewer.png);
    VAEST_SCREENSHOT_PAGE=HTML takes that page (e.g. one `vaest view` wrote) instead of the test's own."""
    page = Path(os.environ.get("VAEST_SCREENSHOT_PAGE") or video_page)
    o = Opened(browser, page)
    o.media_ready()
    o.js("document.getElementById('vaest-media').currentTime = 1.2")
    o.page.wait_for_function("Math.abs(window.vaestView.time - 1.2) < 1e-3")
    o.page.wait_for_function("(v => !v.seeking && v.readyState === 4 && v.networkState === 1)(document.getElementById('vaest-media'))")
    # Chromium's player keeps its seek spinner drawn in a headless page: rebuild its controls for the picture
    o.js("(v => { v.controls = false; v.controls = true; })(document.getElementById('vaest-media'))")
    o.offline_and_clean()
    shot = tmp_path / "viewer.png"
    o.page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("VAEST_SCREENSHOT"):
        shutil.copy(shot, os.environ["VAEST_SCREENSHOT"])
    o.close()


def test_evaluate_report_pages_play_their_video(browser, eval_report):
    rep, _, runs = eval_report
    for name in ("video_vid01.html", "video_vid02.html"):
        o = Opened(browser, rep / name)
        assert o.media_ready() == pytest.approx(4.0, abs=0.1)
        o.js("window.vaestView.plots[1].over.scrollIntoView({block: 'center'})")
        x, y = o.js("[window.vaestView.pageX(1, 2.5), window.vaestView.pageY(1)]")
        o.page.mouse.click(x, y)
        assert o.js("document.getElementById('vaest-media').currentTime") == pytest.approx(2.5, abs=1 / 30)
        assert o.js("window.vaestView.plots[0].series.length") == 2 + len(runs)
        o.offline_and_clean()
        o.close()


def test_person_selector_switches_the_curves(browser, tmp_path):
    csv = write_prediction(tmp_path / "p.csv", None, persons=2)
    df = pd.read_csv(csv)
    df.loc[df["person"] == 1, "valence"] = -0.5  # person 1: a flat line, no gap
    df.to_csv(csv, index=False)
    o = Opened(browser, write_page(csv, None, tmp_path / "p.html"))
    inside = (GAP[0] + GAP[1]) / 2 / FPS
    assert o.js(RED_PIXELS, [inside]) == 0
    o.page.select_option("#vaest-person", index=1)
    assert o.js("window.vaestView.plots[0].data[1][50]") == -0.5
    assert o.js(RED_PIXELS, [inside]) > 0
    o.offline_and_clean()
    o.close()



def test_predict_html_pages_of_a_real_run_play_and_follow_the_umask(browser, synth_corpus, tmp_path):
    """`vaest predict --html` (predict_many(html=True)) on a talking-face video, a wav and a broken file: the
    viewer reads the real outputs (CSV columns, JSON meta, index.csv paths relative to OUT), every page opens
    offline without errors and plays its media, and pages follow the user's umask like the CSVs."""
    import vaest
    from vaest.corpus import load_corpus
    from vaest.predictor import predict_many

    media = tmp_path / "in"
    media.mkdir()
    src = next(v.media for v in load_corpus(synth_corpus).videos if v.media is not None and v.side is None)
    shutil.copy(src, media / "talk.mp4")
    make_wav(media / "voice.wav", seconds=3.0)
    (media / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    old = os.umask(0o027)
    try:
        rows = predict_many([media], out, vaest.Predictor(device="cpu"), plot=False, html=True)
    finally:
        os.umask(old)
    assert [r["status"] for r in rows] == ["failed", "ok", "ok"]
    for name in ("talk.html", "voice.html", "index.html", "talk.csv"):
        assert (out / name).stat().st_mode & 0o777 == 0o640, name
    p = browser.new_page()
    p.goto((out / "index.html").resolve().as_uri())
    hrefs = [Path(h.replace("file://", "")).resolve() for h in p.eval_on_selector_all("a", "as => as.map(a => a.href)")]
    assert hrefs == [(media / "broken.mp4").resolve(), (out / "talk.html").resolve(), (out / "voice.html").resolve()]
    p.close()
    talk = Opened(browser, out / "talk.html")
    assert talk.media_ready() == pytest.approx(8.0, abs=0.2)
    names = talk.js("window.vaestView.data.groups[0].panels.map(p => p.series.map(s => s.label))")
    assert "face" in names[0] and "audio" in names[1] and {"face", "audio"} <= set(names[2])
    talk.offline_and_clean()
    talk.close()
    voice = Opened(browser, out / "voice.html")
    assert voice.js("document.getElementById('vaest-media').tagName") == "AUDIO"
    voice.offline_and_clean()
    voice.close()

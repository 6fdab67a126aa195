"""``vaest evaluate``, ``vaest predict``, ``vaest live``, ``vaest submit``, ``vaest demo`` and ``vaest view``:
scoring runs, predicting media files, live estimates, the challenge file, the whole method on a synthetic corpus,
HTML pages."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from vaest.cli.common import FAST_EXIT, AddressOpt, CheckedDeviceOpt, ConfigDefaultsOpt, ConfigOpt, app, console, fmt_cell, log



@app.command()
def evaluate(
    runs: Annotated[list[Path], typer.Argument(help="Run folder(s) written by `vaest train`.")],
    corpus: Annotated[Optional[Path], typer.Option(help="Corpus root (default: the one recorded in the run).")] = None,
    split: Annotated[str, typer.Option(help="Split to score.")] = "val",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write all scores as JSON.")] = None,
    stages: Annotated[bool, typer.Option(help="Also score the post-processing stages (raw, filled, smoothed).")] = True,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write DIR/report.md with the stage table and "
                                                   "PNG plots (curves, fusion weights).")] = None,
    config: ConfigDefaultsOpt = None,
) -> None:
    """Print the CCC table of one or more runs and write RUN/metrics.json for each."""
    from vaest.corpus import load_corpus
    from vaest.inference import evaluate_predictions, read_run_json
    from vaest.io import atomic_write_json

    t = Table(title=f"{split} CCC")
    for c in ("run", "modality", "valence", "arousal", "mean", "frames", "clip valence", "clip arousal", "clips"):
        t.add_column(c, justify="left" if c in ("run", "modality") else "right")
    allscores = {}
    cache: dict[str, object] = {}
    for run in runs:
        info = read_run_json(run)
        root = str(corpus or info.get("corpus"))
        if root not in cache:
            cache[root] = load_corpus(root)
        scores = evaluate_predictions(run, cache[root], split)  # type: ignore[arg-type]
        atomic_write_json(Path(run) / "metrics.json", {k: scores[k] for k in ("valence", "arousal", "mean")})
        allscores[str(run)] = {"modality": info.get("modality"), **scores}
        t.add_row(str(run), str(info.get("modality", "?")), fmt_cell(scores["valence"]), fmt_cell(scores["arousal"]),
                  fmt_cell(scores["mean"]), fmt_cell(int(scores.get("frames", 0))), fmt_cell(scores.get("clip_valence", math.nan)),
                  fmt_cell(scores.get("clip_arousal", math.nan)), fmt_cell(int(scores.get("clips", 0))))
    console.print(t)
    if stages or report:
        from vaest.report import evaluate_runs, rich_table, write_report

        rows = evaluate_runs(runs, corpus, split)
        console.print(rich_table(rows, f"{split} CCC by post-processing stage"))
        for r in rows:
            allscores[r["run"]].setdefault("stages", {})[r["stage"]] = {
                k: r[k] for k in ("valence", "arousal", "mean", "kernels")}
        if report:
            console.print(f"report: {write_report(rows, runs, report, corpus, split)}")
    if json_out:
        atomic_write_json(json_out, allscores)



@app.command()
def predict(
    inputs: Annotated[list[str], typer.Argument(help="Video, audio or photo (JPEG, PNG, WebP) files, folders "
                                                      "(searched recursively for media by extension) or quoted "
                                                      "glob patterns.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Output folder: <relative path>.csv/.json/.png per input and index.csv.")
                   ] = Path("vaest_out"),
    model: Annotated[Optional[Path], typer.Option(
        help="Trained vaest model: a bundle folder (bundle.json, e.g. demo_out/model) or one run folder. None = "
             "zero-shot: the face through --face-backbone (its VA head, else expressions on the circumplex) and "
             "the voice's arousal from gain-independent cues (spectral tilt, F0 range; no valence), "
             "fused per frame for videos.")] = None,
    face_backbone: Annotated[Optional[str], typer.Option(
        "--face-backbone", help="Zero-shot face encoder: ensemble (default), minixception, fer, or emotiefflib:<model name "
                                "or path to a downloaded file> (e.g. emotiefflib:enet_b0_8_va_mtl, loaded offline).")
                             ] = None,
    audio_backbone: Annotated[Optional[str], typer.Option(
        "--audio-backbone", help="Zero-shot voice from a dimensional speech-emotion model: a save_pretrained "
                                 "folder (e.g. audEERING wav2vec2-large-robust-12-ft-emotion-msp-dim) instead of "
                                 "the built-in voice cues; gives valence too.")] = None,
    device: CheckedDeviceOpt = "auto",
    fill: Annotated[bool, typer.Option("--fill/--no-fill", help="Dense output: frames without any input get the "
                                       "nearest estimate (source=filled); default leaves them empty (source=none).")
                    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Recompute cached features (OUT/.features).")] = False,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write a PNG plot per input.")] = True,
    html: Annotated[bool, typer.Option("--html", help="Also write an interactive page per input beside its CSV "
                                       "(media with its curves) and OUT/index.html.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    people: Annotated[str, typer.Option("--people", help="Several faces: main (one person throughout, the one "
                                        "present and speaking most; frames without them are gaps), all (one row "
                                        "per frame and person), left, right, or a person id. See docs/persons.md."
                                        )] = "main",
    working_side: Annotated[Optional[int], typer.Option(
        "--working-side", help="Working resolution: frames (in display orientation) are reduced while decoding "
                               "so that their longer side is at most this many pixels (default 960; 0 = full "
                               "size). Boxes are written in the displayed picture's pixels either way.")] = None,
    config: ConfigDefaultsOpt = None,
    engine: Annotated[str, typer.Option("--engine", help="local: this process; ray: one Predictor per Ray worker, "
                                        "outputs written here as results arrive (README: Scale-out).")] = "local",
    address: AddressOpt = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="ray: workers (default: what the cluster "
                                                   "can place, one CPU each).")] = None,
    gpus_per_worker: Annotated[float, typer.Option("--gpus-per-worker", help="ray: GPUs each worker reserves "
                                                   "(its Predictor then runs on cuda).")] = 0.0,
    file_timeout: Annotated[Optional[float], typer.Option("--file-timeout", help="ray: seconds a worker may "
                                                          "spend on one file before it is replaced; the file is "
                                                          "tried once more, then recorded as failed (default "
                                                          "3600; 0 = no limit).")] = None,
) -> None:
    """Per-frame valence/arousal for media files, folders or globs: OUT/<name>.csv (frame,time,valence,arousal,
    source,<modality>_valence/_arousal,weight_<modality>; empty cell = no estimate), .json (metadata), .png, and
    OUT/index.csv (input,csv,status,reason,...: every input ever predicted into OUT, latest result per input).
    Inputs already predicted into OUT with the same settings are skipped (--force redoes them). Features are
    cached in OUT/.features keyed by each file's resolved path, size and modification time. Exit code 1 when
    any input of this run failed."""
    from vaest.pipeline import predict as run_predict

    rows = run_predict(inputs, out, model, device, fill=fill, force=force, progress=progress, plot=plot,
                       people=people, html=html, face_backbone=face_backbone, audio_backbone=audio_backbone,
                       engine=engine, address=address, workers=workers, gpus_per_worker=gpus_per_worker,
                       file_timeout=file_timeout, rows=True, working_side=working_side)
    FAST_EXIT[0] = True  # every output is written and closed (atomically): skip the interpreter's teardown
    if any(r["status"] != "ok" for r in rows):
        raise typer.Exit(1)



@app.command()
def live(
    source: Annotated[str, typer.Argument(help="A camera (/dev/video0 or an index), any stream FFmpeg opens "
                                               "(rtsp://, rtmp://, srt://, udp://, tcp://, HLS over http(s)://), "
                                               "or - for a Matroska/MPEG-TS byte stream on stdin.",
                                          show_default=False)],
    model: Annotated[Optional[Path], typer.Option(help="Trained vaest model (bundle folder), as predict; None = "
                                                       "zero-shot.")] = None,
    face_backbone: Annotated[Optional[str], typer.Option("--face-backbone", help="Zero-shot face encoder, as "
                                                         "predict.")] = None,
    audio_backbone: Annotated[Optional[str], typer.Option("--audio-backbone", help="Zero-shot voice model, as "
                                                          "predict.")] = None,
    device: CheckedDeviceOpt = "auto",
    people: Annotated[str, typer.Option("--people", help="main, all, left, right or a person id, as predict "
                                        "(decided on what was seen so far).")] = "main",
    audio: Annotated[Optional[str], typer.Option("--audio", help="Audio from another input instead of the "
                                                 "source's own track: FORMAT:DEVICE (alsa:default, "
                                                 "pulse:default) or a URL.")] = None,
    rate: Annotated[Optional[float], typer.Option("--rate", help="Estimates per second on stdout and the page "
                                                  "(default: every processed frame; --out keeps every frame).")
                    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Record OUT/live.csv and OUT/live.json as predict "
                                                "writes them, flushed every second.")] = None,
    serve: Annotated[Optional[str], typer.Option("--serve", help="Serve the live page on [HOST:]PORT "
                                                 "(127.0.0.1 by default; port 0 = any free port).")] = None,
    queue: Annotated[int, typer.Option("--queue", help="Frames the queue holds; when full the oldest is dropped "
                                       "(counted).")] = 8,
    stall: Annotated[float, typer.Option("--stall", help="Seconds without a frame before the source counts as "
                                         "stalled.")] = 5.0,
    reconnect: Annotated[bool, typer.Option("--reconnect", help="Reopen a network source that ends, stalls or "
                                            "fails (backoff 0.5 s doubling to 8 s).")] = False,
    frames: Annotated[Optional[int], typer.Option("--frames", help="Stop after this many processed frames.")
                      ] = None,
    window: Annotated[float, typer.Option("--window", help="With --model: seconds of context the bundle's "
                                          "models see.")] = 8.0,
    hop: Annotated[float, typer.Option("--hop", help="With --model: seconds between two runs of the bundle's "
                                       "models.")] = 4.0,
) -> None:
    """Valence/arousal while it happens: one JSON line per estimate on stdout (time, frame, person, valence,
    arousal, each modality, source, latency_ms), causal (docs/live.md). SIGINT/SIGTERM end it cleanly; a source
    that ends, stalls or fails gives one line on stderr (exit 1 unless it ended)."""
    import json
    import signal
    import sys
    import time

    from vaest.live import SourceFault
    from vaest.live.server import LiveServer, parse_serve
    from vaest.predictor import Predictor
    from vaest.progress import native_noise_piped

    def _say(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    server = LiveServer(*parse_serve(serve)) if serve else None
    predictor = Predictor(model, device, people=people, face_backbone=face_backbone, audio_backbone=audio_backbone)
    st = predictor.stream(source, audio=audio, rate=rate, out=out, queue_size=queue, stall_s=stall,
                          reconnect=reconnect, preview=server.image if server else None, max_frames=frames,
                          window_s=window, hop_s=hop, on_fault=lambda line: _say(f"vaest live: {line}"))

    def on_signal(signum: int, _frame: object) -> None:
        st.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if server is not None:
        server.title = f"vaest live: {st.source.name}"
        server.start()
        sys.stderr.write(f"vaest live: serving {server.url}\n")
        sys.stderr.flush()
    sys.stderr.write(f"vaest live: reading {source}\n")
    sys.stderr.flush()
    rc = 0
    last_status = 0.0
    try:
        with native_noise_piped():  # MediaPipe's graphs log as persons appear; our own lines pass at once
            for r in st:
                d = {**r.to_json(), "input": st.source.name}
                try:
                    sys.stdout.write(json.dumps(d) + "\n")
                    sys.stdout.flush()
                except BrokenPipeError:  # the reader went away: end cleanly, files complete
                    st.stop()
                if server is not None:
                    server.publish(d)
                    now = time.monotonic()
                    if now - last_status >= 1.0:
                        last_status = now
                        lat = st.latency()
                        server.status({"source": st.source.name, "frames_processed": st.processed,
                                       "frames_dropped": st.source.dropped, "latency_median_ms": lat["median_ms"],
                                       "latency_p95_ms": lat["p95_ms"]})
    except SourceFault as e:
        rc = 1
        sys.stderr.write(f"vaest live: {e}\n")
    finally:
        if server is not None:
            server.end(st.end_reason or "stopped")
            server.close()
    lat = st.latency()
    if rc == 0:
        sys.stderr.write(f"vaest live: {st.end_reason}\n")
    sys.stderr.write(f"vaest live: {st.processed} frames processed of {st.source.n_arrived} arrived, "
                     f"{st.source.dropped} dropped; latency median {lat['median_ms']:.0f} ms, p95 "
                     f"{lat['p95_ms']:.0f} ms\n")
    FAST_EXIT[0] = True
    raise typer.Exit(rc)



@app.command()
def submit(
    run: Annotated[Path, typer.Argument(help="Run folder whose predictions to submit (a fusion or late run), or a "
                                        "model bundle (bundle.json: applied to the split's media as `vaest predict` "
                                        "does, with its own kernels; --corpus required).")],
    out: Annotated[Path, typer.Option(help="Submission file to write.")],
    corpus: Annotated[Optional[Path], typer.Option(help="Corpus root (default: the run's).")] = None,
    split: Annotated[str, typer.Option(help="Split to submit.")] = "test",
    template: Annotated[Optional[Path], typer.Option(help="Organisers' template: rows are written in its order.")] = None,
    kernels: Annotated[Optional[str], typer.Option(help="Smoothing kernels 'V,A' (default: chosen on validation).")] = None,
    preset: Annotated[Optional[str], typer.Option(help="reference: the official kernels 7,13 with replicate edges.")] = None,
    features: Annotated[Optional[Path], typer.Option(help="With a bundle: apply it to the features in this store "
                                                     "(e.g. VLM behavior features extracted elsewhere) instead of "
                                                     "predicting the media.")] = None,
    config: ConfigDefaultsOpt = None,
) -> None:
    """Write an ABAW challenge file (image_location,valence,arousal), post-processed and validated."""
    from vaest.corpus import load_corpus
    from vaest.errors import VaestError
    from vaest.inference import load_predictions, read_run_json
    from vaest.postprocess import REFERENCE_EDGE, REFERENCE_KERNELS, choose_kernels, fill, postprocess
    from vaest.submission import write_submission

    if preset not in (None, "vaest", "reference"):
        raise VaestError(f"unknown submit preset {preset!r}; known: reference, vaest")
    if (run / "bundle.json").is_file():
        if corpus is None:
            raise VaestError(f"{run} is a model bundle: give --corpus (whose '{split}' media it predicts)")
        videos = load_corpus(corpus).split(split)
        if features is not None:
            from vaest.features.store import FeatureStore
            from vaest.bundles import bundle_store_predictions

            got = bundle_store_predictions(run, FeatureStore(features), videos)
        else:
            from vaest.bundles import bundle_predictions

            got = bundle_predictions(run, videos)
        if not got:
            raise VaestError(f"{run}: no prediction for any '{split}' video of {corpus}")
        n = write_submission(out, got, template)
        log.info("wrote %s: %d rows for %d videos (bundle %s)", out, n, len(got), run)
        return
    edge = REFERENCE_EDGE if preset == "reference" else "truncate"
    c = load_corpus(corpus or read_run_json(run)["corpus"])
    if kernels:
        k = tuple(int(x) for x in kernels.split(","))
    elif preset == "reference":
        k = REFERENCE_KERNELS
    else:
        P, Y = [], []
        for v in c.split("val"):
            if v.has_labels:
                try:
                    rec = load_predictions(run, v.id)
                except VaestError:
                    continue
                P.append(fill(rec.values, rec.mask))
                Y.append(v.labels_for(len(rec.values)))
        k = choose_kernels(P, Y) if P else REFERENCE_KERNELS
    preds = {}
    for v in c.split(split):
        try:
            rec = load_predictions(run, v.id)
        except VaestError as e:
            log.error("%s", e)
            continue
        preds[v.id] = postprocess(rec.values, rec.mask, k, edge=edge)
    if not preds:
        raise VaestError(f"{run}: no predictions for any '{split}' video")
    n = write_submission(out, preds, template)
    log.info("wrote %s: %d rows for %d videos (smoothing kernels %s)", out, n, len(preds), k)



@app.command()
def bundle(
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to write (bundle.json, a run folder per model, "
                                      "official.json with the sources).")],
    face: Annotated[Optional[Path], typer.Option(help="Official face temporal model checkpoint (VisualDynamicModel).")] = None,
    behavior: Annotated[Optional[Path], typer.Option(help="Official behavior model checkpoint (TextMambaRegressor).")] = None,
    dcm: Annotated[Optional[Path], typer.Option(help="Official directed cross-modal fusion checkpoint (FusionModel); "
                                                "needs --face and --behavior.")] = None,
    audio: Annotated[Optional[Path], typer.Option(help="Official audio model checkpoint (WavLMS2SModelV1, "
                                                  "attn_stats pooling); reads the 16 kHz waveform.")] = None,
    raav: Annotated[Optional[Path], typer.Option(help="Official RAAV fusion checkpoint (MultimodalFusionModelV4); "
                                                 "needs --audio and its frame modalities (--face, --behavior); "
                                                 "not with --dcm.")] = None,
    audio_backbone: Annotated[str, typer.Option(help="Where the audio backbone's architecture is read (the "
                                                "checkpoint holds its weights only): a folder written by "
                                                "save_pretrained, its config.json, or a hub id.")]
                    = "microsoft/wavlm-large",
    settings: Annotated[Optional[Path], typer.Option(help="YAML: per part (face, behavior, dcm, audio, raav) the "
                                                     "official constructor arguments the weights' shapes do not "
                                                     "tell, e.g. 'face: {num_heads: 8}'.")] = None,
    face_encoder: Annotated[str, typer.Option(help="Frame encoder whose embeddings the face model reads: "
                                              "grada:PATH (the official GRADA checkpoint), or any vaest encoder.")] = "grada",
    behavior_encoder: Annotated[str, typer.Option(help="Behavior features the behavior model reads (vlm: Qwen3-VL, "
                                                  "multimodal branch, last token).")] = "vlm",
    kernels: Annotated[str, typer.Option(help="Smoothing kernels 'V,A' of the bundle.")] = "7,13",
) -> None:
    """Build a model bundle from official Team RAS checkpoint files (for `vaest predict --model` and `vaest submit`)."""
    from vaest.config import load_config, write_run_info
    from vaest.bundles import bundle_from_official

    cfg = load_config(settings) if settings else {}
    k = tuple(int(x) for x in kernels.split(","))
    b = bundle_from_official(out, face=face, behavior=behavior, dcm=dcm, settings=cfg, face_encoder=face_encoder,
                             behavior_encoder=behavior_encoder, kernels=k, audio=audio, raav=raav,
                             audio_backbone=audio_backbone)
    write_run_info(out, "vaest bundle", {"face": face, "behavior": behavior, "audio": audio, "dcm": dcm,
                                         "raav": raav, "audio_backbone": audio_backbone, "settings": cfg,
                                         "face_encoder": face_encoder, "behavior_encoder": behavior_encoder,
                                         "kernels": list(k)})
    console.print(f"bundle: {out / 'bundle.json'} ({', '.join(b.modalities)}"
                  f"{', fusion ' + b.fusion.name if b.fusion else ''})")


@app.command()
def demo(
    out: Annotated[Path, typer.Argument(help="Output folder.")] = Path("demo_out"),
    videos: Annotated[Optional[int], typer.Option(help="Synthetic videos (default 14: 8 train, 3 val, "
                                                  "3 test).")] = None,
    seconds: Annotated[Optional[float], typer.Option(help="Seconds per video (default 30).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (default 0).")] = None,
    config: ConfigOpt = None,
) -> None:
    """The whole method on a fresh synthetic corpus: synth, extract, train, fuse, evaluate, submit, predict."""
    from vaest.config import build, load_config
    from vaest.pipeline import DemoConfig, demo as run_demo

    cfg = build(DemoConfig, load_config(config), {"videos": videos, "seconds": seconds, "seed": seed})
    m = run_demo(out, cfg)
    rep = m["reported"]
    t = Table(title=f"demo: CCC (smoothed), {rep} split; everything chosen on val")
    for col in ("run", f"{rep} valence", f"{rep} arousal", f"{rep} mean", "val mean"):
        t.add_column(col)
    for name, r in m["runs"].items():
        sm = r[rep]["smoothed"]
        t.add_row(name, fmt_cell(sm["valence"]), fmt_cell(sm["arousal"]), fmt_cell(sm["mean"]),
                  fmt_cell(r["val"]["smoothed"]["mean"]))
    console.print(t)
    console.print(f"report: {out / 'report.md'}")



@app.command()
def view(
    path: Annotated[Path, typer.Argument(help="A prediction CSV, or a folder run of `vaest predict` (with index.csv).")],
    media: Annotated[Optional[Path], typer.Option(help="The input's media (default: the input named in the JSON "
                                                  "beside the CSV).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="HTML to write (default: beside the CSV, or "
                                                "FOLDER/index.html).")] = None,
) -> None:
    """Write a self-contained HTML page: the video with its valence/arousal curves (folder: one page per input
    and index.html)."""
    from vaest.view import page_for, view_folder, write_page

    if path.is_dir():
        console.print(f"index: {view_folder(path, out)}")
    else:
        console.print(f"page: {write_page(path, media, out or page_for(path))}")

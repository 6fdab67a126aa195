"""Official Team RAS checkpoints -> a vaest bundle (``vaest bundle``), and a bundle applied to a corpus split
(``vaest submit BUNDLE``: on media through the Predictor, or on stored features).

Kept apart from :mod:`vaest.pipeline` (the demo and the CLI's predict wrapper): converting checkpoints is its own
concern, and both modules sit at the same layer below the CLI.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vaest.apply import Bundle
from vaest.corpus import Video
from vaest.errors import VaestError
from vaest.features.store import FeatureStore
from vaest.io import atomic_write_json, file_sha256
from vaest.postprocess import REFERENCE_KERNELS, postprocess

log = logging.getLogger(__name__)


OFFICIAL_PARTS = ("face", "behavior", "dcm", "audio", "raav")
# official modality names of the RAAV fusion -> vaest modality runs (the official best run: face and qwen_mm)
RAAV_RENAME = {"qwen_mm": "behavior"}
# official audio constructor arguments (configs/cfg_test_w_audio.yaml model.params) with no effect on a trained model
_AUDIO_TRAINING_ONLY = ("model_name", "freeze_backbone")
# official RAAV constructor arguments the converter reads off the tensors: given in --settings (e.g. pasted from the
# official config), the widths and counts are checked against the tensors; modality_priors, only the initial value
# of the learned log-priors the checkpoint holds, is not used
_RAAV_FROM_TENSORS = ("hidden", "num_temporal_layers", "num_audio_latents", "modality_priors")


def _layer_count(sd: dict[str, Any], prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".", 1)[0]) for k in sd if k.startswith(prefix) and k[len(prefix):][:1].isdigit()}
    return max(idx) + 1 if idx else 0


def _first_matrix(sd: dict[str, Any], prefix: str, path: Path) -> tuple[int, int]:
    """(out, in) of the first 2-D weight under ``prefix`` (an input projection)."""
    for k, v in sd.items():
        if k.startswith(prefix) and k.endswith("weight") and getattr(v, "ndim", 0) == 2:
            return int(v.shape[0]), int(v.shape[1])
    raise VaestError(f"{path}: no '{prefix}*weight' matrix: not a checkpoint of the expected official model")


def official_settings(part: str, sd: dict[str, Any], given: dict[str, Any], path: Path) -> dict[str, Any]:
    """Keyword arguments of the official converter for ``part`` (face / behavior / dcm / audio / raav): the widths
    and layer counts read off the state_dict's shapes, then ``given`` (from ``--settings``: what shapes cannot tell,
    e.g. ``num_heads``), which wins; the rest keeps the official defaults. audio: the attention pooling's width;
    raav: the official ``frame_modalities`` in the order of their projections and their vaest names (``qwen_mm``
    -> ``behavior``)."""
    if part == "face":
        hidden, inp = _first_matrix(sd, "image_proj.", path)
        kw: dict[str, Any] = {"input_dim": inp, "hidden_dim": hidden, "tr_layers": _layer_count(sd, "transformer.")}
    elif part == "behavior":
        d_model, inp = _first_matrix(sd, "image_proj.", path)
        kw = {"input_dim": inp, "d_model": d_model, "num_layers": _layer_count(sd, "mamba.")}
    elif part == "audio":
        att, _ = _first_matrix(sd, "pool.proj.", path)
        kw = {"attn_hidden_dim": att}
    elif part == "raav":
        mods = [k.split(".")[1] for k in sd if k.startswith("frame_projectors.") and k.endswith(".weight")]
        if not mods:
            raise VaestError(f"{path}: no 'frame_projectors.*' tensors: not an official MultimodalFusionModelV4")
        kw = {"frame_modalities": mods, "rename": {m: RAAV_RENAME[m] for m in mods if m in RAAV_RENAME}}
    else:
        mods = sorted({k.split(".")[1] for k in sd if k.startswith("projections.")})
        dims = {m: _first_matrix(sd, f"projections.{m}.", path) for m in mods}
        kw = {"modality_input_dims": {m: d[1] for m, d in dims.items()}, "modalities": mods,
              "hidden_dim": next(iter(dims.values()))[0] if dims else 256,
              "tr_layers": _layer_count(sd, "transformer.")}
        if "face_features" in mods and "llm_multimodal_featuress" in mods:  # the official best run
            kw.update(q_modality="face_features", k_modality="llm_multimodal_featuress",
                      v_modality="llm_multimodal_featuress")
    return {**kw, **dict(given or {})}


def _audio_backbone_config(source: str) -> dict[str, Any]:
    """The transformers config (as a dict) of the official audio model's backbone: ``source`` is a folder written
    by ``save_pretrained`` (only its ``config.json`` is read, no weights), that ``config.json`` itself, or a hub id
    (from the Hugging Face cache or hub). The official checkpoint holds the backbone's weights, not its architecture settings."""
    try:
        from transformers import AutoConfig
    except ImportError:
        raise VaestError("the official audio model needs 'transformers' (pip install 'vaest[audio]')") from None
    try:
        return AutoConfig.from_pretrained(source).to_dict()
    except Exception as e:  # not found, not a config: one clear error naming it
        raise VaestError(f"{source}: cannot read the audio backbone's config ({type(e).__name__}: {e}); give "
                         "--audio-backbone a local folder written by save_pretrained (e.g. a copy of "
                         "microsoft/wavlm-large) or its config.json") from None


def _convert(part: str, sd: dict[str, Any], kw: dict[str, Any], path: Path, audio_backbone: str) -> Any:
    """The vaest reference model of one official state_dict (``kw``: :func:`official_settings`)."""
    from vaest.models.official import (audio_from_official, behavior_from_official, dcm_from_official,
                                       face_from_official, raav_from_official)

    try:
        if part == "audio":  # the ssl weights' hub id and the freezing switch only matter when training starts
            kw = {k: v for k, v in kw.items() if k not in _AUDIO_TRAINING_ONLY}
            return audio_from_official(sd, _audio_backbone_config(audio_backbone), **kw)
        if part == "raav":
            kw = dict(kw)
            if not kw.pop("use_predictions", True):
                raise VaestError(f"{path}: an official RAAV trained without use_predictions; vaest feeds every "
                                 "input as [embedding, valence, arousal] (the official configuration)")
            told = {k: kw.pop(k) for k in _RAAV_FROM_TENSORS if k in kw}
            model = raav_from_official(sd, kw.pop("frame_modalities"), **kw)
            c = model.config
            have = {"hidden": c.hidden, "num_temporal_layers": c.temporal_layers, "num_audio_latents": c.n_latents}
            wrong = {k: (v, have[k]) for k, v in told.items() if k in have and int(v) != have[k]}
            if wrong:
                raise VaestError(f"{path}: settings {', '.join(f'{k} {v}' for k, (v, _) in wrong.items())} differ "
                                 f"from the checkpoint's tensors ({', '.join(f'{k} {h}' for k, (_, h) in wrong.items())})")
            return model
        convert = {"face": face_from_official, "behavior": behavior_from_official, "dcm": dcm_from_official}[part]
        return convert(sd, **kw)
    except TypeError as e:  # a setting the official constructor does not take
        raise VaestError(f"{path}: official {part} settings {sorted(kw)}: {e}") from None


def bundle_from_official(out: str | Path, face: str | Path | None = None, behavior: str | Path | None = None,
                         dcm: str | Path | None = None, settings: dict[str, dict[str, Any]] | None = None,
                         face_encoder: str = "grada", behavior_encoder: str = "vlm",
                         kernels: Sequence[int] = REFERENCE_KERNELS, audio: str | Path | None = None,
                         raav: str | Path | None = None, audio_backbone: str = "microsoft/wavlm-large") -> Bundle:
    """Build a vaest bundle (``OUT/bundle.json``, one run folder per model) from official Team RAS checkpoint
    files: the face temporal model (``VisualDynamicModel``), the behavior model (``TextMambaRegressor``), the
    audio model (``WavLMS2SModelV1``) and one fusion, either the directed cross-modal fusion (``FusionModel``,
    which needs face and behavior) or RAAV (``MultimodalFusionModelV4``, which needs the audio model and the frame
    modalities it was trained on), whichever are given.

    Each file is converted by :mod:`vaest.models.official` (strict: every tensor used) and saved as a vaest
    checkpoint with the inputs the official model reads (face: the ``face-<face_encoder>`` embedding as stored;
    behavior: the ``behavior_encoder`` features, multimodal branch, last token; audio: the 16 kHz waveform in
    4 s windows every 2 s, zero-padded with its mask, windows kept for fusion by the cross-modal rule; windows as
    the reference presets). The fusions are applied as vaest applies its own runs of the same form (``dcm-ref``;
    RAAV ``raav-reference``: one sample per audio window, tokens carrying the audio prediction). The sources (path,
    SHA-256, settings) are recorded in each run's ``run.json`` and in ``OUT/official.json``. ``settings``: per part
    (``face``, ``behavior``, ``dcm``, ``audio``, ``raav``), official keyword arguments that the state_dict's
    shapes do not tell (e.g. ``num_heads``; raav: ``rename`` {official modality: vaest modality}).
    ``audio_backbone``: where the audio backbone's config is read (:func:`_audio_backbone_config`). Returns the
    saved :class:`~vaest.apply.Bundle`.
    """
    import torch

    from vaest.features.behavior import ENCODER_KEYS, encoder_parts
    from vaest.features.face_registry import face_key
    from vaest.inference import write_run_json
    from vaest.inputs.audio import TOKENS_KEY
    from vaest.inputs.fusion import weight_names
    from vaest.inputs.settings import AudioInputs, BehaviorInputs, FaceInputs, FusionInputs, inference_record
    from vaest.io import remove_stale_temporaries
    from vaest.models.official.common import official_state
    from vaest.models.official.dcmmoe import OFFICIAL_NAMES
    from vaest.training import save_checkpoint

    given = {"face": face, "behavior": behavior, "audio": audio, "dcm": dcm, "raav": raav}
    settings = dict(settings or {})
    unknown = set(settings) - set(OFFICIAL_PARTS)
    if unknown:
        raise VaestError(f"official settings for unknown part(s) {sorted(unknown)}; known: {', '.join(OFFICIAL_PARTS)}")
    if not any(given.values()):
        raise VaestError("vaest bundle: give at least one official checkpoint (--face, --behavior, --audio, --dcm, "
                         "--raav)")
    if dcm is not None and (face is None or behavior is None):
        raise VaestError("vaest bundle: the official fusion (--dcm) reads the face and behavior models' outputs; "
                         "give --face and --behavior too")
    if dcm is not None and raav is not None:
        raise VaestError("vaest bundle: a bundle holds one fusion; give --dcm or --raav, not both")
    if raav is not None and audio is None:
        raise VaestError("vaest bundle: the official RAAV fusion (--raav) attends to the audio model's tokens; "
                         "give --audio too")
    out = Path(out)
    sources: dict[str, dict[str, Any]] = {}
    models: dict[str, Any] = {}
    for part, path in given.items():
        if path is None:
            continue
        path = Path(path)
        if not path.is_file():
            raise VaestError(f"{path}: official {part} checkpoint not found")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # a file torch cannot read: one clear error naming it
            raise VaestError(f"{path}: cannot read the official {part} checkpoint ({e})") from None
        if not isinstance(obj, dict):
            raise VaestError(f"{path}: not a state_dict or a checkpoint dict (got {type(obj).__name__})")
        sd = official_state(obj)
        kw = official_settings(part, sd, settings.get(part, {}), path)
        models[part] = _convert(part, sd, kw, path, audio_backbone)
        sources[part] = {"source": str(path.resolve()), "sha256": file_sha256(path), "settings": kw}
        if part == "audio":
            local = Path(audio_backbone)
            sources[part]["backbone_config"] = str(local.resolve()) if local.exists() else audio_backbone
    if "raav" in models:  # its frame modalities must be runs of this bundle (checked before anything is written)
        need = [m for m in models["raav"].config.modalities if m not in models]
        if need:
            raise VaestError(f"{raav}: the official RAAV reads frame modalities {list(models['raav'].config.modalities)}"
                             f" (vaest names; official -> vaest: settings raav.rename); give "
                             f"{', '.join('--' + m for m in need)} too")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    modalities: dict[str, Path] = {}
    emb: dict[str, int] = {}  # width of each modality's embedding, as fusion reads it
    if "face" in models:
        m = models["face"]
        d = m.config.input_dim
        run = out / "face"
        save_checkpoint(run / "model.pt", m, norm={"mean": [0.0] * d, "std": [1.0] * d},
                        inputs={"store_key": face_key(face_encoder), "layout": ["emb"], "dim": d, "motion": False,
                                "parts": ["emb"], "emb_dim": d}, win=400, hop=150, align_end=True)
        write_run_json(run, modality="face", encoder=face_encoder, model="face-transformer-ref",
                       official=sources["face"], inference=inference_record(
                           FaceInputs(encoder=face_encoder, motion=False, parts=("emb",), win=400, hop=150)))
        modalities["face"] = run
        emb["face"] = m.config.hidden_dim
    if "behavior" in models:
        m = models["behavior"]
        d = m.config.input_dim
        run = out / "behavior"
        keys = [ENCODER_KEYS[p] for p in encoder_parts(behavior_encoder) if p != "expr"]
        save_checkpoint(run / "model.pt", m, norm={"mean": [0.0] * d, "std": [1.0] * d},
                        inputs={"store_keys": keys, "encoder": behavior_encoder, "branch": "multimodal",
                                "pool": "last", "dim": d}, win=16, hop=8)
        write_run_json(run, modality="behavior", encoder=behavior_encoder, model="behavior-mamba-ref",
                       official=sources["behavior"], inference=inference_record(
                           BehaviorInputs(encoder=behavior_encoder, branch="multimodal", pool="last", win=16, hop=8)))
        modalities["behavior"] = run
        emb["behavior"] = _behavior_emb_dim(m)
    if "audio" in models:
        m = models["audio"]
        run = out / "audio"
        st = AudioInputs(encoder="wavlm")  # the reference preset's inference settings (cross-modal filter on)
        save_checkpoint(run / "model.pt", m, encoder=st.encoder, filter=st.filter, feature_norm=st.feature_norm)
        write_run_json(run, modality="audio", encoder=st.encoder, model="audio-wavlm-reference", tokens=TOKENS_KEY,
                       official=sources["audio"], inference=inference_record(st))
        modalities["audio"] = run
        emb["audio"] = m.config.emb_dim
    fusion = None
    if "dcm" in models:
        m = models["dcm"]
        for name, width in m.config.input_dims.items():
            if name not in emb or width != emb[name] + 2:
                raise VaestError(f"{dcm}: official fusion input '{name}' has width {width}; vaest feeds each modality "
                                 f"as [embedding, valence, arousal] ({', '.join(f'{k} {v + 2}' for k, v in emb.items())}"
                                 f"); official names map to {OFFICIAL_NAMES}")
        fusion = out / "dcm"
        save_checkpoint(fusion / "model.pt", m)
        runs = {k: f"../{k}" for k in m.config.input_dims}
        write_run_json(fusion, modality="fusion", method="dcm-ref", runs=runs, win=400, hop=150, align_end=True,
                       weight_names=[], form="vaest", official=sources["dcm"], inference=inference_record(
                           FusionInputs(runs=tuple(runs), method="dcm-ref", win=400, hop=150, align_end=True)))
    if "raav" in models:
        m = models["raav"]
        c = m.config
        widths = {**dict(zip(c.modalities, c.in_dims)), "audio": c.audio_dim}
        for name, width in widths.items():
            if width != emb[name] + 2:
                raise VaestError(f"{raav}: official RAAV input '{name}' has width {width}; vaest feeds each modality "
                                 f"as [embedding, valence, arousal] ({', '.join(f'{k} {v + 2}' for k, v in emb.items())})")
        fusion = out / "raav"
        save_checkpoint(fusion / "model.pt", m)
        runs = {k: f"../{k}" for k in (*c.modalities, "audio")}
        write_run_json(fusion, modality="fusion", method="raav", runs=runs, win=400, hop=150,
                       weight_names=weight_names(m), form="reference", official=sources["raav"],
                       inference=inference_record(FusionInputs(runs=tuple(runs), method=m.registry_name)))
    b = Bundle(out, modalities, fusion, tuple(int(k) for k in kernels), face_encoder=face_encoder,
               audio_encoder="wavlm" if "audio" in models else "lmfb")
    b.save()
    atomic_write_json(out / "official.json", {"converted_by": "vaest bundle", "parts": sources,
                                              "face_encoder": face_encoder, "behavior_encoder": behavior_encoder,
                                              "kernels": list(b.kernels)})
    log.info("bundle %s from official checkpoints: %s", out, ", ".join(sources))
    return b


def bundle_predictions(model: str | Path, videos: Sequence[Video], device: str = "auto", progress: bool = True
                       ) -> dict[str, np.ndarray]:
    """Per-frame (n, 2) valence/arousal of each video's media by a bundle, as ``vaest predict --model`` gives them
    (smoothed with the bundle's kernels, holes filled from the nearest estimated frame); a video labelled by side
    (``<name>_left`` / ``_right``) gets that person's series. Videos that fail are logged and left out."""
    from vaest.predictor import Predictor

    predictors: dict[str, Any] = {}
    out: dict[str, np.ndarray] = {}
    for v in videos:
        if v.media is None:
            log.warning("%s: no media file; left out", v.id)
            continue
        people = v.side or "main"
        if people not in predictors:
            predictors[people] = Predictor(model, device=device, progress=progress, fill=True, people=people)
        try:
            df = predictors[people].predict(v.media).frame
        except VaestError as e:
            log.error("%s: %s", v.id, e)
            continue
        out[v.id] = df[["valence", "arousal"]].to_numpy(np.float32)
    return out


def bundle_store_predictions(model: str | Path, store: FeatureStore, videos: Sequence[Video], device: str = "cpu"
                             ) -> dict[str, np.ndarray]:
    """Per-frame (n, 2) valence/arousal of each video from features already in ``store`` (e.g. Qwen3-VL behavior
    features extracted on a GPU machine, which ``vaest predict`` does not compute): the bundle's modality models,
    its fusion (or the mask-aware mean of the modalities without one), then its smoothing kernels. Videos without
    any modality's features are logged and left out."""
    from vaest.apply import FusionModel, load_model, load_modality

    b = load_model(model)
    mods = {m: load_modality(m, run, device) for m, run in b.modalities.items()}
    fusion = FusionModel(b.fusion, device) if b.fusion is not None else None
    out: dict[str, np.ndarray] = {}
    for v in videos:
        tracks = {m: obj.apply(store, v) for m, obj in mods.items()}
        tracks = {m: t for m, t in tracks.items() if t is not None}
        if not tracks:
            log.warning("%s: no features of the bundle's modalities in %s; left out", v.id, store.root)
            continue
        audio = mods.get("audio")
        fused = (fusion.apply(tracks, v, getattr(audio, "windows", None), getattr(audio, "token_va", None))
                 if fusion is not None else None)
        if fused is None:
            n = max(len(t.va) for t in tracks.values())
            same = [t.resized(n) for t in tracks.values()]
            stack = np.stack([np.where(t.mask[:, None], t.va, np.nan) for t in same])
            with np.errstate(all="ignore"):
                va = np.nanmean(stack, axis=0)
            mask = np.isfinite(va).all(1)
        else:
            va, mask = fused.va, fused.mask
        out[v.id] = postprocess(np.nan_to_num(va), mask, tuple(b.kernels))
    return out


def _behavior_emb_dim(model: Any) -> int:
    """Width of the behavior reference model's exported embedding (one probe forward: it depends on ``emb``)."""
    import torch

    with torch.no_grad():
        res = model(torch.zeros(1, 2, model.config.input_dim), mask=torch.ones(1, 2, dtype=torch.bool))
    return int(res["emb"].shape[-1])

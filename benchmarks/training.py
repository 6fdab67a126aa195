"""CPU cost of one training step of the face Transformer and of DCMMoE (where training time goes).

Prints CPU seconds per step (``time.process_time``, so other work on the machine does not count) for a batch of
8 windows of 400 frames on one torch thread:

- face Transformer (reference size, attention span 30 as in the demo): the banded attention used in training
  vs PyTorch's masked full attention (the same function);
- DCMMoE (demo size, d_model 128, three modalities): as trained (dropout 0.1 on the attention weights) and,
  for comparison only, without attention dropout (PyTorch then takes its fused attention kernel).

Usage: ``python benchmarks/training.py [--repeats 3]``
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch


def cpu_per_call(fn: Callable[[], None], repeats: int) -> float:
    """Mean CPU seconds of ``fn`` after one warm-up call."""
    fn()
    c = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - c) / repeats


def face_steps(repeats: int) -> dict[str, float]:
    """CPU s per face-Transformer training step, banded vs stock masked attention."""
    from vaest.models.temporal import FaceTransformer, FaceTransformerConfig

    torch.manual_seed(0)
    m = FaceTransformer(FaceTransformerConfig(input_dim=270, attn_span=30)).train()
    x = torch.randn(8, 400, 270)

    def step() -> None:
        m(x)["va"].sum().backward()

    out = {}
    for name, span in (("banded (trained this way)", 30), ("stock masked full attention", None)):
        for layer in m.encoder.layers:
            layer.span = span
        out[name] = cpu_per_call(step, repeats)
    return out


def dcmmoe_steps(repeats: int) -> dict[str, float]:
    """CPU s per DCMMoE training step with and without dropout on the attention weights."""
    from vaest.models.fusion import DCMMoEConfig, DCMMoEFusion

    torch.manual_seed(0)
    m = DCMMoEFusion(DCMMoEConfig(modalities=("face", "behavior", "audio"), in_dims=(258, 258, 130),
                                  d_model=128)).train()
    inp = {"face": torch.randn(8, 400, 258), "behavior": torch.randn(8, 400, 258), "audio": torch.randn(8, 400, 130)}

    def step() -> None:
        m(**inp)["va"].sum().backward()

    out = {}
    for name, p in (("attention dropout 0.1 (as trained)", 0.1), ("attention dropout 0 (comparison only)", 0.0)):
        for blk in m.blocks:
            blk.attn.dropout = p
        out[name] = cpu_per_call(step, repeats)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    for model, res in (("face", face_steps(a.repeats)), ("dcmmoe", dcmmoe_steps(a.repeats))):
        for name, s in res.items():
            print(f"{model}: {name}: {s:.3f} CPU s per training step (batch 8 x 400 frames)")


if __name__ == "__main__":
    main()

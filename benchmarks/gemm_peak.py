"""The practical matmul peak for a model on this machine: its dominant GEMM, timed alone.

A CPU has no data-sheet peak worth comparing with (clock, cores and vector units vary, and the
machine is shared), so `throughput.py` compares a model's FLOP/s with a GEMM of the model's
own largest matmul shape, in the project's precision, measured in the same run: the rate this
machine reaches on that work when nothing else is in the way. Convolutions count as the GEMM
they lower to (rows = output positions, inner = input channels × kernel, columns = output
channels).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
Shape = tuple[int, int, int]  # rows, inner, columns


def gemm_shape(func: object, args: tuple, out: object) -> Shape | None:
    """The (M, K, N) of one matmul or convolution call, None for any other operator."""
    if func is aten.mm.default:
        (rows, inner), (_, columns) = args[0].shape, args[1].shape
        return rows, inner, columns
    if func is aten.addmm.default:
        (rows, inner), (_, columns) = args[1].shape, args[2].shape
        return rows, inner, columns
    if func is aten.bmm.default:
        (batch, rows, inner), (_, _, columns) = args[0].shape, args[1].shape
        return batch * rows, inner, columns
    if func is aten.convolution.default:
        weight = args[1]
        positions = out.shape[0] * math.prod(out.shape[2:])
        return positions, math.prod(weight.shape[1:]), weight.shape[0]
    return None


class GemmShapes(TorchDispatchMode):
    """Records the FLOPs of every matmul shape the code inside it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.flops: Counter[Shape] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shape = gemm_shape(func, args, out)
        if shape is not None:
            self.flops[shape] += 2 * math.prod(shape)
        return out


def dominant_gemm(model: nn.Module, images: torch.Tensor) -> Shape:
    """The matmul shape that carries most of `model`'s forward FLOPs on `images`."""
    with torch.no_grad(), GemmShapes() as shapes:
        model(images)
    return shapes.flops.most_common(1)[0][0]


def gemm_pass(shape: Shape, device: torch.device, dtype: torch.dtype) -> tuple[Callable, float]:
    """A pass of repeated GEMMs of `shape` lasting about 0.3 s here, and its FLOPs."""
    rows, inner, columns = shape
    left = torch.randn(rows, inner, device=device, dtype=dtype)
    right = torch.randn(inner, columns, device=device, dtype=dtype)
    left @ right  # warm-up: the first call picks the kernel and touches the memory
    flops = 2.0 * rows * inner * columns
    repeats = max(1, int(0.3 * 100e9 / flops))  # ~0.3 s at 100 GFLOP/s

    def run() -> None:
        for _ in range(repeats):
            left @ right

    return run, flops * repeats

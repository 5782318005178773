"""How far one conv-field evaluation is from this CPU's FLOP floor.

Measures the machine's dense throughput (a float32 matmul and a large 3x3 conv), then times
one evaluation f(s, z) of a model's vector field (forward, and forward + vector-Jacobian
product as in a backward pass) and divides by the floor ``conv FLOPs / peak FLOP/s``.
The field is built from an experiment config (no data needed: the input shape comes from
``data.name``).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench/conv_floor.py [--experiment digits_ilnode ...] [--batch 64]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import common
import torch
from torch import nn

import nodex
from nodex.models import DataSpec

SHAPES = {"digits": (1, 8, 8), "mnist5k": (1, 28, 28), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def timeit(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds (after two warm-up calls)."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_flops(repeats: int) -> dict[str, float]:
    """FLOP/s of a 1024² float32 matmul and of a 3x3 conv (64→64 channels, 32², batch 32)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    t_mm = timeit(lambda: a @ b, repeats)
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    x = torch.randn(32, 64, 32, 32)
    with torch.no_grad():
        t_conv = timeit(lambda: conv(x), repeats)
    return {"matmul": 2 * 1024**3 / t_mm, "conv3x3": 2 * 32 * 32 * 32 * 64 * 64 * 9 / t_conv}


def conv_flops(field: nn.Module, z: torch.Tensor, s: torch.Tensor) -> int:
    """Multiply-add FLOPs (2 per MAC) of every Conv2d/Linear in one call ``field(s, z)``."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += 2 * output.numel() * (module.in_channels // module.groups) * k
        elif isinstance(module, nn.Linear):
            total += 2 * output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in field.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        field(s, z, None)
    for h in handles:
        h.remove()
    return total


def measure(experiment: str, batch: int, repeats: int, peak: float) -> None:
    cfg = common.compose([f"experiment={experiment}"], device=None)
    shape = SHAPES[cfg.data.name]
    model = nodex.build(cfg, spec=DataSpec(shape, 10))
    with torch.no_grad():
        z = model.input_layer(torch.rand(batch, *shape))
    s = torch.tensor(0.5)
    field = model.field
    flops = conv_flops(field, z, s)
    with torch.no_grad():
        t_fwd = timeit(lambda: field(s, z, None), repeats)
    zg = z.clone().requires_grad_(True)
    params = [p for p in field.parameters() if p.requires_grad]

    def fwd_vjp():
        out = field(s, zg, None)
        torch.autograd.grad(out, (zg, *params), torch.ones_like(out))

    t_vjp = timeit(fwd_vjp, repeats)
    floor = flops / peak
    print(
        f"{experiment:24s} state {tuple(z.shape)}  conv FLOPs {flops / 1e6:8.1f} M  "
        f"forward {t_fwd * 1e3:7.2f} ms (floor {floor * 1e3:6.2f} ms, ratio {t_fwd / floor:5.2f})  "
        f"forward+vjp {t_vjp * 1e3:7.2f} ms (floor {3 * floor * 1e3:6.2f} ms, ratio {t_vjp / (3 * floor):5.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--experiment", nargs="+", default=["digits_ilnode", "table1_mnist_ilnode", "table1_cifar10_ilnode"]
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peaks = peak_flops(args.repeats)
    peak = max(peaks.values())
    print(f"threads {args.threads}: matmul {peaks['matmul'] / 1e9:.1f} GFLOP/s, "
          f"conv3x3 {peaks['conv3x3'] / 1e9:.1f} GFLOP/s; floor uses {peak / 1e9:.1f} GFLOP/s")
    print("(forward+vjp floor = 3x forward: the vjp costs two convolutions per conv, input and weight gradients)")
    for name in args.experiment:
        measure(name, args.batch, args.repeats, peak)


if __name__ == "__main__":
    main()

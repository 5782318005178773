"""One-shot GPU check: a CUDA training step for vanilla, Galërkin and conv fields, timed against
the CPU, with forward/backward NFE that must be equal on both devices; the default dopri5 (backprop
and adjoint) on both devices; a seed ensemble (``trainer.ensemble=4``, batched MLP fields) end to
end on both devices; then ``trainer.cuda_graph``:
the same training run eagerly and replayed from a CUDA graph, which must give the same losses.

    bash scripts/gpu_check.sh            # on a machine with a GPU (prints a Markdown table)
    python scripts/bench/gpu_check.py --cpu-only --steps 2   # the same code path on the CPU alone

Fixed-step rk4 makes the NFE deterministic, so equal NFE and close losses show that the CUDA
path computes the same training step. Exits 1 when a check fails or CUDA is missing (unless
``--cpu-only``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import common
import torch
from common import one_batch, step_trainer

from nodex.train.cuda_graph import GraphedStep
from nodex.train.run import run_train
from nodex.train.setup import Pipeline, build_optimizer, validate_cuda_graph

CASES = {
    "vanilla MLP (rings, batch 1024)": ["model=vanilla", "data=rings"],
    "Galërkin MLP (rings, batch 1024)": ["model=galnode", "data=rings"],
    "conv IL-NODE (digits, batch 64)": ["experiment=digits_ilnode", "trainer.batch_size=64"],
}
FIXED = ["solver.method=rk4", "solver.step_size=0.1", "solver.sensitivity=autograd", "trainer.num_threads=null"]


ADAPTIVE = {  # the default solver (nodex's lean dopri5) on the GPU: NFE may differ by a step from the CPU's
    "vanilla MLP, dopri5 1e-4 backprop": ["model=vanilla", "data=rings", "trainer.num_threads=null"],
    "vanilla MLP, dopri5 1e-4 adjoint": ["model=vanilla", "data=rings", "solver.sensitivity=adjoint",
                                         "trainer.num_threads=null"],
}

ENSEMBLES = {  # trainer.ensemble end to end: members stacked, MLP fields as batched matmuls
    "vanilla MLP, 4 seeds, batch 64": ["model=vanilla", "data=rings"],
    "Galërkin MLP, 4 seeds, batch 64": ["model=galnode", "data=rings"],
}


def time_steps(
    overrides: list[str], device: str, steps: int, tmp: Path, solver: list[str] = FIXED
) -> tuple[float, int, int, float]:
    """Median ms/step, forward NFE, backward NFE and the loss of the last step on ``device``."""
    cfg = common.compose([*overrides, *solver], device=device)
    pipe = Pipeline(cfg)
    X, y = one_batch(pipe, cfg, default=1024)
    opt = build_optimizer(cfg.trainer, pipe.model, 1)[0]
    trainer = step_trainer(pipe, cfg)
    times = []
    for i in range(steps + 2):  # two warm-up steps (CUDA context, kernels)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss, _, _, nfe_f, nfe_b = trainer.train_step(X, y, opt)
        value = float(loss.detach())  # syncs
        if i >= 2:
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times), nfe_f, nfe_b, value


def _failure(exc: Exception) -> str:
    """``Type: first line of the message``, for a FAILED row."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def graph_run(
    overrides: list[str], graph: bool, steps: int, tmp: Path, device: str = "cuda", backend=None
) -> tuple[float, list[float], int]:
    """Train ``steps`` steps from seed 0 on one fixed batch, eagerly or through
    :class:`GraphedStep`; -> (median ms/step after 5 steps, the losses, forward NFE).
    ``device``/``backend``: a CPU and a stand-in graph run the same plumbing in the tests."""
    graphed = str(graph and device.startswith("cuda")).lower()
    cfg = common.compose([*overrides, *FIXED, f"trainer.cuda_graph={graphed}"], device=device)
    torch.manual_seed(0)
    pipe = Pipeline(cfg)
    validate_cuda_graph(cfg, pipe.settings, pipe.device)
    X, y = one_batch(pipe, cfg, default=1024)
    opt = build_optimizer(cfg.trainer, pipe.model, 1)[0]
    trainer = step_trainer(pipe, cfg)
    plain = lambda Xb, yb: trainer.train_step(Xb, yb, opt)  # noqa: E731
    step = GraphedStep(plain, backend=backend) if graph else plain
    times, losses, nfe_f = [], [], 0
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        loss, _, _, nfe_f, _ = step(X, y)
        losses.append(float(loss.detach()))  # syncs
        times.append(1000 * (time.perf_counter() - start))
    if graph and not step.captured:
        raise RuntimeError(f"the step was not captured: {step.failure}")
    return statistics.median(times[5:]), losses, nfe_f


def check_adaptive(steps: int, tmp: Path, devices: tuple[str, str] = ("cpu", "cuda")) -> bool:
    """The default dopri5 (lean solver, backprop and adjoint) on CPU and CUDA: close losses, NFE
    within one step (6 evaluations: rounding may move an accept decision)."""
    print()
    print("| case (dopri5) | cpu ms/step | cuda ms/step | speed-up | NFE fwd/bwd (cpu; cuda) | loss (cpu / cuda) "
          "| check |")
    print("|---|---|---|---|---|---|---|")
    ok = True
    for name, overrides in ADAPTIVE.items():
        try:
            rows = []
            for device in devices:
                torch.manual_seed(0)
                rows.append(time_steps(overrides, device, steps, tmp, solver=[]))
        except Exception as exc:
            ok = False
            print(f"| {name} | – | – | – | – | – | FAILED: {_failure(exc)} |")
            continue
        cpu, cuda = rows
        same = (abs(cpu[1] - cuda[1]) <= 6 and abs(cpu[2] - cuda[2]) <= 6
                and abs(cpu[3] - cuda[3]) <= 1e-3 * max(1.0, abs(cpu[3])))
        ok &= same
        print(f"| {name} | {cpu[0]:.2f} | {cuda[0]:.2f} | {cpu[0] / cuda[0]:.1f}x | {cpu[1]}/{cpu[2]}; "
              f"{cuda[1]}/{cuda[2]} | {cpu[3]:.5f} / {cuda[3]:.5f} | {'ok' if same else 'MISMATCH'} |")
    return ok


def check_ensemble(
    steps: int, tmp: Path, devices: tuple[str, str] = ("cpu", "cuda"), cases: dict[str, list[str]] = ENSEMBLES
) -> bool:
    """``nodex train trainer.ensemble=4`` (rk4, ``steps`` steps, the public entry point: member run
    directories, checkpoints, evaluation) on CPU and CUDA: equal NFE, close mean test losses."""
    print()
    print(f"| case (rk4, trainer.ensemble=4, {steps} steps) | cpu s | cuda s | NFE fwd (cpu; cuda) "
          "| mean test loss (cpu / cuda) | check |")
    print("|---|---|---|---|---|---|")
    ok = True
    for n, (name, overrides) in enumerate(cases.items()):
        try:
            rows = []
            for i, device in enumerate(devices):
                cfg = common.compose([*overrides, *FIXED, "trainer.ensemble=4", f"trainer.max_steps={steps}",
                                      "trainer.batch_size=64", "trainer.plots=false", "logger.tensorboard=false"],
                                     device=device)
                summary = run_train(cfg, tmp / f"ensemble-{n}-{i}")
                if summary["status"] != "completed":
                    raise RuntimeError(summary["error"])
                rows.append((summary["wall_time_s"], summary["nfe_forward"], summary["metrics"]["test/loss"]))
        except Exception as exc:
            ok = False
            print(f"| {name} | – | – | – | – | FAILED: {_failure(exc)} |")
            continue
        cpu, cuda = rows
        same = cpu[1] == cuda[1] == 40 and abs(cpu[2] - cuda[2]) <= 1e-3 * max(1.0, abs(cpu[2]))
        ok &= same
        print(f"| {name} | {cpu[0]:.1f} | {cuda[0]:.1f} | {cpu[1]:g}; {cuda[1]:g} | {cpu[2]:.5f} / {cuda[2]:.5f} "
              f"| {'ok' if same else 'MISMATCH'} |")
    return ok


def check_cuda_graph(steps: int, tmp: Path, device: str = "cuda", backend_factory=None) -> bool:
    print()
    print(f"trainer.cuda_graph: {steps} steps from the same weights on one batch, eager vs captured once and replayed")
    print("| case | eager ms/step | graph ms/step | speed-up | NFE fwd | last loss (eager / graph) "
          "| max loss difference | check |")
    print("|---|---|---|---|---|---|---|---|")
    ok = True
    for name, overrides in list(CASES.items())[:2]:
        try:
            eager_ms, eager_losses, nfe = graph_run(overrides, False, steps, tmp, device)
            backend = backend_factory() if backend_factory else None
            graph_ms, graph_losses, nfe_g = graph_run(overrides, True, steps, tmp, device, backend)
        except Exception as exc:  # report and carry on: the rest of the table still matters
            ok = False
            print(f"| {name} | – | – | – | – | – | – | FAILED: {_failure(exc)} |")
            continue
        diff = max(abs(a - b) for a, b in zip(eager_losses, graph_losses))
        same = nfe == nfe_g and diff <= 1e-4 * max(1.0, abs(eager_losses[0]))
        ok &= same
        print(f"| {name} | {eager_ms:.2f} | {graph_ms:.2f} | {eager_ms / graph_ms:.1f}x | {nfe_g} "
              f"| {eager_losses[-1]:.6f} / {graph_losses[-1]:.6f} | {diff:.1e} | {'ok' if same else 'MISMATCH'} |")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cpu-only", action="store_true", help="run the CPU half only (no CUDA needed)")
    args = parser.parse_args()
    import tempfile

    tmp = Path(tempfile.mkdtemp())
    has_cuda = torch.cuda.is_available()
    if not has_cuda and not args.cpu_only:
        print("CUDA is not available on this machine; run with --cpu-only to check the CPU half", file=sys.stderr)
        return 1
    devices = ["cpu"] + (["cuda"] if has_cuda and not args.cpu_only else [])
    gpu = torch.cuda.get_device_name(0) if has_cuda else "none"
    print(f"torch {torch.__version__} | GPU: {gpu} | CPU threads: {torch.get_num_threads()} "
          f"| rk4 step 0.1 (40 NFE), {args.steps} timed steps")
    columns = " | ".join(f"{d} ms/step" for d in devices)
    print(f"| case | {columns} | speed-up | NFE fwd/bwd | loss (cpu / cuda) | check |")
    print("|---|" + "---|" * len(devices) + "---|---|---|---|")
    ok = True
    for name, overrides in CASES.items():
        rows = {}
        try:
            for device in devices:
                torch.manual_seed(0)
                rows[device] = time_steps(overrides, device, args.steps, tmp)
        except Exception as exc:  # report and carry on: a one-shot check should show every row
            ok = False
            print(f"| {name} | FAILED on {device}: {_failure(exc)} |")
            continue
        cpu = rows["cpu"]
        if "cuda" in rows:
            cuda = rows["cuda"]
            same = cpu[1:3] == cuda[1:3] and abs(cpu[3] - cuda[3]) <= 1e-3 * max(1.0, abs(cpu[3]))
            ok &= same
            print(f"| {name} | {cpu[0]:.2f} | {cuda[0]:.2f} | {cpu[0] / cuda[0]:.1f}x | {cuda[1]}/{cuda[2]} "
                  f"| {cpu[3]:.5f} / {cuda[3]:.5f} | {'ok' if same else 'MISMATCH'} |")
        else:
            ok &= cpu[1] == 40
            print(f"| {name} | {cpu[0]:.2f} | – | {cpu[1]}/{cpu[2]} | {cpu[3]:.5f} / – "
                  f"| {'ok' if cpu[1] == 40 else 'NFE != 40'} |")
    if "cuda" in devices:
        ok &= check_adaptive(args.steps, tmp)
        ok &= check_ensemble(args.steps, tmp)
        ok &= check_cuda_graph(max(30, args.steps), tmp)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

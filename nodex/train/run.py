"""Build a run from a composed config and execute it: ``run_train`` and ``run_eval``.

Data flow: config -> (data, task, model, optimizer) -> Trainer -> logs, checkpoints and
``result.json``. Errors surface as :class:`~nodex.errors.NodexError` with one-line messages;
the run directory records them in ``result.json`` (``status: failed``).
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import nodex
from nodex.data import DataBundle, build_data
from nodex.errors import CheckpointError, ConfigError, NodexError
from nodex.models import DataSpec, build_model, count_parameters
from nodex.ode import SolverSettings
from nodex.ode.lean.fixed_grid import LEAN_FIXED_METHODS
from nodex.train.checkpoint import load_checkpoint, resolve_checkpoint
from nodex.train.logs import RunLogger
from nodex.train.loop import LoopState, Trainer, evaluate
from nodex.train.tasks import Task, build_task
from nodex.train.threads import choose_threads

log = logging.getLogger("nodex")

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
SCHEDULERS = ("none", "step", "cosine", "exponential")


def versions() -> dict[str, str]:
    import torchdiffeq

    return {"python": platform.python_version(), "torch": torch.__version__, "torchdiffeq": torchdiffeq.__version__, "nodex": nodex.__version__}


def select_device(name: str) -> torch.device:
    """``auto`` takes CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but CUDA is not available here: use trainer.device=auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"trainer.device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None


def set_tf32(enabled: bool) -> None:
    """Let CUDA matmuls and cuDNN convolutions use TF32 (``trainer.tf32``; no effect on a CPU).

    Off by default: TF32 rounds the operands of every float32 product to 10 mantissa bits (~1e-3
    relative), above the tolerances an adaptive solver is asked for, so step sizes and NFE would
    follow rounding noise and GPU numbers would drift from CPU ones. PyTorch's own default turns it
    on for convolutions.
    """
    # The long-standing flags: torch 2.13's newer per-backend fp32_precision API cannot be mixed
    # with them (its getters then raise), and these read back consistently through both.
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled


def solver_settings(cfg: DictConfig) -> SolverSettings:
    """Validated :class:`SolverSettings` from the ``solver`` group."""
    known = set(SolverSettings.__dataclass_fields__)
    values = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k in known}
    return SolverSettings(**values)


def validate_trainer(cfg: DictConfig) -> None:
    if cfg.get("epochs") is None and int(cfg.max_steps) <= 0:
        raise ConfigError(f"trainer.max_steps={cfg.max_steps} must be a positive integer")
    if cfg.get("epochs") is not None and int(cfg.epochs) <= 0:
        raise ConfigError(f"trainer.epochs={cfg.epochs} must be a positive integer or null")
    if cfg.get("batch_size") is not None and int(cfg.batch_size) <= 0:
        raise ConfigError(f"trainer.batch_size={cfg.batch_size} must be a positive integer or null (full batch)")
    if cfg.optim.name not in OPTIMIZERS:
        raise ConfigError(f"trainer.optim.name={cfg.optim.name!r} is unknown; choose one of: {', '.join(OPTIMIZERS)}")
    if not float(cfg.optim.lr) > 0:
        raise ConfigError(f"trainer.optim.lr={cfg.optim.lr} must be positive")
    if cfg.scheduler.name not in SCHEDULERS:
        raise ConfigError(f"trainer.scheduler.name={cfg.scheduler.name!r} is unknown; choose one of: {', '.join(SCHEDULERS)}")


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, total_steps: int):
    opt_cfg = cfg.optim
    kwargs: dict[str, Any] = {"lr": float(opt_cfg.lr), "weight_decay": float(opt_cfg.get("weight_decay", 0.0))}
    if opt_cfg.name in ("adam", "adamw") and opt_cfg.get("betas") is not None:
        kwargs["betas"] = tuple(opt_cfg.betas)
    if opt_cfg.name == "sgd":
        kwargs["momentum"] = float(opt_cfg.get("momentum", 0.0))
    if cfg.get("cuda_graph") and opt_cfg.name in ("adam", "adamw"):
        kwargs["capturable"] = True  # its step count lives on the device: the update can be captured
    optimizer = OPTIMIZERS[opt_cfg.name](model.parameters(), **kwargs)
    sch = cfg.scheduler
    if sch.name == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(sch.step_size), gamma=float(sch.gamma))
    elif sch.name == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    elif sch.name == "exponential":
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=float(sch.gamma))
    else:
        scheduler = None
    return optimizer, scheduler


def validate_cuda_graph(cfg: DictConfig, settings: SolverSettings, device: torch.device) -> None:
    """``trainer.cuda_graph=true`` needs a step with a fixed kernel sequence: nodex's fixed-grid
    solver under backprop, a constant learning rate, one model, and a CUDA device."""
    trainer = cfg.trainer
    if not trainer.get("cuda_graph"):
        return
    if int(trainer.get("ensemble", 1)) != 1:
        raise ConfigError("trainer.cuda_graph=true is for single runs: drop it or set trainer.ensemble=1")
    if not (settings.method in LEAN_FIXED_METHODS and settings.sensitivity == "autograd" and settings.engine == "auto" and not settings.options):
        raise ConfigError(
            f"trainer.cuda_graph=true needs a fixed step count: solver.method=euler|midpoint|rk4 with solver.sensitivity=autograd, "
            f"solver.engine=auto and no solver.options (got {settings.describe()}, {settings.sensitivity}, engine {settings.engine})"
        )
    if trainer.scheduler.name != "none":
        raise ConfigError(f"trainer.cuda_graph=true bakes the learning rate into the graph: set trainer.scheduler.name=none (got {trainer.scheduler.name})")
    if device.type != "cuda":
        raise ConfigError(f"trainer.cuda_graph=true needs a CUDA device, this run is on {device}: drop it or use trainer.device=cuda")


class Pipeline:
    """Everything one config builds: device, data, task, model (on the device)."""

    def __init__(self, cfg: DictConfig, device: torch.device | None = None) -> None:
        self.cfg = cfg
        self.device = device or select_device(cfg.trainer.get("device", "auto"))
        set_tf32(bool(cfg.trainer.get("tf32", False)))
        self.settings = solver_settings(cfg.solver)
        seed = int(cfg.seed)
        torch.manual_seed(seed)
        self.data: DataBundle = build_data(cfg.data, seed, self.device)
        self.task: Task = build_task(cfg.task, self.data)
        spec = DataSpec(self.data.input_shape, self.task.n_outputs)
        self.model = build_model(cfg.model, spec, self.settings).to(self.device)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)


def run_train(cfg: DictConfig, run_dir: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """Train per ``cfg`` into ``run_dir``; returns the ``result.json`` payload.

    Raises:
        NodexError: bad config, solver failure, divergence (after ``result.json`` records it).
        KeyboardInterrupt: after ``last.pt`` is saved and the run is marked ``interrupted``.
    """
    if cfg.trainer.get("ensemble", 1) != 1:  # K seeds in one batched solve: nodex/train/ensemble.py
        if cfg.trainer.get("cuda_graph"):
            raise ConfigError("trainer.cuda_graph=true is for single runs: drop it or set trainer.ensemble=1")
        from nodex.train.ensemble import run_ensemble

        return run_ensemble(cfg, run_dir, progress=progress)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    result: dict[str, Any] = {
        "status": "failed", "error": None, "metrics": {}, "nfe_forward": None, "nfe_backward": None,
        "params": None, "steps": 0, "wall_time_s": None, "device": None, "versions": versions(),
        "config": resolved, "seed": int(cfg.seed), "command": " ".join(sys.argv),
    }
    logger = None
    trainer = None
    state = LoopState()
    try:
        validate_trainer(cfg.trainer)
        pipe = Pipeline(cfg)
        validate_cuda_graph(cfg, pipe.settings, pipe.device)
        batch = cfg.trainer.get("batch_size") or pipe.data.train[0].shape[0]
        result["threads"] = choose_threads(cfg.trainer.get("num_threads"), pipe.model, pipe.data.train[0], batch)
        result["device"] = str(pipe.device)
        result["params"] = count_parameters(pipe.model)
        state.batch_gen.manual_seed(int(cfg.seed))
        optimizer, scheduler = build_optimizer(cfg.trainer, pipe.model, Trainer.total_steps(cfg.trainer, pipe.data))

        def make_checkpoint(st: LoopState) -> dict[str, Any]:
            return {
                "model": pipe.model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "step": st.step, "best": st.best, "config": resolved,
                "rng": {"torch": torch.get_rng_state(), "batches": st.batch_gen.get_state()},
            }

        if cfg.trainer.get("resume"):
            _resume(cfg.trainer.resume, pipe, optimizer, scheduler, state)
        logger = RunLogger(run_dir, tensorboard=cfg.logger.get("tensorboard", True), append=state.step > 0)
        logger.text("run/metadata", _metadata_markdown(result, pipe))
        log.info("%s | %s params | %s | %s | device %s", cfg.model.name, result["params"], cfg.data.name, pipe.settings.describe(), pipe.device)
        from nodex.viz import diagnostics

        def plot(step: int) -> None:
            diagnostics(pipe.model, pipe.data, pipe.task, logger, step)

        trainer = Trainer(pipe.model, pipe.task, pipe.data, cfg.trainer, logger, run_dir / "checkpoints", make_checkpoint,
                          pipe.settings.describe(), progress, plot=plot if cfg.trainer.get("plots", True) else None)
        trainer.fit(optimizer, scheduler, state)
        test = evaluate(pipe.model, pipe.task, pipe.data.test, cfg.trainer.get("eval_batch_size"))
        result["metrics"] = {f"test/{k}": v for k, v in test.items()}
        logger.scalars(state.step, result["metrics"])
        result["status"] = "completed"
        if cfg.trainer.get("plots", True):
            plot(state.step)
    except KeyboardInterrupt:
        result["status"] = "interrupted"
        result["error"] = f"interrupted at step {state.step}; resume with trainer.resume={run_dir / 'checkpoints' / 'last.pt'}"
        raise
    except NodexError as exc:
        result["error"] = str(exc)
        raise
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        result["steps"] = state.step
        result["wall_time_s"] = time.perf_counter() - started
        if trainer is not None and trainer.totals["steps"]:
            result["nfe_forward"] = trainer.totals["nfe_forward"] / trainer.totals["steps"]
            result["nfe_backward"] = trainer.totals["nfe_backward"] / trainer.totals["steps"]
        _write_json(run_dir / "result.json", result)
        if logger is not None:
            if result["status"] == "completed":
                logger.hparams(_hparams(cfg), {**result["metrics"], "nfe_forward": result["nfe_forward"] or 0.0, "params": result["params"]})
            logger.close()
    log.info("done: %s", ", ".join(f"{k}={v:.4g}" for k, v in result["metrics"].items()))
    return result


def _resume(path: str, pipe: Pipeline, optimizer, scheduler, state: LoopState) -> None:
    ckpt = load_checkpoint(resolve_checkpoint(path, "last"), map_location=pipe.device)
    try:
        pipe.model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"trainer.resume={path}: checkpoint does not fit this model/optimizer ({str(exc).splitlines()[0][:120]}); resume with the run's own config") from None
    if scheduler is not None and ckpt.get("scheduler"):
        scheduler.load_state_dict(ckpt["scheduler"])
    state.step = int(ckpt["step"])
    state.best = ckpt.get("best")
    torch.set_rng_state(ckpt["rng"]["torch"])
    state.batch_gen.set_state(ckpt["rng"]["batches"])
    log.info("resumed from %s at step %d", path, state.step)


def _hparams(cfg: DictConfig) -> dict[str, Any]:
    return {
        "model": cfg.model.name, "data": cfg.data.name, "solver": cfg.solver.method,
        "rtol": cfg.solver.rtol, "atol": cfg.solver.atol, "sensitivity": cfg.solver.sensitivity,
        "lr": cfg.trainer.optim.lr, "seed": cfg.seed,
    }


def _metadata_markdown(result: dict[str, Any], pipe: Pipeline) -> str:
    rows = [f"| {k} | {v} |" for k, v in result["versions"].items()]
    rows += [f"| device | {pipe.device} |", f"| command | `{result['command']}` |", f"| params | {result['params']} |"]
    return "| key | value |\n|---|---|\n" + "\n".join(rows)


def run_eval(cfg: DictConfig, overrides: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Rebuild the model from a checkpoint's run config (with ``overrides`` applied, e.g.
    ``{"data.n_test": 5000}``), evaluate ``cfg.split`` and write ``eval.json`` to ``run_dir``.

    Raises:
        CheckpointError: missing/corrupt checkpoint, or a run directory without a config.
    """
    path = resolve_checkpoint(cfg.ckpt, cfg.get("which", "last"))
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{str(path)!r} holds no run config; evaluate a checkpoint written by nodex train")
    run_cfg = OmegaConf.create(ckpt["config"])
    for key, value in overrides.items():
        if OmegaConf.select(run_cfg, key, default="__missing__") == "__missing__":
            raise ConfigError(f"{key} is not a key of the run's config; check the spelling (see {path.parent.parent / '.hydra' / 'config.yaml'})")
        OmegaConf.update(run_cfg, key, value)
    device = select_device(cfg.get("device", "auto"))
    pipe = Pipeline(run_cfg, device)
    try:
        pipe.model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{str(path)!r} does not fit the model its config builds ({str(exc).splitlines()[0][:120]})") from None
    split = cfg.get("split", "test")
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split={split!r}; choose one of: train, val, test")
    metrics = evaluate(pipe.model, pipe.task, getattr(pipe.data, split), run_cfg.trainer.get("eval_batch_size"))
    payload = {"checkpoint": str(path), "split": split, "step": ckpt.get("step"), "overrides": overrides,
               "metrics": {f"{split}/{k}": v for k, v in metrics.items()}, "device": str(device), "versions": versions()}
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / "eval.json", payload)
    return payload

"""Build a run from a composed config and execute it: ``run_train`` and ``run_eval``.

Data flow: config -> (data, task, model, optimizer) -> Trainer -> logs, checkpoints and
``result.json``. Errors surface as :class:`~nodex.errors.NodexError` with one-line messages;
the run directory records them in ``result.json`` (``status: failed``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from nodex.errors import CheckpointError, ConfigError, NodexError
from nodex.models import count_parameters
from nodex.train.checkpoint import load_checkpoint, resolve_checkpoint
from nodex.train.logs import RunLogger
from nodex.train.loop import LoopState, Trainer, evaluate
from nodex.train.setup import Pipeline, build_optimizer, select_device, validate_cuda_graph, validate_trainer, versions
from nodex.train.threads import choose_threads

log = logging.getLogger("nodex")

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

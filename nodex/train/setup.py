"""Everything a run sets up before the loop: device, TF32, solver settings, the validated
trainer options, the optimizer and scheduler, and :class:`Pipeline` (data, task and model
built from one config)."""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from nodex.data import DataBundle, build_data
from nodex.errors import ConfigError, ResourceError, config_key
from nodex.models import DataSpec, build_model
from nodex.models.build import horizon_length
from nodex.ode import SolverSettings
from nodex.ode.lean.fixed_grid import LEAN_FIXED_METHODS
from nodex.train.members import ensemble_size
from nodex.train.tasks import Task, build_task

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
SCHEDULERS = ("none", "step", "cosine", "exponential")


def select_device(name: str, key: str = "trainer.device") -> torch.device:
    """``auto`` takes CUDA when present, else the CPU; ``key``: the setting's name in messages (``nodex eval``'s is
    ``device``)."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name} but CUDA is not available here: use {key}=auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None


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


def solver_settings(cfg: DictConfig, model_cfg: DictConfig | None = None) -> SolverSettings:
    """Validated :class:`SolverSettings` from the ``solver`` group; a ``model_cfg`` has its horizon
    (``model.horizon.S``, the model's, not the solver's) checked here too, before any data are built."""
    if model_cfg is not None:
        horizon_length(model_cfg)
    known = set(SolverSettings.__dataclass_fields__)
    values = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k in known}
    with config_key("solver"):
        return SolverSettings(**values)


def validate_trainer(cfg: DictConfig) -> None:
    """Ranges and combinations of the ``trainer`` group (its types are checked by the schema at compose time).

    Raises:
        ConfigError: one line naming the key and what to set.
    """
    if cfg.get("epochs") is None:
        _positive(cfg, "max_steps", "a positive integer")
    for key, what in (
        ("epochs", "a positive integer or null"),
        ("batch_size", "a positive integer or null (full batch)"),
        ("eval_batch_size", "a positive integer or null (a split at once)"),
        ("grad_clip", "a positive max gradient norm or null (no clipping)"),
    ):
        if cfg.get(key) is not None:
            _positive(cfg, key, what)
    validate_optimizer(cfg.optim)
    validate_scheduler(cfg.scheduler)
    if cfg.get("val_every") is not None and int(cfg.val_every) < 0:  # (sweeps branch: absurd settings refused)
        raise ConfigError(f"trainer.val_every={cfg.val_every} must be a positive integer, or 0/null to validate "
                          "at the end only")
    log_every, ckpt_every = cfg.get("log_every"), cfg.get("checkpoint_every")
    log_every = 1 if log_every is None else int(log_every)
    if log_every <= 0:
        raise ConfigError(f"trainer.log_every={log_every} must be a positive integer")
    if ckpt_every and int(ckpt_every) % log_every:
        raise ConfigError(
            f"trainer.checkpoint_every={ckpt_every} must be a multiple of trainer.log_every={log_every} "
            "(checkpoints follow a finiteness check at log points)"
        )


def _finite(value: Any) -> bool:
    return value is not None and not isinstance(value, bool) and math.isfinite(float(value))


def validate_optimizer(optim: DictConfig) -> None:
    """``trainer.optim``: a known name, ``0 < lr < inf``, ``weight_decay >= 0``, Adam's two ``betas`` in [0, 1),
    SGD's ``momentum`` in [0, 1) — checked here, so that the message names the key and not torch's argument."""
    if optim.name not in OPTIMIZERS:
        raise ConfigError(f"trainer.optim.name={optim.name!r} is unknown; choose one of: {', '.join(OPTIMIZERS)}")
    if not (_finite(optim.lr) and float(optim.lr) > 0):
        raise ConfigError(f"trainer.optim.lr={optim.lr} must be positive and finite (e.g. 0.005)")
    decay = optim.get("weight_decay")
    if decay is not None and not (_finite(decay) and float(decay) >= 0):
        raise ConfigError(f"trainer.optim.weight_decay={decay} must be >= 0 and finite (0: no decay)")
    betas = optim.get("betas")
    if optim.name in ("adam", "adamw") and betas is not None:
        if len(betas) != 2 or not all(_finite(b) and 0 <= float(b) < 1 for b in betas):
            raise ConfigError(f"trainer.optim.betas={list(betas)} must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    momentum = optim.get("momentum")
    if optim.name == "sgd" and momentum is not None and not (_finite(momentum) and 0 <= float(momentum) < 1):
        raise ConfigError(f"trainer.optim.momentum={momentum} must be in [0, 1) (0: plain SGD; 0.9 is usual)")


def validate_scheduler(sch: DictConfig) -> None:
    """``trainer.scheduler``: a known name; ``step`` needs a positive ``step_size``, ``step`` and ``exponential`` a
    ``gamma`` in (0, 1] (the factor the learning rate is multiplied by)."""
    if sch.name not in SCHEDULERS:
        raise ConfigError(f"trainer.scheduler.name={sch.name!r} is unknown; choose one of: {', '.join(SCHEDULERS)}")
    if sch.name == "step" and not (_finite(sch.get("step_size")) and int(sch.step_size) > 0):
        raise ConfigError(f"trainer.scheduler.step_size={sch.get('step_size')} must be a positive integer (steps, or "
                          "epochs with trainer.scheduler.unit=epoch, between decays)")
    gamma = sch.get("gamma")
    if sch.name in ("step", "exponential") and not (_finite(gamma) and 0 < float(gamma) <= 1):
        raise ConfigError(f"trainer.scheduler.gamma={gamma} must be in (0, 1]: the factor each decay multiplies the "
                          "learning rate by (e.g. 0.9)")


def _positive(cfg: DictConfig, key: str, what: str) -> None:
    value = cfg.get(key)
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ConfigError(f"trainer.{key}={value} must be {what}")


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
    if ensemble_size(cfg) != 1:
        raise ConfigError("trainer.cuda_graph=true is for single runs: drop it or set trainer.ensemble=1")
    if not (
        settings.method in LEAN_FIXED_METHODS
        and settings.sensitivity == "autograd"
        and settings.engine == "auto"
        and not settings.options
    ):
        raise ConfigError(
            "trainer.cuda_graph=true needs a fixed step count: solver.method=euler|midpoint|rk4 with "
            "solver.sensitivity=autograd, solver.engine=auto and no solver.options "
            f"(got {settings.describe()}, {settings.sensitivity}, engine {settings.engine})"
        )
    if trainer.scheduler.name != "none":
        raise ConfigError(
            "trainer.cuda_graph=true bakes the learning rate into the graph: set trainer.scheduler.name=none "
            f"(got {trainer.scheduler.name})"
        )
    if device.type != "cuda":
        raise ConfigError(
            f"trainer.cuda_graph=true needs a CUDA device, this run is on {device}: drop it or use trainer.device=cuda"
        )


class Pipeline:
    """Everything one config builds: device, data, task, model (on the device)."""

    def __init__(self, cfg: DictConfig, device: torch.device | None = None) -> None:
        self.cfg = cfg
        self.device = device or select_device(cfg.trainer.get("device", "auto"))
        set_tf32(bool(cfg.trainer.get("tf32", False)))
        self.settings = solver_settings(cfg.solver, cfg.model)
        seed = int(cfg.seed)
        torch.manual_seed(seed)
        self.data: DataBundle = build_data(cfg.data, seed, self.device)
        self.task: Task = build_task(cfg.task, self.data)
        self.model = build_run_model(cfg, DataSpec(self.data.input_shape, self.task.n_outputs), self.device)


def build_run_model(cfg: DictConfig, spec: DataSpec, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The model a run config trains (``cfg.model`` with its solver settings and ``task.regularizer``), on ``device``:
    the one build path of ``nodex train``, ``nodex eval``, resume and ``nodex.build`` / ``nodex.load``. The caller
    seeds torch's generator first (a run: ``cfg.seed``)."""
    settings = solver_settings(cfg.solver, cfg.model)
    return build_model(cfg.model, spec, settings, cfg.task.get("regularizer")).to(device)


# A lower bound on the bytes a sample takes (one float32 input value and a label, at the least): counts whose
# bound is already over the memory available cannot be built, and are refused before anything is allocated.
MIN_SAMPLE_BYTES = 8


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or ``None`` when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_data_size(data_cfg: DictConfig, members: int = 1) -> None:
    """Refuse split sizes that are not whole numbers, or cannot fit in memory, before any data is built.

    Raises:
        ConfigError: ``data.n_train/n_val/n_test`` is not an integer (or null).
        ResourceError: ``members`` × (``n_train + n_val + n_test``) samples need more than the memory available.
    """
    counts = {k: data_cfg.get(k) for k in ("n_train", "n_val", "n_test")}
    # composed configs are typed by the data schema already; a run config read back from a checkpoint is not
    for key, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"data.{key}={value!r} is not an integer: give data.{key} a number of samples")
    total = members * sum(v for v in counts.values() if v is not None and v > 0)  # integers, checked above
    available = _available_memory()
    if available is None or total * MIN_SAMPLE_BYTES <= available:
        return
    given = ", ".join(f"data.{k}={v}" for k, v in counts.items() if v is not None)
    raise ResourceError(f"{given} is {total:,} samples: at least {total * MIN_SAMPLE_BYTES / 1e9:.1f} GB, more than "
                        f"the {available / 1e9:.1f} GB of memory available; lower data.n_train/n_val/n_test")


def out_of_memory(exc: BaseException) -> ResourceError | None:
    """An allocation failure (torch's CPU or CUDA allocator, ``MemoryError``) as a one-line
    :class:`~nodex.errors.ResourceError` saying what to lower; ``None`` for any other exception."""
    import re

    text = str(exc)
    if not (isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and (
            "can't allocate memory" in text or "out of memory" in text.lower()))):
        return None
    tried = re.search(r"allocate (\d+(?:\.\d+)?) ?(bytes|[KMGT]iB)", text)
    size = ""
    if tried:
        scale = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[tried.group(2)]
        size = f" (an allocation of {float(tried.group(1)) * scale / 1e9:.1f} GB failed)"
    if _raised_in_solver(exc):  # (sweeps branch) the autograd graph grows with every solver step
        return ResourceError(f"out of memory{size} inside the ODE solve: the solver took too many steps (a diverging "
                             "model, e.g. too high trainer.optim.lr, needs ever more); lower trainer.optim.lr or "
                             "solver.max_num_steps, or loosen solver.rtol/atol")
    return ResourceError(f"out of memory{size}: lower data.n_train/n_val/n_test, trainer.batch_size, "
                         "trainer.eval_batch_size or trainer.ensemble")


def _raised_in_solver(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside nodex's ODE solvers or torchdiffeq (its traceback passes through them)."""
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if "/nodex/ode/" in name or "/torchdiffeq/" in name:
            return True
        tb = tb.tb_next
    return False

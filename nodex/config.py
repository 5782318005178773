"""Where the configs live, their typed schemas, and how to compose them outside the CLI.

``compose(["model=galnode", "data=rings"])`` returns the same ``DictConfig`` that
``nodex train model=galnode data=rings`` runs (without Hydra's ``hydra`` node).

The schemas below are registered in Hydra's ConfigStore as ``<group>/schema`` (and ``train_schema`` for the top
level); each group's YAML starts from its schema (``defaults: [schema, _self_]``), so a value of the wrong type
(``solver.rtol=abc``, ``seed=abc``, ``trainer.max_steps=1.5``) fails when the config is composed, and the schema is
the one place for a default. Ranges and combinations (``rtol > 0``, ...) are checked where the values are used.

Model, data and task presets vary by kind (an MLP field has ``activation``, a conv field ``norm_in``; rings has
``params``, CIFAR ``root``), so their schemas are *open* (:func:`open_schema`): a group's schema types the keys
that every preset of the group (or of one kind: ``schema_toy``, ``schema_images``, ``schema_neural_ode``,
``schema_cnf``, ``schema_tracking``) has, with no default of its own (each preset sets them), and lets the
preset bring its other keys. An override of a key that no preset has is still refused (Hydra's struct mode), a
typed key of the wrong type fails at compose time (``data.n_train=abc``), and the kind-specific keys are checked by
the builders that read them.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class SolverSchema:
    """``solver``: how to integrate (see :class:`nodex.ode.SolverSettings`, which validates the ranges and takes
    its defaults from here)."""

    method: str = "dopri5"  # a torchdiffeq method or tsit5 (nodex's own)
    rtol: float = 1e-4
    atol: float = 1e-4
    step_size: Optional[float] = None
    max_num_steps: int = 10_000
    sensitivity: str = "autograd"  # autograd (backprop through the solver) | adjoint (O(1) memory)
    seminorm: bool = True  # adjoint: error control without the parameter channels
    engine: str = "auto"  # auto: nodex's lean solvers where they apply (see README), else torchdiffeq | torchdiffeq
    # dopri5/tsit5 on nodex's engine: auto (dopri5: torchdiffeq, tsit5: hairer) | torchdiffeq (its first and last
    # steps) | hairer (Hairer's DOPRI5 code, torchdyn's steps: the first step from the method's order, the last
    # ending on the last depth)
    step_rule: str = "auto"
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimSchema:
    name: str = "adam"
    lr: float = 0.005
    weight_decay: float = 0.0
    betas: Optional[List[float]] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.0


@dataclass
class SchedulerSchema:
    name: str = "none"
    step_size: int = 100
    gamma: float = 0.9
    unit: str = "step"


@dataclass
class TrainerSchema:
    """``trainer``: budget, optimisation, logging cadence, device and run options."""

    max_steps: int = 300
    epochs: Optional[int] = None  # when set: epochs × (batches per epoch) steps, replacing max_steps
    batch_size: Optional[int] = None  # null = full batch (the paper's toy runs)
    eval_batch_size: Optional[int] = None  # null = a split at once
    optim: OptimSchema = field(default_factory=OptimSchema)  # name: adam | adamw | sgd (momentum: sgd only)
    scheduler: SchedulerSchema = field(default_factory=SchedulerSchema)  # none | step | cosine | exponential
    grad_clip: Optional[float] = None  # max gradient norm (> 0), or null
    log_every: int = 10
    val_every: Optional[int] = 100
    checkpoint_every: Optional[int] = 100  # a multiple of log_every (checkpoints follow a finiteness check)
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    num_threads: Any = "auto"  # auto (the CPUs this job may use, 1 for small fields) | N | null (torch's default)
    progress: Any = "auto"  # auto (a bar on a terminal, off in multirun) | true | false
    plots: bool = True  # the diagnostic figures at the end
    plot_every: Optional[int] = None  # also every N steps; null = only at the end
    resume: Optional[str] = None  # a run dir or checkpoints/last.pt to continue from, or auto (this run dir's own)
    tf32: bool = False  # TF32 matmuls/convolutions on a GPU (~1e-3 relative rounding: above solver tolerances)
    cuda_graph: bool = False  # capture the training step as a CUDA graph (GPU, euler|midpoint|rk4, backprop)
    ensemble: int = 1  # K > 1: seeds seed..seed+K-1 in one batched solve, one run dir each (RUN_DIR/member-k)


@dataclass
class LoggerSchema:
    tensorboard: bool = True


@dataclass
class TrainSchema:
    """The top level of ``nodex train``: the groups (typed by their own schemas) and the run's own keys."""

    model: Any = MISSING
    data: Any = MISSING
    solver: Any = MISSING
    task: Any = MISSING
    trainer: Any = MISSING
    logger: Any = MISSING
    seed: int = 0
    experiment_name: Optional[str] = None
    name: Optional[str] = None  # the run's own name: ends the default run/sweep dir (nodex/jobs.py run_dir_suffix)
    monitor: Optional[str] = None


# Open schemas (see the module docstring): every key here is one that each preset of the group (or kind) sets.


@dataclass
class DataSchema:
    """``data``: the keys of every dataset preset."""

    name: str = MISSING
    n_train: Optional[int] = None  # null: every sample not in val/test
    n_val: Optional[int] = None
    n_test: Optional[int] = None


@dataclass
class ToyDataSchema(DataSchema):
    """``data`` of the generated toy sets (rings, spirals, ...); their ``params`` vary by set."""

    resample: bool = False  # a fresh training batch every step


@dataclass
class ImageDataSchema(DataSchema):
    """``data`` of the image sets (digits, MNIST, CIFAR-10)."""

    mean: Optional[List[float]] = None  # per-channel normalisation; null: none
    std: Optional[List[float]] = None
    flatten: bool = False  # (C·H·W,) vectors for MLP fields


@dataclass
class FieldSchema:
    """``model/field/schema``: the keys of every built-in field option (a user's ``_target_`` option has its own)."""

    kind: str = MISSING  # mlp | conv | linear_control
    hidden: List[int] = MISSING


@dataclass
class HorizonSchema:
    kind: str = MISSING  # fixed | learned
    S: float = MISSING
    steer: float = 0.0  # STEER: training end depth ~ U(S - steer, S + steer); 0 = off (nodex/models/regularizers.py)


@dataclass
class SlotSchema:
    """``model/input_layer/schema``, ``model/readout/schema``: the key of every built-in option."""

    kind: str = MISSING


@dataclass
class ModelSchema:
    """``model``: the keys of every model preset (the slots' other keys depend on their ``kind``)."""

    name: str = MISSING
    horizon: HorizonSchema = dataclasses.field(default_factory=HorizonSchema)


@dataclass
class NeuralODEModelSchema(ModelSchema):
    order: int = 1


@dataclass
class CNFModelSchema(ModelSchema):
    kind: str = "cnf"
    conditions: int = 0
    trace: str = "exact"
    eval_trace: str = "exact"
    noise: str = "rademacher"


@dataclass
class RegularizerSchema:
    """``task.regularizer``: RNODE weights λ (0 = off): ∫‖f‖² ds and ∫‖∂f/∂z‖²_F ds (nodex/models/regularizers.py);
    ``error_control``: whether the terms' integrals take part in the adaptive step control (false: they ride on
    the steps the state chooses — cheaper steps, a smaller cut in NFE)."""

    kinetic: float = 0.0
    jacobian: float = 0.0
    error_control: bool = True


@dataclass
class TaskSchema:
    """``task``: the keys of every task preset."""

    kind: str = MISSING
    terminal_weight: float = 1.0
    regularizer: RegularizerSchema = dataclasses.field(default_factory=RegularizerSchema)


@dataclass
class TrackingTaskSchema(TaskSchema):
    S: float = MISSING  # ${model.horizon.S}
    coords: Optional[List[int]] = None
    eval_horizon: float = 5.0
    points_per_unit: int = 100


def open_schema(schema: type) -> DictConfig:
    """``schema``'s keys as typed nodes in a plain (not structured) ``DictConfig``.

    A structured config refuses keys it does not list, which a group whose keys vary by kind cannot have; this
    node keeps the listed keys' types (a wrong type fails when the config is composed) and takes the preset's
    other keys. Once composed, Hydra's struct mode refuses overrides of keys that no config set, as before.
    """
    typed = OmegaConf.structured(schema)
    out = OmegaConf.create({})
    for f in dataclasses.fields(schema):
        node = typed._get_node(f.name)
        nested = OmegaConf.get_type(typed, f.name)
        out[f.name] = open_schema(nested) if dataclasses.is_dataclass(nested) else node
    return out


OPEN_SCHEMAS = {
    ("data", "schema"): DataSchema,
    ("data", "schema_toy"): ToyDataSchema,
    ("data", "schema_images"): ImageDataSchema,
    ("model", "schema"): ModelSchema,
    ("model", "schema_neural_ode"): NeuralODEModelSchema,
    ("model", "schema_cnf"): CNFModelSchema,
    ("model/field", "schema"): FieldSchema,  # the slots: config groups of their own (model/field=..., see README)
    ("model/input_layer", "schema"): SlotSchema,
    ("model/readout", "schema"): SlotSchema,
    ("task", "schema"): TaskSchema,
    ("task", "schema_tracking"): TrackingTaskSchema,
}


def register_schemas() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent; every process that composes needs them)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainSchema)
    store.store(group="solver", name="schema", node=SolverSchema)
    store.store(group="trainer", name="schema", node=TrainerSchema)
    store.store(group="logger", name="schema", node=LoggerSchema)
    for (group, name), schema in OPEN_SCHEMAS.items():
        store.store(group=group, name=name, node=open_schema(schema))


register_schemas()

# Hydra's warning that our launcher YAMLs match the plugins' ConfigStore schemas (they do, on purpose)
SCHEMA_MATCH_WARNING = r"(?s).*hydra/launcher/.* is validated against ConfigStore schema with the same name"


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The config ``config_name`` (``train`` or ``eval``) with Hydra ``overrides`` applied.

    Raises:
        ConfigError: an override of a key that moved (``solver.S``).
        hydra.errors.HydraException, omegaconf.errors.OmegaConfBaseException: an unknown
            option, key or a value of the wrong type (:func:`nodex.cli_errors.one_line` words it).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import warnings

    check_moved_overrides(overrides)
    GlobalHydra.instance().clear()
    try:
        with warnings.catch_warnings():  # our launcher YAMLs match the plugins' schemas on purpose (the CLI's filter)
            warnings.filterwarnings("ignore", message=SCHEMA_MATCH_WARNING)
            with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name=config_name):
                return hydra_compose(config_name=config_name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


# old dotted key -> new dotted key. The horizon S was ``solver.S``; it is the model's ``model.horizon.S``.
MOVED_KEYS = {"solver.S": "model.horizon.S"}


def check_moved_overrides(overrides: Sequence[str]) -> None:
    """Raise a one-line :class:`ConfigError` for an override of a moved key (``solver.S=2``)."""
    from nodex.errors import ConfigError

    for item in overrides:
        key, sep, value = str(item).lstrip("+~").partition("=")
        if sep and key in MOVED_KEYS:
            raise ConfigError(f"{key} moved: use {MOVED_KEYS[key]}={value}")


def upgrade_run_config(cfg_dict: dict) -> dict:
    """An older run's resolved config (checkpoint or ``.hydra/config.yaml``) in today's layout.

    Moves ``solver.S`` to ``model.horizon.S`` (with ``kind: fixed`` when the run had no horizon slot; a learned
    horizon keeps its keys and takes ``S`` as its nominal horizon). Returns a new dict; the input is not modified.
    A config already in the new layout comes back equal.
    """
    out = copy.deepcopy(cfg_dict)
    solver = out.get("solver")
    if not isinstance(solver, dict) or "S" not in solver:
        return out
    S = solver.pop("S")
    model = out.setdefault("model", {})
    horizon = model.get("horizon")
    if not isinstance(horizon, dict) or horizon.get("kind", "none") == "none":
        horizon = {"kind": "fixed"}
    horizon.setdefault("S", S)
    model["horizon"] = horizon
    task = out.get("task")
    if isinstance(task, dict) and task.get("S") == "${solver.S}":
        task["S"] = "${model.horizon.S}"
    return out

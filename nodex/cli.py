"""``nodex`` console script: ``nodex train|eval [HYDRA OVERRIDES]``, ``nodex list|report|reproduce``.

Thin by design: parse the command line once (Hydra's own argument parser), check group options and plugins
without composing, let Hydra compose the config once and run (or sweep) the job, and turn every failure into
one line on stderr with a non-zero exit. torch is imported lazily: ``--help``/``--cfg`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from typing import Any, Callable


def _interrupted_while_starting(signum: int, frame: Any) -> None:
    print("nodex: error: interrupted while starting; nothing was run", file=sys.stderr)
    raise SystemExit(130)


if os.path.basename(sys.argv[0]) == "nodex":  # the console script: Ctrl-C while it imports is one line too
    signal.signal(signal.SIGINT, _interrupted_while_starting)

from omegaconf import DictConfig

from nodex.config import CONFIG_DIR, config_error_line, override_key
from nodex.sweeps import (
    RunRefused,
    abandon,
    local_workers,
    missing_plugin,
    quiet_schema_warning,
    register_resolvers,
    take_outcome,
)

USAGE = """usage: nodex COMMAND [HYDRA OVERRIDES...]

commands:
  train   train a model:  nodex train model=galnode data=rings seed=0
          sweep:          nodex train --multirun model=vanilla,depthcat seed=0,1
  eval    evaluate a run: nodex eval ckpt=outputs/train/DATE/TIME [data.n_test=5000]
  list    the named experiments with their one-line descriptions
  report  results table:  nodex report outputs/train/multirun/DATE/TIME [--by model,data] [--format csv]
  reproduce  run the paper's experiments and write REPRODUCTION.md: nodex reproduce --budget smoke

`nodex train --help` lists the config groups and their options;
`nodex train --cfg job` prints the composed config."""

# Config groups a user picks from, in the order `nodex train --help` shows them.
HELP_GROUPS = ("experiment", "model", "data", "solver", "task", "trainer", "logger", "hparams_search", "hydra/launcher")

log = logging.getLogger("nodex")
quiet_schema_warning()  # at import: launcher workers unpickle this module before composing their job
register_resolvers()


class UsageError(Exception):
    """A command-line mistake caught before the job runs (exit 2)."""


def _report(message: str) -> None:
    print(f"nodex: error: {message}", file=sys.stderr)


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def _progress(cfg: DictConfig) -> bool:
    setting = cfg.trainer.get("progress", "auto")
    if setting == "auto":
        return not _is_multirun() and sys.stderr.isatty()
    return bool(setting)


def train_job(cfg: DictConfig) -> float | None:
    """The Hydra task of ``nodex train`` (module level: launchers pickle it by reference)."""
    from hydra.core.hydra_config import HydraConfig

    from nodex.errors import NodexError
    from nodex.train.run import run_train

    from nodex.train.lock import RunLock
    from nodex.train.preemption import Preempted

    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    job = {"progress": _progress(cfg), "workers": local_workers(hc), "command": _job_command(hc)}
    try:
        if _is_multirun():  # a single run's dir is locked by the RunGuard callback, before Hydra writes into it
            with RunLock(run_dir):
                result = run_train(cfg, run_dir, **job)
        else:
            result = run_train(cfg, run_dir, **job)
    except Preempted as exc:
        message = f"{exc}; checkpoints/last.pt saved in {run_dir}; trainer.resume=auto continues it"
        _append_log(run_dir, f"STOPPED: {message}\n")  # train.log shows each attempt of a requeued job
        _report(message)
        getattr(exc, "forward", lambda: None)()  # submitit's handler: requeue the job, then exit
        raise SystemExit(exc.exit_code) from None
    except NodexError as exc:
        _append_log(run_dir, f"ERROR: {exc}\n")  # in the log file; the console gets it once, below
        if _is_multirun():
            return None  # the sweep goes on; result.json says why
        raise SystemExit(_exit_with(str(exc))) from None
    except KeyboardInterrupt:
        from pathlib import Path

        saved = (Path(run_dir) / "checkpoints" / "last.pt").exists()
        _report(
            f"interrupted; last checkpoint saved in {run_dir}/checkpoints/last.pt"
            if saved
            else "interrupted before the first checkpoint; nothing to resume"
        )
        raise SystemExit(130) from None
    except Exception as exc:  # not raised by nodex: one line here, the traceback in train.log
        _log_traceback(run_dir)
        _record_failure(run_dir, cfg, f"{type(exc).__name__}: {exc}".splitlines()[0])
        if _is_multirun():
            return None
        raise SystemExit(_exit_with(f"{type(exc).__name__}: {exc}".splitlines()[0])) from None
    monitor = cfg.get("monitor")
    return float(result["metrics"][monitor]) if monitor and monitor in result["metrics"] else None


def _job_command(hc: Any) -> str:
    """This job's own command: ``nodex train`` and its overrides (in a sweep, this job's values only)."""
    import shlex

    return " ".join(["nodex", str(hc.job.name), *(shlex.quote(str(o)) for o in hc.overrides.task)])


def eval_job(cfg: DictConfig) -> None:
    """The Hydra task of ``nodex eval``: metrics of a checkpoint, printed and written to ``eval.json``."""
    from hydra.core.hydra_config import HydraConfig

    from nodex.errors import NodexError
    from nodex.train.run import run_eval

    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg, "ckpt"):
        raise SystemExit(
            _exit_with("nodex eval needs ckpt=RUN_DIR or ckpt=PATH/TO/checkpoint.pt (a run of nodex train)")
        )
    hc = HydraConfig.get()
    overrides = _value_overrides(list(hc.overrides.task), cfg, skip={"ckpt", "split", "which", "device"})
    try:
        payload = run_eval(cfg, overrides, hc.runtime.output_dir)
    except NodexError as exc:
        raise SystemExit(_exit_with(str(exc))) from None
    except Exception as exc:  # not raised by nodex: one line here, the traceback in eval.log
        from nodex.train.setup import out_of_memory

        _log_traceback(hc.runtime.output_dir)
        error = out_of_memory(exc)
        raise SystemExit(_exit_with(str(error) if error else f"{type(exc).__name__}: {exc}".splitlines()[0])) from None
    for key, value in payload["metrics"].items():
        print(f"{key}: {value:.6g}")


def _record_failure(run_dir: str, cfg: DictConfig, error: str) -> None:
    """A failure that came before the run could record itself still leaves a ``result.json`` (sweeps count them),
    written by the run's own result writer."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from nodex.train.results import new_result, write_json

    path = Path(run_dir) / "result.json"
    if path.exists():
        return
    try:
        result = new_result(int(cfg.get("seed", 0)), OmegaConf.to_container(cfg, resolve=False))
        result["error"] = error
        write_json(path, result)
    except (OSError, ValueError):
        pass


def _log_traceback(run_dir: str) -> None:
    """The current exception's traceback into the job's log file, ``train.log`` / ``eval.log`` (and to stderr when
    ``NODEX_DEBUG=1``)."""
    import traceback

    text = traceback.format_exc()
    _append_log(run_dir, text)
    if os.environ.get("NODEX_DEBUG") == "1":
        print(text, file=sys.stderr)


def _append_log(run_dir: str, text: str) -> None:
    """``text`` at the end of the job's log file (``train.log`` / ``eval.log``), not on the console."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    try:
        with open(Path(run_dir) / f"{HydraConfig.get().job.name}.log", "a") as fh:
            fh.write(text)
    except OSError:
        pass


def _exit_with(message: str) -> int:
    _report(message)
    return 1


def _value_overrides(lines: list[str], cfg: DictConfig, skip: set[str]) -> dict:
    """The ``key=value`` overrides given on the command line, with values as Hydra composed them."""
    from omegaconf import OmegaConf

    out = {}
    for line in lines:
        key = override_key(line)
        if key in skip or "." not in key or key.startswith("hydra."):
            continue
        out[key] = OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(cfg, key)}), resolve=True)["v"]
    return out


COMMANDS: dict[str, tuple[Callable[[DictConfig], Any], str]] = {
    "train": (train_job, "train"),
    "eval": (eval_job, "eval"),
}
# Non-Hydra commands: "module:function" taking argv and returning the exit code (argparse inside).
PLAIN_COMMANDS = {
    "list": "nodex.paper.experiments:list_main",
    "report": "nodex.paper.report:report_main",
    "reproduce": "nodex.paper.reproduce:reproduce_main",
}


def _args_parser() -> argparse.ArgumentParser:
    from hydra._internal.utils import get_args_parser

    return get_args_parser()


def _parse(rest: list[str]) -> argparse.Namespace:
    parser = _args_parser()
    try:
        return parser.parse_args(rest)
    except SystemExit:
        raise UsageError(
            "cannot parse the command line; write overrides as key=value (see nodex train --help)"
        ) from None


def _hydra(task_name: str, config_dir: str | None):
    """A Hydra instance over nodex's configs (plus ``--config-dir``, searched first)."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    version.setbase("1.3")
    search_path = create_config_search_path(f"file://{CONFIG_DIR}")
    if config_dir is not None:
        if not os.path.isdir(config_dir):
            raise UsageError(f"--config-dir {config_dir} is not a directory")
        search_path.prepend("command-line", f"file://{os.path.abspath(config_dir)}")
    GlobalHydra.instance().clear()
    return Hydra.create_main_hydra2(task_name=task_name, config_search_path=search_path)


def check_overrides(hydra: Any, overrides: list[str]) -> None:
    """Group options (every value of a sweep too) and launcher/sweeper plugins, checked without composing.

    Raises:
        UsageError: an unparsable override, an unknown option (naming the valid ones), a missing plugin.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from nodex.config import check_moved_overrides
    from nodex.errors import ConfigError

    try:
        check_moved_overrides(overrides)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        unicode = next((o for o in overrides if not o.isascii() and "'" not in o and '"' not in o), None)
        if unicode is not None:  # (sweeps branch) Hydra's grammar takes non-ASCII characters in quotes only
            key, _, value = unicode.partition("=")
            raise UsageError(f"cannot parse {unicode}: quote a value with non-ASCII characters, "
                             f"{key}='{value}' (in the shell: \"{key}='{value}'\")") from None
        raise UsageError(f"cannot parse overrides ({str(exc).splitlines()[0]}); write them as key=value") from None
    groups = [o for o in parsed if "/" in o.key_or_group or o.key_or_group == "hparams_search"]
    missing = missing_plugin([(o.key_or_group, str(o.value())) for o in groups if not o.is_sweep_override()])
    if missing:
        raise UsageError(missing)
    loader = hydra.config_loader
    for o in parsed:
        group = o.key_or_group.lstrip("+~/")
        if o.package or not _is_group(loader, group):
            continue
        if o.is_sweep_override() and not (o.is_discrete_sweep() or o.is_range_sweep()):
            continue  # interval()/tag sweeps are for sweepers
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        options = loader.get_group_options(group)
        for value in values:
            if value not in options and value not in ("null", "None") and not o.is_delete():
                raise UsageError(f"unknown {group} {value!r}; choose one of: {', '.join(options)}")


def _is_group(loader: Any, group: str) -> bool:
    parent, _, name = group.rpartition("/")
    return name in loader.list_groups(parent)


def one_line(exc: BaseException) -> str:
    """A composition failure as one line that says what to change (no Hydra text scraping)."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, name = exc.missing_cfg_file.rpartition("/")
        return f"unknown {group} {name!r}; choose one of: {', '.join(exc.options or [])}"
    typed = config_error_line(exc)
    if typed is not None:
        return typed
    cause = exc.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        key = cause.full_key
        return (f"unknown config key {key!r}; check the spelling (`nodex train --cfg job` lists the keys) "
                f"or add it with +{key}=...")
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def train_help(hydra: Any) -> str:
    """``nodex train --help``: what the command does, its config groups with their options, and examples."""
    loader = hydra.config_loader
    rows = [
        f"{group}: {', '.join(loader.get_group_options(group))}" for group in HELP_GROUPS if _is_group(loader, group)
    ]
    return "\n".join(
        [
            "usage: nodex train [--multirun] [--cfg job|hydra|all] [KEY=VALUE ...]",
            "",
            "Train a model from the composed config; one run directory per job (result.json, metrics.jsonl,",
            "TensorBoard events, checkpoints/, plots/). Choose a config group's option with GROUP=OPTION,",
            "override any key with KEY=VALUE, sweep with --multirun and comma-separated values.",
            "",
            "== Config groups ==",
            *rows,
            "",
            "examples:",
            "  nodex train model=galnode data=rings seed=0",
            "  nodex train experiment=annuli_vanilla trainer.max_steps=500",
            "  nodex train --multirun model=vanilla,anode,ilnode,second_order seed=0,1,2",
            "  nodex train --cfg job            # the composed config, without running",
        ]
    )


def _run(cmd: str, args: argparse.Namespace) -> int:
    """Dispatch one Hydra command; returns the exit code."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    task, config_name = COMMANDS[cmd]
    hydra = _hydra(cmd, args.config_dir)
    config_name = args.config_name or config_name
    overrides = list(args.overrides)
    if args.help:
        print(train_help(hydra) if cmd == "train" else USAGE)
        return 0
    if args.hydra_help:
        hydra.hydra_help(config_name=config_name, args_parser=_args_parser(), args=args)
        return 0
    try:
        if args.cfg:
            hydra.show_cfg(
                config_name=config_name,
                overrides=overrides,
                cfg_type=args.cfg,
                package=args.package,
                resolve=args.resolve,
            )
        elif args.info:
            hydra.show_info(args.info, config_name=config_name, overrides=overrides)
        elif args.shell_completion:
            hydra.shell_completion(config_name=config_name, overrides=overrides)
        else:
            check_overrides(hydra, overrides)
            take_outcome()  # drop a stale one (an earlier in-process call)
            if args.multirun:
                return _multirun(hydra, config_name, task, overrides)
            else:
                hydra.run(config_name, task, [*overrides, "hydra.mode=RUN"])
    except (HydraException, OmegaConfBaseException) as exc:
        _report(one_line(exc))
        return 2
    except RunRefused as exc:  # raised by a callback before the job runs: the run dir is in use
        _report(exc.message)
        return 1
    return _sweep_exit_code()


def _multirun(hydra: Any, config_name: str, task: Callable[[DictConfig], Any], overrides: list[str]) -> int:
    """Run the sweep; whatever stops it (a job's composition, a killed worker, the launcher), the summary line is
    printed and the exit code says so."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        hydra.multirun(config_name, task, [*overrides, "hydra.mode=MULTIRUN"])
    except (HydraException, OmegaConfBaseException) as exc:
        reason, usage = one_line(exc), True
    except Exception as exc:  # a launcher's own failure, e.g. submitit's UncompletedJobError for a killed worker
        reason, usage = (
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no message'}",
            False,
        )
    else:
        return _sweep_exit_code()
    outcome = abandon(reason)
    if usage and (outcome is None or outcome.jobs == 0):
        _report(reason)  # the first job's config did not compose: a command-line mistake, nothing ran
        return 2
    _report(f"the sweep stopped: {reason}")
    if outcome is not None and len(outcome.failed) > 1:
        failed = "; ".join(str(d) for d, _ in outcome.failed[:-1])
        _report(f"{len(outcome.failed) - 1} job(s) failed; see result.json in: {failed}")
    return 1


def _sweep_exit_code() -> int:
    outcome = take_outcome()
    if outcome is not None and outcome.failed:
        _report(
            f"{len(outcome.failed)} job(s) failed; see result.json in: " + "; ".join(str(d) for d, _ in outcome.failed)
        )
        return 1
    return 0


def _completion(argv: list[str]) -> int:
    words = os.environ.get("COMP_LINE", "").split(" ")
    if len(words) <= 2:
        prefix = words[1] if len(words) == 2 else ""
        print(" ".join(c for c in COMMANDS if c.startswith(prefix)))
        return 0
    cmd = words[1]
    if cmd not in COMMANDS:
        return 0
    os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]])
    return _run(cmd, _parse(argv))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nodex`` console script; returns the process exit code (130 after Ctrl-C)."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a run handles Ctrl-C itself (saves, exits 130)
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # before a run could handle it: imports, composing the config
        _report("interrupted before the run started; nothing to resume")
        return 130


def _main(argv: list[str]) -> int:
    if argv[:1] in (["-sc"], ["--shell-completion"]) and any(a.startswith("query=") for a in argv):
        return _completion(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd in PLAIN_COMMANDS:
        module, function = PLAIN_COMMANDS[cmd].split(":")
        try:
            return getattr(importlib.import_module(module), function)(rest)
        except BrokenPipeError:  # `nodex list | head`: the reader left; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    if cmd not in COMMANDS:
        _report(f"unknown command {cmd!r}; choose one of: {', '.join([*COMMANDS, *PLAIN_COMMANDS])}")
        return 2
    quiet_schema_warning()  # again: warning filters may have been reset since import (pytest does)
    try:
        return _run(cmd, _parse(rest))
    except UsageError as exc:
        _report(str(exc))
        return 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()


if __name__ == "__main__":
    sys.exit(main())
